"""Stage 2: plan which concepts each sample shows, then have the image generator compose the query.

`plan_samples` decides, for every sample id, how many positive concepts it has (1-4, in the
proportions of `positives_weights`, every count with a positive weight present at least once) and
which ones. `synthesize_queries` renders the `query_synthesis` prompt for each plan, sends it with
the reference images to the generator and records one row per sample. A generation that fails after
`max_attempts` becomes a row with status 'failed' and the errors; it never stops the stage.

All draws come from generators keyed by the run seed and the sample id (the split of sample ids
over counts is keyed by the seed and the number of samples), so a sample's plan and its generation
seed never depend on processing order or concurrency.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from covip.clients.base import ImageGenerator, ImagePart, ImageRequest
from covip.core.concurrency import run_concurrently
from covip.prompts import PromptBook
from covip.core.seeding import derive_seed, rng_for

MAX_POSITIVES = 4


class SynthesisError(ValueError):
    """Inputs that cannot be planned (too few concepts, bad rows); the message names the problem."""


@dataclass
class SynthesisSettings:
    """Settings of stage 2 (config section `synthesis`)."""

    num_samples: int = field(default=60, metadata={"help": "How many query images to synthesize (sample ids s0000, s0001, ...)."})
    positives_weights: list[float] = field(
        default_factory=lambda: [1.0, 1.0, 1.0, 1.0],
        metadata={"help": "Relative share of samples with 1, 2, 3 and 4 positive concepts; every count with a positive weight appears at least once when num_samples allows."},
    )
    image_size: int = field(default=320, metadata={"help": "Side, in pixels, of the square query image asked of the generator."})
    max_attempts: int = field(default=2, metadata={"help": "Generation attempts per sample (each with a new derived seed) before the row is recorded as failed."})
    distinct_kinds: bool = field(default=True, metadata={"help": "Never put two concepts of the same kind (two mugs) in one query, so each positive is unambiguous in the image; hard negatives of the same kind come in stage 4."})

    @property
    def most_positives(self) -> int:
        """The most positive concepts a sample of these settings can have (the largest count with weight)."""
        return max(k + 1 for k, weight in enumerate(self.positives_weights) if weight > 0)

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"synthesis.num_samples must be >= 1, got {self.num_samples}")
        weights = list(self.positives_weights)
        if len(weights) != MAX_POSITIVES:
            raise ValueError(f"synthesis.positives_weights must have {MAX_POSITIVES} entries (for 1..{MAX_POSITIVES} positives), got {weights}")
        if any(not isinstance(w, (int, float)) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"synthesis.positives_weights must be non-negative numbers with a positive sum, got {weights}")
        self.positives_weights = [float(w) for w in weights]
        if not 64 <= self.image_size <= 4096:
            raise ValueError(f"synthesis.image_size must be in [64, 4096], got {self.image_size}")
        if not 1 <= self.max_attempts <= 10:
            raise ValueError(f"synthesis.max_attempts must be in [1, 10], got {self.max_attempts}")


def sample_id(index: int) -> str:
    return f"s{index:04d}"


def allocate_counts(num_samples: int, weights: Sequence[float]) -> list[int]:
    """How many samples get 1, 2, 3, 4 positives: proportional to `weights` (largest remainder),
    with every positive-weight count present at least once when there are enough samples."""
    total = sum(weights)
    exact = [num_samples * w / total for w in weights]
    counts = [int(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: num_samples - sum(counts)]:
        counts[k] += 1
    wanted = [k for k, w in enumerate(weights) if w > 0]
    if num_samples >= len(wanted):
        for k in wanted:
            if counts[k] == 0:
                # Take the sample from the count that has the most to spare.
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[k] += 1
    return counts


def plan_samples(concepts_rows: Sequence[Mapping], settings: SynthesisSettings, seed: int) -> list[dict]:
    """Choose 1-4 distinct positive concept ids for every sample.

    Returns one dict per sample, in sample-id order: `sample_id`, `positive_concept_ids`,
    `num_positives`.
    """
    concepts = _check_concepts(concepts_rows)
    counts = allocate_counts(settings.num_samples, settings.positives_weights)
    largest = max(k + 1 for k, c in enumerate(counts) if c > 0)
    kinds = {row["kind"] for row in concepts}
    available = len(kinds) if settings.distinct_kinds else len(concepts)
    if available < largest:
        what = "distinct kinds" if settings.distinct_kinds else "concepts"
        raise SynthesisError(
            f"synthesis: samples with {largest} positives need at least {largest} {what} in the pool, have {available}"
        )
    per_sample = [k + 1 for k, c in enumerate(counts) for _ in range(c)]
    order = rng_for(seed, "synthesis-counts", settings.num_samples).permutation(len(per_sample))
    plan = []
    for index, slot in enumerate(order):
        sid = sample_id(index)
        num = per_sample[int(slot)]
        rng = rng_for(seed, "synthesis-positives", sid)
        chosen, used_kinds = [], set()
        for position in rng.permutation(len(concepts)):
            row = concepts[int(position)]
            if settings.distinct_kinds and row["kind"] in used_kinds:
                continue
            chosen.append(row["concept_id"])
            used_kinds.add(row["kind"])
            if len(chosen) == num:
                break
        plan.append({"sample_id": sid, "positive_concept_ids": chosen, "num_positives": num})
    return plan


def render_instruction(prompts: PromptBook, concepts: Sequence[Mapping], image_size: int) -> str:
    """The generation instruction for these concepts, in reference-image order."""
    listing = "\n".join(f"{i}. {row['name']} ({row['category']})" for i, row in enumerate(concepts, start=1))
    return prompts.render("query_synthesis", num_concepts=len(concepts), concept_list=listing, image_size=image_size)


def synthesize_queries(
    concepts_rows: Sequence[Mapping],
    generator: ImageGenerator,
    prompts: PromptBook,
    settings: SynthesisSettings,
    seed: int,
    progress_file=None,
    only: Callable[[str], bool] | None = None,
) -> list[dict]:
    """Plan the samples and generate one query image per sample; rows fit `schemas.QUERIES`."""
    return list(iter_queries(concepts_rows, generator, prompts, settings, seed, progress_file, only))


def iter_queries(
    concepts_rows: Sequence[Mapping],
    generator: ImageGenerator,
    prompts: PromptBook,
    settings: SynthesisSettings,
    seed: int,
    progress_file=None,
    only: Callable[[str], bool] | None = None,
) -> Iterator[dict]:
    """`synthesize_queries` as a generator, in sample order: the workflow writes each image as it
    comes instead of holding all of them (the query table grows with the number of samples).

    `only(sample_id)` restricts generation to some samples (a shard); the plan is always made for
    all of them, so a sample's positives do not depend on how the stage is split.
    """
    plan = plan_samples(concepts_rows, settings, seed)
    if only is not None:
        plan = [item for item in plan if only(item["sample_id"])]
    by_id = {row["concept_id"]: row for row in concepts_rows}
    identity = getattr(generator, "identity", type(generator).__name__)
    concurrency = generator.spec.concurrency

    def generate(item: dict) -> dict:
        concepts = [by_id[cid] for cid in item["positive_concept_ids"]]
        instruction = render_instruction(prompts, concepts, settings.image_size)
        references = tuple(ImagePart(row["image"]) for row in concepts)
        errors = []
        for attempt in range(settings.max_attempts):
            request = ImageRequest(
                instruction=instruction,
                reference_images=references,
                seed=derive_seed(seed, "synthesis-generate", item["sample_id"], attempt),
                task={"kind": "compose", "concept_ids": list(item["positive_concept_ids"]), "image_size": settings.image_size},
            )
            try:
                response = generator.generate(request)
            except Exception as error:  # noqa: BLE001 - one bad sample must not stop the stage
                errors.append(f"attempt {attempt + 1}: {type(error).__name__}: {error}")
                continue
            if response.ok:
                return _row(item, instruction, identity, response.image, response.layout, "ok", None)
            errors.append(f"attempt {attempt + 1}: {response.error or 'generator returned no image'}")
        return _row(item, instruction, identity, None, None, "failed", "; ".join(errors))

    yield from run_concurrently(generate, plan, concurrency=concurrency, desc="query synthesis", file=progress_file)


def _row(item, instruction, identity, image, layout, status, error) -> dict:
    return {
        "sample_id": item["sample_id"],
        "positive_concept_ids": list(item["positive_concept_ids"]),
        "num_positives": item["num_positives"],
        "instruction": instruction,
        "image": image,
        "generator": identity,
        "layout": json.dumps(layout, sort_keys=True) if layout else None,
        "status": status,
        "error": error,
    }


def _check_concepts(rows: Sequence[Mapping]) -> list[Mapping]:
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        for key in ("concept_id", "kind", "name", "category", "image"):
            if not row.get(key):
                raise SynthesisError(f"concepts row {index}: field '{key}' is empty")
        concept_id = row["concept_id"]
        if concept_id in seen:
            raise SynthesisError(f"concepts row {index}: concept_id '{concept_id}' repeats row {seen[concept_id]}")
        seen[concept_id] = index
    if not rows:
        raise SynthesisError("synthesis: the concept pool is empty")
    return list(rows)
