"""Stage 7: assemble the published train and test splits, and say what happened to every sample.

A sample is usable only when its query image was generated, the filter kept it (it has a context),
and every context concept has an 'ok' dialogue and an 'ok' set of multiple-choice questions. Usable
samples are split by num_positives strata: the test split gets every stratum in proportion (and at
least `min_test_per_stratum` of each, when there are enough), so CapEval-QA can be reported per
concept count. Within a stratum, samples are ranked by a hash of (seed, sample_id) and the test
split takes the first ones, so the result does not depend on row order, and adding or removing a
sample changes the others' assignment only at the boundary between the splits.

The split rows use the Hugging Face image struct for images, so
`datasets.load_dataset("parquet", data_files=...)` yields PIL images.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from covip.core.io import decode_image, encode_png
from covip.core.seeding import derive_seed

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class SplitError(ValueError):
    """Inconsistent inputs to stage 7, or too few usable samples; the message says which and how many."""


@dataclass
class SplitSettings:
    """Settings of stage 7 (config section `splits`)."""

    train_size: int | None = field(
        default=None,
        metadata={"help": "Training samples. None or 0: all usable samples not taken by the test split. Fails if there are not enough."},
    )
    test_size: int | None = field(
        default=None,
        metadata={"help": "Test samples. None or 0: all usable samples not taken by the train split. Fails if there are not enough."},
    )
    test_fraction: float = field(
        default=0.3,
        metadata={"help": "Used only when both sizes are None/0: the test split gets round(test_fraction * usable) samples and train the rest (the paper's ~1.3K/~2.8K is about 0.3)."},
    )
    stratify: bool = field(
        default=True,
        metadata={"help": "Split each num_positives stratum in proportion, so both splits have the same mix of 1-4 positive samples."},
    )
    min_test_per_stratum: int = field(
        default=1,
        metadata={"help": "With stratify, every num_positives present gets at least this many test samples (as far as the stratum and test size allow)."},
    )
    require_supported_questions: bool = field(
        default=False,
        metadata={"help": "Drop a sample when any of its questions is marked unsupported (its correct option was not found in the dialogue)."},
    )
    questions_per_concept: int = field(
        default=3,
        metadata={"help": "Questions each context concept must have; a concept with another count drops its sample. 0 accepts any non-zero count."},
    )

    def __post_init__(self):
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"splits.{name} must be None or an int >= 0, got {value!r}")
            if value == 0:
                setattr(self, name, None)
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"splits.test_fraction must be in [0, 1], got {self.test_fraction}")
        if self.min_test_per_stratum < 0:
            raise ValueError(f"splits.min_test_per_stratum must be >= 0, got {self.min_test_per_stratum}")
        if self.questions_per_concept < 0:
            raise ValueError(f"splits.questions_per_concept must be >= 0, got {self.questions_per_concept}")


def _index_unique(rows: Sequence[Mapping], key, table: str) -> dict:
    index: dict = {}
    for position, row in enumerate(rows):
        k = key(row)
        if k in index:
            raise SplitError(f"{table} row {position}: {k} appears twice")
        index[k] = row
    return index


def _hf_image(data: bytes, where: str) -> dict:
    """The Hugging Face image struct, PNG-encoded; decoding here catches broken images early."""
    image = decode_image(data, where)
    if not data.startswith(PNG_MAGIC):
        data = encode_png(image)
    return {"bytes": data, "path": None}


def _published_question(question: Mapping) -> dict:
    return {"question": question["question"], "options": dict(question["options"]), "answer": question["answer"]}


def _allocate(total: int, sizes: dict[int, int], minimum: int) -> dict[int, int]:
    """Split `total` over strata in proportion to `sizes`, each at least `minimum` where possible."""
    alloc = {k: 0 for k in sizes}
    present = [k for k in sorted(sizes) if sizes[k] > 0]
    if minimum and total >= minimum * len(present):
        for k in present:
            alloc[k] = min(minimum, sizes[k])
    n = sum(sizes.values())
    # Largest shortfall from the proportional target first; ties by stratum, so the result is stable.
    for _ in range(total - sum(alloc.values())):
        open_strata = [k for k in present if alloc[k] < sizes[k]]
        best = max(open_strata, key=lambda k: (total * sizes[k] / n - alloc[k], -k))
        alloc[best] += 1
    return alloc


def _sizes(settings: SplitSettings, usable: int, describe: str) -> tuple[int, int]:
    train, test = settings.train_size, settings.test_size
    if train is None and test is None:
        test = int(round(settings.test_fraction * usable))
        return usable - test, test
    asked = (train or 0) + (test or 0)
    if asked > usable:
        wanted = " + ".join(f"{n}={v}" for n, v in (("train_size", train), ("test_size", test)) if v is not None)
        raise SplitError(f"splits: {wanted} asks for {asked} samples but only {usable} are usable ({describe})")
    if train is None:
        return usable - test, test
    if test is None:
        return train, usable - train
    return train, test


def _sample_problem(
    query: Mapping,
    context: Mapping | None,
    dialogues: dict,
    mcqas: dict,
    settings: SplitSettings,
    decisions: dict | None,
    image: bytes | None,
) -> str | None:
    """Why a sample cannot be published ('<code>: <detail>'), or None when it is usable."""
    sample_id = query["sample_id"]
    if query["status"] != "ok":
        return f"generation_failed: {query.get('error') or 'no error recorded'}"
    if context is None:
        if decisions is not None and sample_id in decisions:
            decision = decisions[sample_id]
            return f"filtered: {decision['reason'] or 'not kept'}" + (f" ({decision['detail']})" if decision.get("detail") else "")
        return "filtered: the filter did not keep it (no context)"
    if not image:
        return "query_image_missing: status is ok but the image is empty"
    for index, concept_id in enumerate(context["context_concept_ids"]):
        dialogue = dialogues.get((sample_id, index))
        if dialogue is None:
            return f"dialogue_missing: context {index} ({concept_id}) has no dialogue row"
        if dialogue["status"] != "ok":
            return f"dialogue_failed: context {index} ({concept_id}): {dialogue.get('failure_reason') or 'no reason recorded'}"
        if not (dialogue.get("dialogue") or "").strip():
            return f"dialogue_failed: context {index} ({concept_id}): status ok but the text is empty"
        mcqa = mcqas.get((sample_id, index))
        if mcqa is None:
            return f"mcqa_missing: context {index} ({concept_id}) has no MCQA row"
        if mcqa["status"] != "ok":
            return f"mcqa_failed: context {index} ({concept_id}): {mcqa.get('failure_reason') or 'no reason recorded'}"
        questions = mcqa.get("questions") or []
        if not questions or (settings.questions_per_concept and len(questions) != settings.questions_per_concept):
            return f"mcqa_failed: context {index} ({concept_id}): {len(questions)} question(s), expected {settings.questions_per_concept or 'some'}"
        if settings.require_supported_questions and not all(q.get("supported") for q in questions):
            bad = [q["question_id"] for q in questions if not q.get("supported")]
            return f"unsupported_question: context {index} ({concept_id}): {bad}"
    return None


def make_splits(
    queries_rows: Sequence[Mapping],
    contexts_rows: Sequence[Mapping],
    concepts_rows: Sequence[Mapping],
    dialogues_rows: Sequence[Mapping],
    mcqa_rows: Sequence[Mapping],
    settings: SplitSettings,
    seed: int,
    *,
    decisions_rows: Sequence[Mapping] | None = None,
    progress_file=None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Return (train rows, test rows, report rows): schemas.SPLIT, SPLIT, SPLIT_REPORT.

    The report has one row per query (every synthesized sample): outcome 'train', 'test', 'unused'
    (usable but not needed for the requested sizes) or 'dropped', with the reason. Pass
    `decisions_rows` (schemas.FILTER_DECISIONS) to have the filter's own reason in the report.
    """
    report_rows, rows = iter_splits(
        queries_rows, contexts_rows, concepts_rows, dialogues_rows, mcqa_rows, settings, seed,
        decisions_rows=decisions_rows, progress_file=progress_file,
    )
    train_rows: list[dict] = []
    test_rows: list[dict] = []
    for row in rows:
        (train_rows if row["split"] == "train" else test_rows).append(row)
    return train_rows, test_rows, report_rows


