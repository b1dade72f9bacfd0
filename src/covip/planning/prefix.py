"""The share of a rule's prompt tokens a prefix cache can reuse (vLLM's automatic prefix caching, or
an API's prompt cache), for `covip plan`.

The CapEval judge's prompt puts the instructions and the caption first and the question last, so
every question on one caption repeats the same prefix, and every request of a job repeats the
instructions. Of a group of n requests on one caption, the first computes its whole prompt and the
other n-1 reuse the caption-long prefix; the first request of each later group still reuses the
instructions. Over many groups the reusable share of prompt tokens is
((n - 1) * caption_prefix + instructions_prefix) / (n * prompt). Prefixes are measured on the
rendered prompts themselves (their common leading characters), so a template that moves the caption
after the question shows it at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from covip.clients.base import ChatRequest


def _text(request: ChatRequest) -> str:
    return "".join(m.text for m in request.messages)


def _common(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def reusable_share(build: Callable[[int, int], ChatRequest], per_group: float) -> float:
    """Share of prompt characters (~tokens) a prefix cache reuses. `build(group, item)` renders a
    request: requests of one group (one caption) differ only in their item (the question), groups
    in everything the group decides; `per_group` requests share a group."""
    first, same_group, other_group = _text(build(0, 0)), _text(build(0, 1)), _text(build(1, 1))
    n = max(1.0, per_group)
    group_prefix, common_prefix = _common(first, same_group), _common(first, other_group)
    return ((n - 1) * group_prefix + common_prefix) / (n * len(first)) if first else 0.0


def distinct(seed: int, tokens: float, chars_per_token: float) -> str:
    """Filler text of about `tokens` tokens (`chars_per_token` characters each, as the plan counts)
    whose first character differs with `seed`, so two fillers of different seeds share no prefix."""
    word = "abcdefghijklmnopqrstuvwxyz"[seed % 26] * 3 + " "
    n = max(1, int(round(tokens * chars_per_token)))
    return (word * (n // 4 + 1))[:n]
