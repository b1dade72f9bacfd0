"""The tiny offline multi-image benchmark: items of three coloured squares, the colour asked for and the
letter of its image. Its wording is in the lmms-eval task (covip/harness/tasks/tiny_multi_image); the
colours are in `tiny.yaml` beside this module. Deterministic in the seed."""

from __future__ import annotations

import io
import string
from importlib import resources

import yaml

from covip.core.seeding import derive_seed


def _palette() -> dict:
    return yaml.safe_load(resources.files("covip.stages.general").joinpath("tiny.yaml").read_text(encoding="utf-8"))


def _square(rgb, size: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), tuple(rgb)).save(buffer, format="PNG")
    return buffer.getvalue()


def build_tiny_benchmark(n_items: int, seed: int) -> list[dict]:
    """`n_items` rows of schemas.TINY_BENCHMARK; the answer letters are spread over the positions."""
    import numpy as np

    palette = _palette()
    names = sorted(palette["colours"])
    per_item, size = int(palette["images_per_item"]), int(palette["image_size"])
    rows = []
    for k in range(n_items):
        rng = np.random.default_rng(derive_seed(seed, "tiny_benchmark", str(k)))
        colours = [names[i] for i in rng.choice(len(names), size=per_item, replace=False)]
        position = k % per_item
        rows.append({
            "item_id": f"tiny-{k:03d}",
            "images": [_square(palette["colours"][c], size) for c in colours],
            "colours": colours,
            "target": colours[position],
            "answer": string.ascii_uppercase[position],
        })
    return rows
