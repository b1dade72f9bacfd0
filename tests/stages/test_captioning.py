"""Stage 9: the caption prompt layout, the stage's rows and failures, and the CAG message structure."""

from __future__ import annotations

import copy
import io
import json

import pytest

from covip.core import schemas
from covip.clients.base import ChatRequest, ChatResponse, ImagePart, TextPart, Usage
from covip.clients.cached import CachedChatModel
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.core.io import BadImageError, to_table
from covip.stages.captioning import (
    CAG_SAMPLING,
    CaptioningError,
    CaptioningSettings,
    build_cag_request,
    build_caption_request,
    caption_failures,
    caption_samples,
    clean_caption,
)
from covip.core.reliability import FailureRateExceeded, check_failure_rate
from covip.core.sharding import Shard

QUIET = io.StringIO()


@pytest.fixture(scope="module")
def test_rows(benchmark_splits):
    return benchmark_splits[1]


@pytest.fixture(scope="module")
def row(test_rows):
    # The richest row: most context concepts, so the layout test covers several memories.
    return max(test_rows, key=lambda r: len(r["context_dialogues"]))


class ScriptedModel:
    """A ChatModel that echoes the sample id, or fails for chosen samples (raising or returning an error)."""

    def __init__(self, fail_raise=(), fail_error=()):
        self.identity = "scripted:test"
        self.fail_raise, self.fail_error = set(fail_raise), set(fail_error)
        self.requests: list[ChatRequest] = []

    def complete(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        sample_id = request.task["sample_id"]
        if sample_id in self.fail_raise:
            raise RuntimeError(f"backend exploded on {sample_id}")
        if sample_id in self.fail_error:
            return ChatResponse(None, "scripted", error="HTTP 500: server overloaded")
        return ChatResponse(f"  <think>hmm</think> A caption for {sample_id}.  ", "scripted", Usage(321, 7))


# ---------------------------------------------------------------------------------------------------
# Prompt layout


def test_layout_interleaves_header_image_dialogue_then_query_and_instruction(row, prompts):
    request = build_caption_request(row, prompts)
    assert len(request.messages) == 1 and request.messages[0].role == "user"
    parts = request.messages[0].parts
    n = len(row["context_dialogues"])
    kinds = ["text" if isinstance(p, TextPart) else "image" for p in parts]
    assert kinds == ["text", "image", "text"] * n + ["text", "image", "text"]
    sections = prompts.sections("caption")
    for k in range(n):
        header, image, dialogue = parts[3 * k : 3 * k + 3]
        assert header.text == sections["context"].substitute(index=k + 1, num_contexts=n).strip()
        assert f"Memory {k + 1} of {n}" in header.text
        assert image.data == row["context_images"][k]["bytes"]
        assert image.mime == "image/png"
        assert dialogue.text == row["context_dialogues"][k]
    assert parts[-3].text == sections["query"].template.strip()
    assert parts[-2].data == row["query_image"]["bytes"]  # the query image comes last
    assert parts[-1].text == sections["instruction"].template.strip()
    assert len(request.images) == n + 1
    # The instruction states the SPEC's four requirements; no name leaks into the fixed text.
    instruction = parts[-1].text.lower()
    for phrase in ("single paragraph", "name the user gave", "can actually be seen", "left out entirely"):
        assert phrase in instruction
    for name in row["context_names"]:
        assert name not in parts[-1].text and name not in parts[0].text


def test_greedy_by_default_and_sampling_override(row, prompts):
    assert build_caption_request(row, prompts).sampling == {"temperature": 0.0}
    assert build_caption_request(row, prompts, sampling={"temperature": 0.7}).sampling == {"temperature": 0.7}
    assert CaptioningSettings().request_sampling() == {"temperature": 0.0, "max_tokens": 512}
    assert CaptioningSettings(sampling={"temperature": 1.0, "max_tokens": 64}).request_sampling() == {"temperature": 1.0, "max_tokens": 64}
    assert CaptioningSettings(max_tokens=None).request_sampling() == {"temperature": 0.0}


def test_task_carries_the_structured_facts(row, prompts):
    task = build_caption_request(row, prompts).task
    assert task["kind"] == "caption"
    assert task["sample_id"] == row["sample_id"]
    assert task["context_names"] == list(row["context_names"])
    assert task["context_categories"] == list(row["context_categories"])
    assert task["context_dialogues"] == list(row["context_dialogues"])
    assert task["context_facts"] == json.loads(row["context_facts"])
    assert task["positive_indices"] == [int(i) for i in row["positive_indices"]]
    assert all(type(i) is int for i in task["positive_indices"])
    json.dumps(task)  # part of the cache key: must be plain JSON


def test_rows_from_pandas_give_the_same_request(row, prompts):
    import numpy as np

    as_numpy = dict(row)
    for key in ("context_names", "context_dialogues", "context_categories", "context_images"):
        as_numpy[key] = np.array(row[key], dtype=object)
    as_numpy["positive_indices"] = np.array(row["positive_indices"], dtype=np.int32)
    assert build_caption_request(as_numpy, prompts) == build_caption_request(row, prompts)


def test_diagnostic_style_row_without_names_facts_or_positives(row, prompts):
    minimal = {
        "sample_id": "lsd_0001",
        "context_images": row["context_images"][:2],
        "context_dialogues": row["context_dialogues"][:2],
        "context_names": [],
        "context_facts": "[]",
        "positive_indices": [],
        "query_image": row["query_image"],
    }
    request = build_caption_request(minimal, prompts)
    assert len(request.images) == 3
    assert request.task["context_facts"] == [] and request.task["positive_indices"] == []
    assert "Memory 2 of 2" in request.messages[0].parts[3].text


def test_image_read_from_path_when_bytes_are_absent(row, prompts, tmp_path):
    path = tmp_path / "query.png"
    path.write_bytes(row["query_image"]["bytes"])
    with_path = {**row, "query_image": {"bytes": None, "path": str(path)}}
    assert build_caption_request(with_path, prompts).images[-1].data == row["query_image"]["bytes"]


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: r.update(context_dialogues=list(r["context_dialogues"])[:-1]), "context_dialogues"),
        (lambda r: r.update(context_names=list(r["context_names"])[:-1]), "context_names"),
        (lambda r: r.update(context_facts="[[{"), "context_facts"),
        (lambda r: r.update(context_facts=json.dumps([[]])), "context_facts"),
        (lambda r: r.update(positive_indices=[99]), "positive_indices"),
        (lambda r: r.update(query_image={"bytes": None, "path": "/nonexistent/q.png"}), "query_image"),
    ],
)
def test_bad_rows_name_the_row_and_field(row, prompts, change, field):
    bad = copy.deepcopy(row)
    change(bad)
    with pytest.raises(CaptioningError) as error:
        build_caption_request(bad, prompts, where="test.parquet row 5")
    message = str(error.value)
    assert "test.parquet row 5" in message and row["sample_id"] in message and field in message


