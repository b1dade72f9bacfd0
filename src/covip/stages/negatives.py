"""Stage 4: embed every concept, then give each kept sample a shuffled context with hard negatives.

A negative is a concept that is *not* in the query image but looks like one that is, so a model
cannot pass by recalling every memory it was shown. Similarity of a candidate to a sample is its
cosine (paper: CLIP ViT-L/14 image embeddings) to the closest positive. A sample gets
`per_positive` negatives per positive concept (default 2, the released ground truth's ratio: 3, 6,
9 context concepts for 1, 2, 3 positives); with `per_positive: null` the count is drawn in
[min_negatives, max_negatives] instead. The negatives are drawn from the most similar candidates
(the `candidate_pool` most similar, at least as many as needed), and the positives and negatives are
shuffled together. Every draw comes from a generator
derived from the run seed and the sample id, so a sample's context never depends on which other
samples exist or in which order they are processed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from covip.clients.base import ImageEmbedder
from covip.core.io import decode_image
from covip.core.seeding import rng_for


class NegativesError(ValueError):
    """Inconsistent inputs to stage 4; the message names the sample or concept."""


@dataclass
class NegativeSettings:
    """Settings of stage 4 (config section `negatives`)."""

    per_positive: int | None = field(
        default=2,
        metadata={"help": "Negatives per positive concept (the released ground truth: 2, so 1, 2, 3 positives give 3, 6, 9 context concepts). null: draw the count in [min_negatives, max_negatives] per sample instead."},
    )
    min_negatives: int = field(default=2, metadata={"help": "Fewest negative concepts added to a sample's context (only with per_positive: null)."})
    max_negatives: int = field(default=4, metadata={"help": "Most negative concepts added to a sample's context; the count is drawn uniformly in [min, max] per sample (only with per_positive: null)."})
    candidate_pool: int = field(
        default=8,
        metadata={"help": "Negatives are drawn without replacement from this many most similar non-positive concepts, or from as many as the sample needs when that is more. 0 or a value >= the pool size means 'draw from all' (random negatives)."},
    )
    exclude_same_name: bool = field(
        default=True,
        metadata={"help": "Never use a negative that shares its fictional name with a positive (two different 'Jeffrey's in one context are ambiguous). Needs concepts_rows."},
    )
    same_category_only: bool = field(
        default=False,
        metadata={"help": "Draw negatives only from the categories of the sample's positives (person, animal, object, place). Needs concepts_rows."},
    )

    def most_negatives(self, num_positives: int) -> int:
        """The most negatives `build_contexts` adds to a sample with `num_positives` positives (the
        config check sizes image limits with it: keep it in step with `_negative_count`)."""
        return self.max_negatives if self.per_positive is None else self.per_positive * num_positives

    def mean_negatives(self, num_positives: int) -> float:
        """The expected number of negatives of a sample with `num_positives` positives (for `covip plan`)."""
        if self.per_positive is None:
            return (self.min_negatives + self.max_negatives) / 2
        return float(self.per_positive * num_positives)

    def __post_init__(self):
        if self.per_positive is not None and (
            isinstance(self.per_positive, bool) or not isinstance(self.per_positive, int) or self.per_positive < 0
        ):
            raise ValueError(f"negatives.per_positive must be an integer >= 0 or null, got {self.per_positive!r}")
        if self.min_negatives < 0:
            raise ValueError(f"negatives.min_negatives must be >= 0, got {self.min_negatives}")
        if self.max_negatives < self.min_negatives:
            raise ValueError(
                f"negatives.max_negatives ({self.max_negatives}) must be >= negatives.min_negatives ({self.min_negatives})"
            )
        if self.candidate_pool < 0:
            raise ValueError(f"negatives.candidate_pool must be >= 0, got {self.candidate_pool}")
        if self.per_positive is None and self.candidate_pool != 0 and self.candidate_pool < self.max_negatives:
            raise ValueError(
                f"negatives.candidate_pool ({self.candidate_pool}) must be 0 (all) or >= negatives.max_negatives ({self.max_negatives})"
            )


def embed_concepts(
    concepts_rows: Sequence[Mapping], embedder: ImageEmbedder, progress_file=None, batch_size: int = 64
) -> list[dict]:
    """Embed every concept's reference image; rows fit schemas.CONCEPT_EMBEDDINGS.

    Each image is decoded first so a broken one is reported with its row and concept id rather than
    from deep inside the embedder. The embedder's output is checked for shape and finiteness and
    re-normalised, so the cosine in `build_contexts` is a plain dot product. `batch_size` is how many
    images go to the embedder per call (progress advances per call; the embedder batches inside).
    """
    if batch_size < 1:
        raise ValueError(f"embed_concepts: batch_size must be >= 1, got {batch_size}")
    seen: dict[str, int] = {}
    for index, row in enumerate(concepts_rows):
        concept_id = row.get("concept_id")
        if not concept_id:
            raise NegativesError(f"concepts row {index}: field 'concept_id' is empty")
        if concept_id in seen:
            raise NegativesError(f"concepts row {index}: concept_id '{concept_id}' repeats row {seen[concept_id]}")
        seen[concept_id] = index
        decode_image(row.get("image"), f"concepts row {index} (concept_id={concept_id}) field 'image'")

    identity = getattr(embedder, "identity", type(embedder).__name__)
    rows: list[dict] = []
    bar = tqdm(total=len(concepts_rows), desc="embed concepts", file=progress_file, mininterval=1.0, ascii=True)
    for start in range(0, len(concepts_rows), batch_size):
        chunk = concepts_rows[start : start + batch_size]
        vectors = np.asarray(embedder.embed([row["image"] for row in chunk]), dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[0] != len(chunk):
            raise NegativesError(
                f"embedder {identity} returned shape {vectors.shape} for {len(chunk)} images (concept rows {start}..{start + len(chunk) - 1})"
            )
        norms = np.linalg.norm(vectors, axis=1)
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1) | (norms < 1e-12))
        if bad.size:
            row = chunk[int(bad[0])]
            raise NegativesError(f"embedder {identity} gave a zero or non-finite vector for concept_id={row['concept_id']}")
        vectors = vectors / norms[:, None]
        for row, vector in zip(chunk, vectors):
            rows.append({"concept_id": row["concept_id"], "embedding": vector.astype(np.float32).tolist(), "embedder": identity})
        bar.update(len(chunk))
    bar.close()
    return rows


def _embedding_matrix(embedding_rows: Sequence[Mapping]) -> tuple[list[str], np.ndarray, str]:
    if not embedding_rows:
        raise NegativesError("concept embeddings: the table is empty")
    ids: list[str] = []
    index: dict[str, int] = {}
    embedders = {row["embedder"] for row in embedding_rows}
    if len(embedders) > 1:
        raise NegativesError(f"concept embeddings come from several embedders {sorted(embedders)}; re-embed with one")
    dims = {len(row["embedding"]) for row in embedding_rows}
    if len(dims) > 1:
        raise NegativesError(f"concept embeddings have mixed dimensions {sorted(dims)}")
    for position, row in enumerate(embedding_rows):
        if row["concept_id"] in index:
            raise NegativesError(f"concept embeddings row {position}: concept_id '{row['concept_id']}' repeats")
        index[row["concept_id"]] = position
        ids.append(row["concept_id"])
    matrix = np.asarray([row["embedding"] for row in embedding_rows], dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms < 1e-12).any() or not np.isfinite(matrix).all():
        position = int(np.flatnonzero((norms[:, 0] < 1e-12) | ~np.isfinite(matrix).all(axis=1))[0])
        raise NegativesError(f"concept embeddings row {position} (concept_id={ids[position]}): zero or non-finite vector")
    return ids, matrix / norms, embedders.pop()


def kept_sample_ids(queries_rows: Sequence[Mapping], decisions_rows: Sequence[Mapping]) -> list[str]:
    """Sample ids the filter kept, in query order; every query must have exactly one decision."""
    decisions: dict[str, Mapping] = {}
    for position, row in enumerate(decisions_rows):
        if row["sample_id"] in decisions:
            raise NegativesError(f"filter decisions row {position}: sample_id '{row['sample_id']}' has two decisions")
        decisions[row["sample_id"]] = row
    query_ids = [row["sample_id"] for row in queries_rows]
    unknown = sorted(set(decisions) - set(query_ids))
    if unknown:
        raise NegativesError(f"filter decisions name sample(s) that are not in the queries: {unknown[:5]}")
    undecided = [sid for sid in query_ids if sid not in decisions]
    if undecided:
        raise NegativesError(f"queries without a filter decision: {undecided[:5]} ({len(undecided)} in all)")
    return [sid for sid in query_ids if decisions[sid]["kept"]]


def _negative_count(settings: NegativeSettings, sample_id: str, positives: int, candidates: int, seed: int) -> int:
    """How many negatives a sample gets: per_positive x its positives, or a draw in [min, max]."""
    if settings.per_positive is not None:
        count = settings.per_positive * positives
        if candidates < count:
            raise NegativesError(
                f"sample {sample_id}: {positives} positive(s) x negatives.per_positive {settings.per_positive} need {count} "
                f"negatives, but only {candidates} concept(s) can serve; grow the concept pool or lower negatives.per_positive"
            )
        return count
    count = int(rng_for(seed, "negatives", "count", sample_id).integers(settings.min_negatives, settings.max_negatives + 1))
    if candidates < settings.min_negatives:
        raise NegativesError(
            f"sample {sample_id}: only {candidates} concept(s) can serve as negatives, but min_negatives is "
            f"{settings.min_negatives}; grow the concept pool or lower negatives.min_negatives"
        )
    return min(count, candidates)


def build_contexts(
    queries_rows: Sequence[Mapping],
    decisions_rows: Sequence[Mapping],
    embedding_rows: Sequence[Mapping],
    settings: NegativeSettings,
    seed: int,
    *,
    concepts_rows: Sequence[Mapping] | None = None,
) -> list[dict]:
    """The shuffled context of every kept sample; rows fit schemas.CONTEXTS, in query order.

    `concepts_rows` (schemas.CONCEPTS) is needed only for `exclude_same_name` and
    `same_category_only`; without it those settings must be off.
    """
    if (settings.exclude_same_name or settings.same_category_only) and concepts_rows is None:
        raise NegativesError(
            "negatives: exclude_same_name / same_category_only need the concepts table (pass concepts_rows) "
            "or must be set to false"
        )
    ids, matrix, embedder = _embedding_matrix(embedding_rows)
    position = {concept_id: i for i, concept_id in enumerate(ids)}
    id_array = np.array(ids)
    names = categories = None
    if concepts_rows is not None:
        meta = {row["concept_id"]: row for row in concepts_rows}
        missing = [cid for cid in ids if cid not in meta]
        if missing:
            raise NegativesError(f"concept embeddings name concept(s) missing from the concepts table: {missing[:5]}")
        names = np.array([meta[cid]["name"].strip().casefold() for cid in ids])
        categories = np.array([meta[cid]["category"] for cid in ids])

    kept = set(kept_sample_ids(queries_rows, decisions_rows))
    rows: list[dict] = []
    for query in queries_rows:
        sample_id = query["sample_id"]
        if sample_id not in kept:
            continue
        positives = list(query["positive_concept_ids"])
        if not positives:
            raise NegativesError(f"sample {sample_id}: no positive concepts")
        if len(set(positives)) != len(positives):
            raise NegativesError(f"sample {sample_id}: positive concepts repeat: {positives}")
        for concept_id in positives:
            if concept_id not in position:
                raise NegativesError(f"sample {sample_id}: positive concept '{concept_id}' has no embedding (unknown concept id)")
        pos_index = np.array([position[cid] for cid in positives])

        # Similarity to a sample = cosine to its closest positive.
        similarity = (matrix[pos_index] @ matrix.T).max(axis=0)
        allowed = np.ones(len(ids), dtype=bool)
        allowed[pos_index] = False
        if settings.exclude_same_name:
            allowed &= ~np.isin(names, names[pos_index])
        if settings.same_category_only:
            allowed &= np.isin(categories, categories[pos_index])
        candidates = np.flatnonzero(allowed)

        count = _negative_count(settings, sample_id, len(positives), len(candidates), seed)
        # Most similar first; ties broken by concept id so the order never depends on row order.
        order = candidates[np.lexsort((id_array[candidates], -similarity[candidates]))].tolist()
        pool = order if settings.candidate_pool == 0 else order[: max(settings.candidate_pool, count)]
        chosen = rng_for(seed, "negatives", "pick", sample_id).choice(len(pool), size=count, replace=False)
        negatives = [pool[i] for i in sorted(chosen.tolist())]

        members = [(cid, True) for cid in positives] + [(ids[i], False) for i in negatives]
        permutation = rng_for(seed, "negatives", "order", sample_id).permutation(len(members))
        context = [members[i] for i in permutation]
        rows.append(
            {
                "sample_id": sample_id,
                "context_concept_ids": [cid for cid, _ in context],
                "positive_indices": [i for i, (_, is_positive) in enumerate(context) if is_positive],
                "negative_concept_ids": [cid for cid, is_positive in context if not is_positive],
                "negative_similarity": [float(similarity[position[cid]]) for cid, is_positive in context if not is_positive],
                "embedder": embedder,
            }
        )
    return rows
