"""Stage 9: the stage's rows, failures, seeds, chunks and shards (the request layout is tested in
tests/protocol/test_requests.py)."""

from __future__ import annotations

import io

import pytest

from covip.core import schemas
from covip.clients.base import Usage
from covip.clients.cached import CachedChatModel
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.core.io import to_table
from covip.core.reliability import FailureRateExceeded, check_failure_rate
from covip.core.sharding import Shard
from covip.protocol.requests import RequestError
from covip.stages.captioning import CaptioningSettings, caption_failures, caption_samples, clean_caption
from support.fakes import scripted

QUIET = io.StringIO()


@pytest.fixture(scope="module")
def test_rows(benchmark_splits):
    return benchmark_splits[1]


def caption_reply(fail_raise=(), fail_error=()):
    """Echo the sample id (after a reasoning block, with stray spaces), or fail for chosen samples
    (raising, or returning an error)."""

    def reply(request):
        sample_id = request.task["sample_id"]
        if sample_id in fail_raise:
            return RuntimeError(f"backend exploded on {sample_id}")
        if sample_id in fail_error:
            return None
        return f"  <think>hmm</think> A caption for {sample_id}.  "

    return reply


def scripted_policy(fail_raise=(), fail_error=()):
    """(the model the stage takes, the fake that records the requests)."""
    return scripted(caption_reply(fail_raise, fail_error), error="HTTP 500: server overloaded",
                    usage=lambda text: Usage(321, 7))


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


@pytest.mark.parametrize("wrapped", [False, True], ids=["wrapped_fake", "registry_spec"])
def test_failed_calls_become_failed_rows(test_rows, prompts, wrapped):
    ids = [r["sample_id"] for r in test_rows]
    model, fake = scripted_policy(fail_raise=[ids[0]], fail_error=[ids[1]])
    if wrapped:
        model = CachedChatModel(ModelSpec("policy", "transformers", "tiny"), fake, None)
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
    model, _ = scripted_policy(fail_error=ids[:2])
    rows = caption_samples(test_rows, "tiny", model, prompts, CaptioningSettings(), seed=0, progress_file=QUIET)
    report = caption_failures(rows)
    assert (report.failed, report.total) == (2, len(test_rows))
    assert report.reasons == {"HTTP 500: server overloaded": 2}
    check_failure_rate(report, 2 / len(test_rows))  # at the limit: the stage goes on
    with pytest.raises(FailureRateExceeded, match="captions: 2 of"):
        check_failure_rate(report, 1 / len(test_rows))
    with pytest.raises(ValueError, match="captioning.max_failure_rate"):
        CaptioningSettings(max_failure_rate=1.5)


def test_requests_carry_settings_sampling_and_per_sample_seeds(test_rows, prompts):
    (first_model, first), (second_model, second) = scripted_policy(), scripted_policy()
    caption_samples(test_rows, "p", first_model, prompts, CaptioningSettings(concurrency=1), seed=5, progress_file=QUIET)
    caption_samples(list(reversed(test_rows)), "p", second_model, prompts, CaptioningSettings(concurrency=1), seed=5,
                    progress_file=QUIET)
    assert all(r.sampling == {"temperature": 0.0, "max_tokens": 1024} for r in first.requests)  # the authors' cap
    seeds = {r.task["sample_id"]: r.seed for r in first.requests}
    assert seeds == {r.task["sample_id"]: r.seed for r in second.requests}  # order does not matter
    assert len(set(seeds.values())) == len(seeds)
    other_model, other = scripted_policy()
    caption_samples(test_rows[:1], "p", other_model, prompts, CaptioningSettings(), seed=6, progress_file=QUIET)
    assert other.requests[0].seed != seeds[test_rows[0]["sample_id"]]


def test_deterministic(test_rows, prompts):
    model = ModelRegistry({"dump": {"backend": "reference_context_dump"}}).chat("dump")
    runs = [caption_samples(test_rows, "dump", model, prompts, CaptioningSettings(), seed=1, progress_file=QUIET) for _ in range(2)]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])