def test_corrupt_image_names_the_field(row, prompts):
    bad = copy.deepcopy(row)
    bad["context_images"][1] = {"bytes": b"not a png", "path": None}
    with pytest.raises(BadImageError, match=r"context_images'\[1\]"):
        build_caption_request(bad, prompts)


# ---------------------------------------------------------------------------------------------------
# The stage


def test_caption_rows_fit_the_schema_with_reference_policy(test_rows, prompts):
    model = ModelRegistry({"oracle": {"backend": "reference_oracle"}}).chat("oracle")
    rows = caption_samples(test_rows, "oracle", model, prompts, CaptioningSettings(), seed=3, progress_file=QUIET)
    to_table(rows, schemas.CAPTIONS, "captions")
    assert [r["sample_id"] for r in rows] == [r["sample_id"] for r in test_rows]
    assert all(r["status"] == "ok" and r["caption"] and r["error"] is None for r in rows)
    assert {r["model_identity"] for r in rows} == {"oracle:reference_oracle"}
    assert all(r["stand_in"] is True and r["policy"] == "oracle" for r in rows)
    assert all(r["completion_tokens"] == len(r["caption"].split()) for r in rows)


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain_complete", "complete_many"])
def test_failed_calls_become_failed_rows(test_rows, prompts, wrapped):
    ids = [r["sample_id"] for r in test_rows]
    scripted = ScriptedModel(fail_raise=[ids[0]], fail_error=[ids[1]])
    model = CachedChatModel(ModelSpec("policy", "transformers", "tiny"), scripted, None) if wrapped else scripted
    rows = caption_samples(test_rows, "tiny", model, prompts, CaptioningSettings(concurrency=2), seed=0, progress_file=QUIET)
    to_table(rows, schemas.CAPTIONS, "captions")
    by_id = {r["sample_id"]: r for r in rows}
    assert len(rows) == len(test_rows)
    assert by_id[ids[0]]["status"] == "failed" and by_id[ids[0]]["caption"] is None
    assert "backend exploded" in by_id[ids[0]]["error"]
    assert by_id[ids[1]]["status"] == "failed" and "HTTP 500" in by_id[ids[1]]["error"]
    ok = by_id[ids[2]]
    assert ok["status"] == "ok" and ok["error"] is None
    assert ok["caption"] == f"A caption for {ids[2]}."  # reasoning block and whitespace removed
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (321, 7)
    assert ok["stand_in"] is False
    assert ok["model_identity"] == ("policy:transformers:tiny" if wrapped else "scripted:test")


