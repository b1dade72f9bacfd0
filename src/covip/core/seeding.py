"""Reproducible randomness that does not depend on processing order.

Every random choice is drawn from a generator derived from the run seed plus the identity of what
is being decided (a sample id, a concept id, a purpose), so adding a sample, sharding a stage or
running it concurrently never changes the draws of any other sample.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np


def derive_seed(seed: int, *keys: object) -> int:
    blob = "\x1f".join([str(seed), *map(str, keys)]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *keys))


def pyrandom_for(seed: int, *keys: object) -> random.Random:
    return random.Random(derive_seed(seed, *keys))