def iter_splits(
    queries_rows: Sequence[Mapping],
    contexts_rows: Sequence[Mapping],
    concepts_rows: Sequence[Mapping],
    dialogues_rows: Sequence[Mapping],
    mcqa_rows: Sequence[Mapping],
    settings: SplitSettings,
    seed: int,
    *,
    decisions_rows: Sequence[Mapping] | None = None,
    progress_file=None,
    query_image: Callable[[str], bytes | None] | None = None,
) -> tuple[list[dict], Iterator[dict]]:
    """`make_splits` for tables too large to hold: (report rows, published rows one at a time).

    The published rows (train and test interleaved, each in sample_id order; `row['split']` says
    which) carry every image, so the workflow writes them as they come. `query_image` returns a
    sample's query image by sample_id, for `queries_rows` read without their `image` column; by
    default the image is taken from the rows. Input errors found while assembling a row are raised
    by the iterator.
    """
    image_of = query_image or (lambda sid: queries[sid].get("image"))
    queries = _index_unique(queries_rows, lambda r: r["sample_id"], "queries")
    contexts = _index_unique(contexts_rows, lambda r: r["sample_id"], "contexts")
    concepts = _index_unique(concepts_rows, lambda r: r["concept_id"], "concepts")
    dialogues = _index_unique(dialogues_rows, lambda r: (r["sample_id"], r["context_index"]), "dialogues")
    mcqas = _index_unique(mcqa_rows, lambda r: (r["sample_id"], r["context_index"]), "mcqas")
    decisions = _index_unique(decisions_rows, lambda r: r["sample_id"], "filter decisions") if decisions_rows is not None else None

    for table, keys in (("contexts", contexts), ("dialogues", dialogues), ("mcqas", mcqas)):
        for key in keys:
            sample_id = key[0] if isinstance(key, tuple) else key
            if sample_id not in queries:
                raise SplitError(f"{table}: sample '{sample_id}' is not in the queries table")
    for table, keys in (("dialogues", dialogues), ("mcqas", mcqas)):
        for (sample_id, index), row in keys.items():
            context = contexts.get(sample_id)
            if context is None:
                raise SplitError(f"{table}: sample '{sample_id}' has rows but no context (it was not kept)")
            ids = context["context_concept_ids"]
            if not 0 <= index < len(ids) or ids[index] != row["concept_id"]:
                raise SplitError(
                    f"{table}: sample '{sample_id}' context_index {index} names concept '{row['concept_id']}', "
                    f"but the context is {ids}"
                )
    for sample_id, context in contexts.items():
        ids = context["context_concept_ids"]
        for concept_id in ids:
            if concept_id not in concepts:
                raise SplitError(f"contexts: sample '{sample_id}' names unknown concept '{concept_id}'")
        query = queries[sample_id]
        query_positives = set(query["positive_concept_ids"])
        if len(query_positives) != int(query["num_positives"]):
            raise SplitError(
                f"queries: sample '{sample_id}' has num_positives={query['num_positives']} but "
                f"{len(query_positives)} distinct positive concept(s)"
            )
        out_of_range = [i for i in context["positive_indices"] if not 0 <= i < len(ids)]
        if out_of_range:
            raise SplitError(f"contexts: sample '{sample_id}' positive_indices {out_of_range} fall outside its {len(ids)} concepts")
        context_positives = {ids[i] for i in context["positive_indices"]}
        if context_positives != query_positives or len(context["positive_indices"]) != len(query_positives):
            raise SplitError(
                f"contexts: sample '{sample_id}' marks positives {sorted(context_positives)} but its query shows "
                f"{sorted(query_positives)}"
            )

    # Pass 1: decide which samples are usable.
    report: dict[str, dict] = {}
    usable: list[str] = []
    for sample_id, query in queries.items():
        problem = _sample_problem(query, contexts.get(sample_id), dialogues, mcqas, settings, decisions,
                                  image_of(sample_id) if query["status"] == "ok" and sample_id in contexts else None)
        row = {"sample_id": sample_id, "num_positives": int(query["num_positives"]), "outcome": "dropped", "reason": problem}
        report[sample_id] = row
        if problem is None:
            usable.append(sample_id)

    strata: dict[int, list[str]] = defaultdict(list)
    for sample_id in usable:
        strata[int(queries[sample_id]["num_positives"]) if settings.stratify else 0].append(sample_id)
    for members in strata.values():
        members.sort(key=lambda sid: (derive_seed(seed, "splits", sid), sid))
    by_count = Counter(int(queries[sid]["num_positives"]) for sid in usable)
    drops = Counter(row["reason"].split(":", 1)[0] for row in report.values() if row["reason"] is not None)
    describe = f"by num_positives {dict(sorted(by_count.items()))}; dropped {dict(sorted(drops.items()))}"
    if not usable:
        raise SplitError(f"splits: no usable samples out of {len(queries)} ({describe})")
    n_train, n_test = _sizes(settings, len(usable), describe)

    sizes = {k: len(v) for k, v in strata.items()}
    minimum = settings.min_test_per_stratum if settings.stratify else 0
    test_alloc = _allocate(n_test, sizes, minimum)
    rest = {k: sizes[k] - test_alloc[k] for k in sizes}
    train_alloc = _allocate(n_train, rest, 0)
    assignment: dict[str, str] = {}
    for k, members in strata.items():
        for sid in members[: test_alloc[k]]:
            assignment[sid] = "test"
        for sid in members[test_alloc[k] : test_alloc[k] + train_alloc[k]]:
            assignment[sid] = "train"

    # The report is complete before any row is assembled.
    selected: list[tuple[str, str]] = []
    for sample_id in sorted(usable):
        split = assignment.get(sample_id)
        if split is None:
            report[sample_id].update(outcome="unused", reason="usable but not needed: the requested split sizes were already filled")
            continue
        report[sample_id].update(outcome=split, reason=f"selected for {split} (num_positives={report[sample_id]['num_positives']})")
        selected.append((sample_id, split))
    report_rows = [report[row["sample_id"]] for row in queries_rows]
    return report_rows, _assemble(selected, queries, contexts, concepts, dialogues, mcqas, image_of,
                                  queries_rows, concepts_rows, progress_file)