def test_failure_rate_counts_failed_calls_and_names_their_reasons(test_rows, prompts):
    ids = [r["sample_id"] for r in test_rows]
    scripted = ScriptedModel(fail_error=ids[:2])
    rows = caption_samples(test_rows, "tiny", scripted, prompts, CaptioningSettings(), seed=0, progress_file=QUIET)
    report = caption_failures(rows)
    assert (report.failed, report.total) == (2, len(test_rows))
    assert report.reasons == {"HTTP 500: server overloaded": 2}
    check_failure_rate(report, 2 / len(test_rows))  # at the limit: the stage goes on
    with pytest.raises(FailureRateExceeded, match="captions: 2 of"):
        check_failure_rate(report, 1 / len(test_rows))
    with pytest.raises(ValueError, match="captioning.max_failure_rate"):
        CaptioningSettings(max_failure_rate=1.5)


def test_requests_carry_settings_sampling_and_per_sample_seeds(test_rows, prompts):
    first, second = ScriptedModel(), ScriptedModel()
    caption_samples(test_rows, "p", first, prompts, CaptioningSettings(concurrency=1), seed=5, progress_file=QUIET)
    caption_samples(list(reversed(test_rows)), "p", second, prompts, CaptioningSettings(concurrency=1), seed=5,
                    progress_file=QUIET)
    assert all(r.sampling == {"temperature": 0.0, "max_tokens": 512} for r in first.requests)
    seeds = {r.task["sample_id"]: r.seed for r in first.requests}
    assert seeds == {r.task["sample_id"]: r.seed for r in second.requests}  # order does not matter
    assert len(set(seeds.values())) == len(seeds)
    other = ScriptedModel()
    caption_samples(test_rows[:1], "p", other, prompts, CaptioningSettings(), seed=6, progress_file=QUIET)
    assert other.requests[0].seed != seeds[test_rows[0]["sample_id"]]


def test_deterministic(test_rows, prompts):
    model = ModelRegistry({"dump": {"backend": "reference_context_dump"}}).chat("dump")
    runs = [caption_samples(test_rows, "dump", model, prompts, CaptioningSettings(), seed=1, progress_file=QUIET) for _ in range(2)]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])


def test_max_samples_and_duplicate_ids(test_rows, prompts):
    rows = caption_samples(test_rows, "p", ScriptedModel(), prompts, CaptioningSettings(max_samples=2), seed=0, progress_file=QUIET)
    assert [r["sample_id"] for r in rows] == [r["sample_id"] for r in test_rows[:2]]
    with pytest.raises(CaptioningError, match=r"row 1 field 'sample_id'.*repeats row 0"):
        caption_samples([test_rows[0], test_rows[0]], "p", ScriptedModel(), prompts, CaptioningSettings(), seed=0,
                        progress_file=QUIET)