def test_max_samples_and_duplicate_ids(test_rows, prompts):
    rows = caption_samples(test_rows, "p", scripted_policy()[0], prompts, CaptioningSettings(max_samples=2), seed=0, progress_file=QUIET)
    assert [r["sample_id"] for r in rows] == [r["sample_id"] for r in test_rows[:2]]
    with pytest.raises(RequestError, match=r"row 1 field 'sample_id'.*repeats row 0"):
        caption_samples([test_rows[0], test_rows[0]], "p", scripted_policy()[0], prompts, CaptioningSettings(), seed=0,
                        progress_file=QUIET)


def test_streamed_chunks_and_shards_give_the_whole_run_rows(test_rows, prompts):
    """A lazy split, captioned a chunk at a time, and its shards give the rows of one call on the whole
    list; the duplicate check spans chunks and the error names the row in the whole split."""
    strip = lambda rows: [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]  # noqa: E731
    whole = caption_samples(test_rows, "p", scripted_policy()[0], prompts, CaptioningSettings(), seed=2, progress_file=QUIET)
    chunked_model, chunked_fake = scripted_policy()
    chunked = caption_samples(iter(test_rows), "p", chunked_model, prompts, CaptioningSettings(chunk_size=2), seed=2,
                              progress_file=QUIET)
    assert strip(chunked) == strip(whole) and len(chunked_fake.requests) == len(test_rows)
    ordinals = sorted(int(r["sample_id"][1:]) for r in test_rows)
    size = max(1, (ordinals[-1] + 1) // 3)
    shards = [Shard(k, size) for k in range(ordinals[-1] // size + 1)]
    pieces = [caption_samples(iter(test_rows), "p", scripted_policy()[0], prompts, CaptioningSettings(chunk_size=2), seed=2,
                              progress_file=QUIET, shard=shard) for shard in shards]
    assert sum(bool(piece) for piece in pieces) >= 2  # the split really is spread over several shards
    assert strip(sorted((r for piece in pieces for r in piece), key=lambda r: int(r["sample_id"][1:]))) == strip(
        sorted(whole, key=lambda r: int(r["sample_id"][1:])))
    # max_samples takes the first rows of the split before the shard picks its own.
    first_two = {r["sample_id"] for r in test_rows[:2]}
    limited = [caption_samples(test_rows, "p", scripted_policy()[0], prompts, CaptioningSettings(max_samples=2), seed=2,
                               progress_file=QUIET, shard=shard) for shard in shards]
    assert {r["sample_id"] for piece in limited for r in piece} == first_two
    with pytest.raises(RequestError, match=r"row 3 field 'sample_id'.*repeats row 0"):
        caption_samples([test_rows[0], *test_rows[1:3], test_rows[0]], "p", scripted_policy()[0], prompts,
                        CaptioningSettings(chunk_size=2), seed=0, progress_file=QUIET)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"max_samples": 0}, "max_samples"), ({"chunk_size": 0}, "chunk_size"), ({"concurrency": 0}, "concurrency"), ({"max_tokens": 0}, "max_tokens"),
     ({"sampling": "greedy"}, "sampling")],
)
def test_settings_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"captioning.{field}"):
        CaptioningSettings(**kwargs)


def test_settings_sampling_is_greedy_unless_set_and_caps_the_tokens():
    assert CaptioningSettings().request_sampling() == {"temperature": 0.0, "max_tokens": 1024}
    assert CaptioningSettings(sampling={"temperature": 1.0, "max_tokens": 64}).request_sampling() == {"temperature": 1.0, "max_tokens": 64}
    assert CaptioningSettings(max_tokens=None).request_sampling() == {"temperature": 0.0}


def test_clean_caption():
    assert clean_caption("<think>a\nb</think>\n The cat.") == "The cat."
    assert clean_caption("<think>never closed") == ""
    assert clean_caption(" <think>x</think> kept ", strip_thinking=False) == "<think>x</think> kept"