def _assemble(selected, queries, contexts, concepts, dialogues, mcqas, image_of, queries_rows, concepts_rows,
              progress_file) -> Iterator[dict]:
    """Pass 2: the published rows, one at a time (each holds its query and context images)."""
    query_position = {row["sample_id"]: i for i, row in enumerate(queries_rows)}
    concept_position = {row["concept_id"]: i for i, row in enumerate(concepts_rows)}
    concept_images: dict[str, dict] = {}
    for sample_id, split in tqdm(selected, desc="assemble splits", file=progress_file, mininterval=1.0, ascii=True):
        query, context = queries[sample_id], contexts[sample_id]
        ids = list(context["context_concept_ids"])
        images, names, texts, categories, questions, facts = [], [], [], [], [], []
        for index, concept_id in enumerate(ids):
            concept = concepts[concept_id]
            if concept_id not in concept_images:
                where = f"concepts row {concept_position[concept_id]} (concept_id={concept_id}) field 'image'"
                concept_images[concept_id] = _hf_image(concept["image"], where)
            dialogue = dialogues[(sample_id, index)]
            if dialogue["name"] != concept["name"]:
                raise SplitError(
                    f"dialogues: sample '{sample_id}' context_index {index} uses name '{dialogue['name']}' but concept "
                    f"'{concept_id}' is named '{concept['name']}'"
                )
            images.append(concept_images[concept_id])
            names.append(concept["name"])
            categories.append(concept["category"])
            texts.append(dialogue["dialogue"])
            questions.append([_published_question(q) for q in mcqas[(sample_id, index)]["questions"]])
            facts.append([{"kind": f["kind"], "text": f["text"]} for f in dialogue["facts"] or []])
        yield {
            "sample_id": sample_id,
            "split": split,
            "query_image": _hf_image(image_of(sample_id), f"queries row {query_position[sample_id]} (sample_id={sample_id}) field 'image'"),
            "context_images": images,
            "context_names": names,
            "context_dialogues": texts,
            "context_concept_ids": ids,
            "context_categories": categories,
            "positive_indices": [int(i) for i in context["positive_indices"]],
            "num_positives": int(query["num_positives"]),
            "mcqa": questions,
            "context_facts": json.dumps(facts, ensure_ascii=False),
        }