def test_streamed_chunks_and_shards_give_the_whole_run_rows(test_rows, prompts):
    """A lazy split, captioned a chunk at a time, and its shards give the rows of one call on the whole
    list; the duplicate check spans chunks and the error names the row in the whole split."""
    strip = lambda rows: [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]  # noqa: E731
    whole = caption_samples(test_rows, "p", ScriptedModel(), prompts, CaptioningSettings(), seed=2, progress_file=QUIET)
    chunked_model = ScriptedModel()
    chunked = caption_samples(iter(test_rows), "p", chunked_model, prompts, CaptioningSettings(chunk_size=2), seed=2,
                              progress_file=QUIET)
    assert strip(chunked) == strip(whole) and len(chunked_model.requests) == len(test_rows)
    ordinals = sorted(int(r["sample_id"][1:]) for r in test_rows)
    size = max(1, (ordinals[-1] + 1) // 3)
    shards = [Shard(k, size) for k in range(ordinals[-1] // size + 1)]
    pieces = [caption_samples(iter(test_rows), "p", ScriptedModel(), prompts, CaptioningSettings(chunk_size=2), seed=2,
                              progress_file=QUIET, shard=shard) for shard in shards]
    assert sum(bool(piece) for piece in pieces) >= 2  # the split really is spread over several shards
    assert strip(sorted((r for piece in pieces for r in piece), key=lambda r: int(r["sample_id"][1:]))) == strip(
        sorted(whole, key=lambda r: int(r["sample_id"][1:])))
    # max_samples takes the first rows of the split before the shard picks its own.
    first_two = {r["sample_id"] for r in test_rows[:2]}
    limited = [caption_samples(test_rows, "p", ScriptedModel(), prompts, CaptioningSettings(max_samples=2), seed=2,
                               progress_file=QUIET, shard=shard) for shard in shards]
    assert {r["sample_id"] for piece in limited for r in piece} == first_two
    with pytest.raises(CaptioningError, match=r"row 3 field 'sample_id'.*repeats row 0"):
        caption_samples([test_rows[0], *test_rows[1:3], test_rows[0]], "p", ScriptedModel(), prompts,
                        CaptioningSettings(chunk_size=2), seed=0, progress_file=QUIET)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"max_samples": 0}, "max_samples"), ({"chunk_size": 0}, "chunk_size"), ({"concurrency": 0}, "concurrency"), ({"max_tokens": 0}, "max_tokens"),
     ({"sampling": "greedy"}, "sampling")],
)
def test_settings_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"captioning.{field}"):
        CaptioningSettings(**kwargs)


def test_clean_caption():
    assert clean_caption("<think>a\nb</think>\n The cat.") == "The cat."
    assert clean_caption("<think>never closed") == ""
    assert clean_caption(" <think>x</think> kept ", strip_thinking=False) == "<think>x</think> kept"


# ---------------------------------------------------------------------------------------------------
# Caption-augmented generation


def test_cag_request_golden_structure(row, prompts):
    caption_request = build_caption_request(row, prompts, seed=42)
    question = "Where did I last see this person? Put the place in \\boxed{}."
    cag = build_cag_request(caption_request, "Megan is at the flea market.", question, prompts=prompts)
    assert [m.role for m in cag.messages] == ["user", "assistant", "user"]
    assert cag.messages[0] == caption_request.messages[0]  # the caption turn, unchanged
    assert cag.messages[1].parts == (TextPart("Megan is at the flea market."),)
    assert cag.messages[2].parts == (TextPart(question),)  # the default wrapper is the question itself
    n = len(row["context_dialogues"])
    image_positions = [(m, i) for m, message in enumerate(cag.messages) for i, p in enumerate(message.parts) if isinstance(p, ImagePart)]
    assert image_positions == [(0, 3 * k + 1) for k in range(n)] + [(0, 3 * n + 1)]
    assert cag.sampling == CAG_SAMPLING == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5}
    assert cag.seed == 42
    assert cag.task == {**caption_request.task, "kind": "cag_answer", "caption": "Megan is at the flea market.", "question": question}
    # The caption request itself stays greedy.
    assert caption_request.sampling == {"temperature": 0.0}


def test_cag_request_options(row, prompts, tmp_path):
    caption_request = build_caption_request(row, prompts)
    cag = build_cag_request(caption_request, "c", "q?", sampling={"temperature": 0.0}, seed=7, task_extra={"task": "lsd"})
    assert cag.sampling == {"temperature": 0.0} and cag.seed == 7 and cag.task["task"] == "lsd"
    override = tmp_path / "caption.txt"
    override.write_text(prompts.source("caption").replace("[[cag_question]]\n$question", "[[cag_question]]\nQuestion: $question"))
    from covip.prompts import PromptBook

    wrapped = build_cag_request(caption_request, "c", "q?", prompts=PromptBook({"caption": str(override)}))
    assert wrapped.messages[-1].text == "Question: q?"
    with pytest.raises(ValueError, match="task kind 'caption'"):
        build_cag_request(cag, "c", "q?")
