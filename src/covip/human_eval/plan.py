"""Which comparisons each rater sees, in which order, and which caption is shown as A.

A comparison is one test sample and one unordered pair of policies whose captions both exist and
succeeded. The plan is a pure function of (seed, seed offset, policies, samples, captions, sizes) and
of the rater's name, so a restarted server shows every rater the same list, and a rater who comes
back resumes where they stopped. Its version is a hash of all those inputs (caption texts included):
a vote records the version it was cast under, so votes about other captions are never mixed in.

Every rater gets the first `shared_items` comparisons of one seeded global order (the same items for
everyone, so raters can be compared with each other), plus comparisons drawn for them alone from the
rest, all shuffled in the rater's own order. Which policy is shown as A is drawn per (rater,
comparison), independently of the order.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from covip.human_eval.settings import HumanEvalSettings
from covip.core.seeding import pyrandom_for

PLAN_ALGORITHM = 1  # bump when the drawing below changes, so the version changes with it


@dataclass(frozen=True)
class Comparison:
    """One sample and one pair of policies (in alphabetical order)."""

    sample_id: str
    first: str
    second: str

    @property
    def item_id(self) -> str:
        return f"{self.sample_id}:{self.first}:{self.second}"


@dataclass(frozen=True)
class PlannedItem:
    """A comparison as one rater sees it: its place in their list and the policy behind A and B."""

    position: int
    comparison: Comparison
    policy_a: str
    policy_b: str

    @property
    def item_id(self) -> str:
        return self.comparison.item_id

    @property
    def sample_id(self) -> str:
        return self.comparison.sample_id


def caption_is_usable(status: str | None, caption: str | None) -> bool:
    """Only a successful, non-empty caption may ever reach a rater."""
    return status == "ok" and isinstance(caption, str) and bool(caption.strip())


class Plan:
    """The comparisons of a study and, per rater, their list (computed once, then kept)."""

    def __init__(self, comparisons: Sequence[Comparison], n_excluded: int, excluded_reasons: Mapping[str, int],
                 version: str, policies: Sequence[str], settings: HumanEvalSettings, seed: int):
        self.comparisons = list(comparisons)
        self.n_excluded = n_excluded  # comparisons left out because a caption cannot be shown
        self.excluded_reasons = dict(excluded_reasons)  # '<policy> <status>' -> comparisons it removed
        self.version = version
        self.policies = list(policies)
        self.settings = settings
        self.seed = seed
        self._by_rater: dict[str, list[PlannedItem]] = {}
        self._lock = threading.Lock()

    def _draw(self, *keys):
        return pyrandom_for(self.seed, "human_eval", self.settings.seed_offset, *keys)

    def for_rater(self, rater: str) -> list[PlannedItem]:
        with self._lock:
            if rater not in self._by_rater:
                self._by_rater[rater] = self._items_for(rater)
            return self._by_rater[rater]

    def _items_for(self, rater: str) -> list[PlannedItem]:
        wanted = min(self.settings.items_per_rater, len(self.comparisons))
        shared = self.comparisons[: min(self.settings.shared_items, wanted)]
        rest = self.comparisons[len(shared):]
        chosen = shared + self._draw("extra", rater).sample(rest, wanted - len(shared))
        self._draw("order", rater).shuffle(chosen)
        items = []
        for position, comparison in enumerate(chosen):
            first_is_a = self._draw("side", rater, comparison.item_id).random() < 0.5
            a, b = (comparison.first, comparison.second) if first_is_a else (comparison.second, comparison.first)
            items.append(PlannedItem(position, comparison, a, b))
        return items

    def item(self, rater: str, item_id: str) -> PlannedItem | None:
        return next((item for item in self.for_rater(rater) if item.item_id == item_id), None)

    def excluded_text(self) -> str:
        if not self.n_excluded:
            return "no comparison left out"
        parts = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.excluded_reasons.items()))
        return f"{self.n_excluded} comparison(s) left out because a caption cannot be shown ({parts})"


def _caption_digest(status: str | None, caption: str | None) -> str:
    if not caption_is_usable(status, caption):
        return f"unusable:{status}"
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


def plan_version(sample_ids: Sequence[str], captions: Mapping[str, Mapping[str, tuple[str | None, str | None]]],
                 policies: Sequence[str], settings: HumanEvalSettings, seed: int) -> str:
    """A short hash of everything the plan is drawn from (caption texts by their SHA-256)."""
    inputs = {
        "algorithm": PLAN_ALGORITHM,
        "seed": seed,
        "seed_offset": settings.seed_offset,
        "items_per_rater": settings.items_per_rater,
        "shared_items": settings.shared_items,
        "policies": sorted(policies),
        "samples": list(sample_ids),
        "captions": {p: {s: _caption_digest(*captions[p].get(s, (None, None))) for s in sample_ids}
                     for p in sorted(policies)},
    }
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_plan(sample_ids: Sequence[str], captions: Mapping[str, Mapping[str, tuple[str | None, str | None]]],
               policies: Sequence[str], settings: HumanEvalSettings, seed: int) -> Plan:
    """The study's plan. `captions` maps policy -> sample_id -> (status, caption text).

    A pair of policies on a sample whose caption is missing or failed for either policy is left out and
    counted under '<policy> <reason>' (both policies are counted when both fail).
    """
    policies = sorted(set(policies))
    if len(policies) < 2:
        raise ValueError(f"a pairwise study needs at least two policies, got {policies}")
    if len(set(sample_ids)) != len(sample_ids):
        repeated = sorted(s for s, n in Counter(sample_ids).items() if n > 1)
        raise ValueError(f"test split: sample id(s) {repeated[:5]} occur more than once")
    comparisons, reasons_seen, n_excluded = [], Counter(), 0
    for sample_id in sample_ids:
        for first, second in combinations(policies, 2):
            reasons = []
            for policy in (first, second):
                status, caption = captions[policy].get(sample_id, ("missing", None))
                if not caption_is_usable(status, caption):
                    reasons.append(f"{policy} {status if status != 'ok' else 'empty'}")
            if reasons:
                n_excluded += 1
                reasons_seen.update(reasons)
            else:
                comparisons.append(Comparison(sample_id, first, second))
    version = plan_version(sample_ids, captions, policies, settings, seed)
    pyrandom_for(seed, "human_eval", settings.seed_offset, "global").shuffle(comparisons)
    return Plan(comparisons, n_excluded, reasons_seen, version, policies, settings, seed)
