"""Stage 10, CapEval-QA: per-question rows, aggregation, released format (the judge request and the
letter parser are tested in tests/protocol/test_judging.py, the captions file in tests/core/test_formats.py,
`covip score-released` in tests/core/test_cli.py)."""

import io
import json

import pytest
from support.fakes import scripted
from support.questions import question
from support.released import CAPTIONS, QAS_GT, SAMPLE_0_CAPTION

from covip.clients.registry import ModelRegistry
from covip.core import schemas
from covip.core.io import to_table
from covip.core.metrics import policy_identities_from
from covip.stages.capeval import (
    CapEvalInputError,
    CapEvalSettings,
    judge_caption_tables,
    judge_captions,
    judge_failures,
    score_released_captions,
    summarize_capeval,
)

QUIET = io.StringIO()


def scripted_judge(replies):
    """(the judge a stage takes, the fake that records what it was shown); replies come from a table
    keyed by question text, None for a failed call."""
    return scripted(lambda request: replies[request.task["question"]], "scripted:judge",
                    error="RuntimeError: server went away")


def shown(fake):
    """(question, caption, seed) of every request the judge got."""
    return [(r.task["question"], r.task["caption"], r.seed) for r in fake.requests]


def lexical_judge(**options):
    entry = {"backend": "local_lexical_judge", **({"options": options} if options else {})}
    return ModelRegistry({"judge": entry}).chat("judge")


# ---------------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    "kwargs, field",
    [({"n_bootstrap": -1}, "n_bootstrap"), ({"confidence": 1.0}, "confidence"), ({"concurrency": 0}, "concurrency"),
     ({"missing_captions": "skip"}, "missing_captions")],
)
def test_settings_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"capeval.{field}"):
        CapEvalSettings(**kwargs)


# ---------------------------------------------------------------------------------------------------
# Per-question rows and the summary, on a hand-built table


def hand_split():
    return [
        {"sample_id": "s1", "num_positives": 1, "positive_indices": [0], "context_names": ["Ann", "Bob"],
         "mcqa": [[question("Where did Ann go?", "A"), question("When did Ann go?", "B")],
                  [question("What does Bob eat?", "C"), question("What does Bob drink?", "A")]]},
        {"sample_id": "s2", "num_positives": 2, "positive_indices": [0, 2], "context_names": ["Cid", "Dee", "Eve"],
         "mcqa": [[question("Where is Cid?", "C")], [question("What is Dee doing?", "B")], [question("Who owns Eve?", "A")]]},
        {"sample_id": "s3", "num_positives": 1, "positive_indices": [1], "context_names": ["Fay", "Gus"],
         "mcqa": [[question("Where is Fay?", "A")], [question("What does Gus play?", "B")]]},
    ]


HAND_REPLIES = {  # in the form the judge prompt asks for: the letter in the first \\boxed{}
    "Where did Ann go?": "Ann went there.\nAnswer: \\boxed{A}",  # positive, right
    "When did Ann go?": "Answer: \\boxed{C}",  # positive, wrong
    "What does Bob eat?": "\\boxed{D}",  # negative, right
    "What does Bob drink?": "no idea",  # negative, unparseable -> D -> right
    "Where is Cid?": None,  # positive, judge call failed -> D -> wrong
    "What is Dee doing?": "Answer: \\boxed{B}",  # negative, wrong
    "Who owns Eve?": "Answer: \\boxed{(A)}",  # positive, right
}


def hand_captions():
    return [
        {"policy": "p", "sample_id": "s1", "caption": "Ann and a dog.", "status": "ok", "model_identity": "p:transformers:m",
         "stand_in": False},
        {"policy": "p", "sample_id": "s2", "caption": "Cid, Dee and Eve.", "status": "ok",
         "model_identity": "p:transformers:m", "stand_in": False},
        {"policy": "p", "sample_id": "s3", "caption": None, "status": "failed", "model_identity": "p:transformers:m",
         "stand_in": False},
    ]


@pytest.fixture()
def hand_answers(prompts):
    judge, fake = scripted_judge(HAND_REPLIES)
    rows = judge_captions(hand_captions(), hand_split(), judge, prompts, CapEvalSettings(), 3, "scripted", progress_file=QUIET)
    return rows, fake


def test_tables_judged_in_one_pass_equal_tables_judged_alone(prompts):
    """One complete_many for every table (what rule capeval_one_pass sends an engine), and each
    table's rows exactly those its own job gets."""
    other = [dict(row, policy="q") for row in hand_captions()]
    other[2].update(caption="Fay and Gus.", status="ok")  # q captioned s3, which p failed
    tables = [(hand_captions(), hand_split(), "p.parquet"), (other, hand_split(), "q.parquet")]
    alone = []
    for captions, split, _ in tables:
        judge, _ = scripted_judge(HAND_REPLIES | {"Where is Fay?": "\\boxed{A}", "What does Gus play?": "\\boxed{D}"})
        alone.append(judge_captions(captions, split, judge, prompts, CapEvalSettings(), 3, "scripted", progress_file=QUIET))
    judge, fake = scripted_judge(HAND_REPLIES | {"Where is Fay?": "\\boxed{A}", "What does Gus play?": "\\boxed{D}"})
    batches = []
    complete_many = judge.complete_many
    judge.complete_many = lambda requests, **kw: batches.append(len(requests)) or complete_many(requests, **kw)
    together = judge_caption_tables(tables, judge, prompts, CapEvalSettings(), 3, "scripted", progress_file=QUIET)
    assert together == alone
    assert [len(rows) for rows in together] == [9, 9] and batches == [7 + 9]
    assert {r["policy"] for r in together[1]} == {"q"} and not any(r["caption_failed"] for r in together[1])


def test_a_bad_table_is_named_before_the_judge_is_called(prompts):
    judge, fake = scripted_judge(HAND_REPLIES)
    broken = [dict(row, sample_id="nowhere") if row["sample_id"] == "s2" else row for row in hand_captions()]
    with pytest.raises(CapEvalInputError, match=r"q\.parquet row 1 .*sample_id"):
        judge_caption_tables([(hand_captions(), hand_split(), "p.parquet"), (broken, hand_split(), "q.parquet")],
                             judge, prompts, CapEvalSettings(), 3, "scripted", progress_file=QUIET)
    assert fake.requests == []


def test_hand_built_rows(hand_answers):
    rows, fake = hand_answers
    to_table(rows, schemas.CAPEVAL_ANSWERS, "answers")
    got = {(r["sample_id"], r["context_index"], r["question_id"]): r for r in rows if not r["caption_failed"]}
    assert len(rows) == 9 and len(got) == 7
    assert [(k, r["is_positive"], r["parsed"], r["unparseable"], r["correct"]) for k, r in got.items()] == [
        (("s1", 0, "Q1"), True, "A", False, True),
        (("s1", 0, "Q2"), True, "C", False, False),
        (("s1", 1, "Q1"), False, "D", False, True),
        (("s1", 1, "Q2"), False, "D", True, True),  # unparseable counts as D (the authors' rule)
        (("s2", 0, "Q1"), True, "D", True, False),  # judge failure: D, flagged, no raw answer
        (("s2", 1, "Q1"), False, "B", False, False),
        (("s2", 2, "Q1"), True, "A", False, True),
    ]
    assert got[("s2", 0, "Q1")]["raw_answer"] is None
    assert got[("s1", 1, "Q2")]["raw_answer"] == "no idea"
    assert {r["judge"] for r in rows} == {"scripted"} and {r["judge_identity"] for r in rows} == {"scripted:judge"}
    assert not any(r["stand_in"] for r in rows)
    # The failed caption's questions were never asked: failed rows, no letter, no score.
    captions = {q: caption for q, caption, _ in shown(fake)}
    assert "Where is Fay?" not in captions and captions["Where did Ann go?"] == "Ann and a dog."
    failed = [r for r in rows if r["caption_failed"]]
    assert [(r["sample_id"], r["parsed"], r["correct"], r["raw_answer"], r["unparseable"]) for r in failed] == \
        [("s3", None, None, None, False)] * 2
    assert len({seed for _, _, seed in shown(fake)}) == 7  # every asked question had its own seed


def test_hand_built_summary(hand_answers):
    rows, _ = hand_answers
    summary = summarize_capeval(rows, n_bootstrap=200, seed=0, policy_identities=policy_identities_from(hand_captions()))
    to_table(summary, schemas.CAPEVAL_SUMMARY, "summary")
    by_count = {r["num_positives"]: r for r in summary}
    assert sorted(by_count) == [0, 1, 2]
    expected = {  # count: (acc+, acc-, n+, n-, unparseable, judge failed, captions failed), by hand from HAND_REPLIES
        1: (50.0, 100.0, 2, 2, 1, 0, 1),  # s3's failed caption is counted, not scored
        2: (50.0, 0.0, 2, 1, 1, 1, 0),
        0: (50.0, 200.0 / 3.0, 4, 3, 2, 1, 1),
    }
    for count, (acc_pos, acc_neg, n_pos, n_neg, unparseable, failed, captions_failed) in expected.items():
        row = by_count[count]
        assert row["acc_pos"] == pytest.approx(acc_pos) and row["acc_neg"] == pytest.approx(acc_neg)
        assert (row["n_pos_questions"], row["n_neg_questions"]) == (n_pos, n_neg)
        assert (row["n_unparseable"], row["n_judge_failed"], row["n_caption_failed"]) == (unparseable, failed, captions_failed)
        assert row["policy_identity"] == "p:transformers:m" and row["judge_identity"] == "scripted:judge"
        assert row["stand_in"] is False
    # One sample per count: the resampled sample is always the same one, so the interval is a point.
    assert (by_count[1]["acc_pos_low"], by_count[1]["acc_pos_high"]) == (50.0, 50.0)
    assert by_count[2]["acc_neg_low"] == by_count[2]["acc_neg_high"] == 0.0


def synthetic_answers(n_samples, policy="p", stand_in=False):
    """Sample i: 3 positive questions, the first i % 4 of them right; 3 negatives, the first (i + 1) % 4 right."""
    rows = []
    for i in range(n_samples):
        for j in range(6):
            positive = j < 3
            correct = (j < i % 4) if positive else (j - 3 < (i + 1) % 4)
            rows.append({
                "policy": policy, "judge": "j", "sample_id": f"s{i:04d}", "num_positives": 1 + i % 2,
                "context_index": j, "question_id": "Q1", "is_positive": positive, "answer": "A",
                "raw_answer": "A", "parsed": "A" if correct == positive else "D", "unparseable": False,
                "correct": correct, "judge_identity": "j:local_lexical_judge", "stand_in": stand_in,
            })
    return rows


def test_bootstrap_interval_contains_estimate_and_shrinks_with_more_samples():
    small = {r["num_positives"]: r for r in summarize_capeval(synthetic_answers(20), 500, seed=1)}
    large = {r["num_positives"]: r for r in summarize_capeval(synthetic_answers(320), 500, seed=1)}
    for summary in (small, large):
        for row in summary.values():
            assert row["acc_pos_low"] <= row["acc_pos"] <= row["acc_pos_high"]
            assert row["acc_neg_low"] <= row["acc_neg"] <= row["acc_neg_high"]
            assert row["acc_pos_low"] < row["acc_pos_high"]  # samples differ, so the interval is not a point
    # Same per-sample pattern, 16x the samples: the interval is about 4x narrower.
    assert small[0]["acc_pos"] == pytest.approx(large[0]["acc_pos"])
    small_width = small[0]["acc_pos_high"] - small[0]["acc_pos_low"]
    large_width = large[0]["acc_pos_high"] - large[0]["acc_pos_low"]
    assert large_width < small_width / 2.5


def test_bootstrap_is_seeded_and_optional():
    rows = synthetic_answers(40)
    assert summarize_capeval(rows, 300, seed=4) == summarize_capeval(rows, 300, seed=4)
    assert summarize_capeval(rows, 300, seed=4) != summarize_capeval(rows, 300, seed=5)  # the draws follow the seed
    none = summarize_capeval(rows, 0, seed=4)
    assert all(r["acc_pos_low"] is None and r["acc_neg_high"] is None for r in none)
    assert [r["acc_pos"] for r in none] == [r["acc_pos"] for r in summarize_capeval(rows, 300, seed=4)]


def test_summary_groups_policies_and_marks_stand_ins():
    rows = synthetic_answers(8, policy="a") + synthetic_answers(8, policy="b", stand_in=True)
    summary = summarize_capeval(rows, 50, seed=0)
    assert [(r["policy"], r["num_positives"]) for r in summary] == [("a", 1), ("a", 2), ("a", 0), ("b", 1), ("b", 2), ("b", 0)]
    assert {r["policy"]: r["stand_in"] for r in summary} == {"a": False, "b": True}
    assert {r["policy_identity"] for r in summary} == {"a", "b"}  # no identities given: the names


def test_summary_rejects_inconsistent_rows():
    rows = synthetic_answers(2)
    rows[1] = dict(rows[1], num_positives=4)
    with pytest.raises(CapEvalInputError, match="num_positives"):
        summarize_capeval(rows, 10, 0)
    rows = synthetic_answers(2)
    rows[3] = dict(rows[3], judge_identity="other")
    with pytest.raises(CapEvalInputError, match="two identities"):
        summarize_capeval(rows, 10, 0)


# ---------------------------------------------------------------------------------------------------
# Input checks


def test_missing_unknown_and_duplicate_captions(prompts):
    judge, _ = scripted_judge(HAND_REPLIES)
    only_s1 = hand_captions()[:1]
    with pytest.raises(CapEvalInputError, match=r"policy 'p' has no caption for 2 of 3 samples.*\['s2', 's3'\]"):
        judge_captions(only_s1, hand_split(), judge, prompts, CapEvalSettings(), 0, "j")
    rows = judge_captions(only_s1, hand_split(), judge, prompts, CapEvalSettings(missing_captions="ignore"), 0, "j",
                          progress_file=QUIET)
    assert {r["sample_id"] for r in rows} == {"s1"} and len(rows) == 4
    with pytest.raises(CapEvalInputError, match=r"row 3 .*sample_id=s9.*no such sample"):
        judge_captions(hand_captions() + [dict(hand_captions()[0], sample_id="s9")], hand_split(), judge, prompts,
                       CapEvalSettings(), 0, "j")
    with pytest.raises(CapEvalInputError, match="second caption"):
        judge_captions(hand_captions() + hand_captions()[:1], hand_split(), judge, prompts, CapEvalSettings(), 0, "j")


def test_bad_split_rows_are_named(prompts):
    split = hand_split()
    split[1]["mcqa"][2][0]["answer"] = "E"
    with pytest.raises(CapEvalInputError, match=r"test split row 1 \(sample_id=s2\) field 'mcqa'\[2\]\[0\] field 'answer'"):
        judge_captions(hand_captions(), split, scripted_judge(HAND_REPLIES)[0], prompts, CapEvalSettings(), 0, "j")
    split = hand_split()
    split[0]["positive_indices"] = [5]
    with pytest.raises(CapEvalInputError, match="positive_indices"):
        judge_captions(hand_captions(), split, scripted_judge(HAND_REPLIES)[0], prompts, CapEvalSettings(), 0, "j")


def test_lexical_judge_rows_are_stand_in_and_failures_are_counted(prompts):
    judge = lexical_judge(error_rate=0.3, garble_rate=0.2)
    rows = judge_captions(hand_captions(), hand_split(), judge, prompts, CapEvalSettings(), 0, "lexical",
                          progress_file=QUIET)
    assert all(r["stand_in"] for r in rows) and {r["judge_identity"] for r in rows} == {"judge:local_lexical_judge"}
    failed = [r for r in rows if r["raw_answer"] is None and not r["caption_failed"]]
    assert failed and all(r["unparseable"] and r["parsed"] == "D" for r in failed)
    pooled = [r for r in summarize_capeval(rows, 0, 0) if r["num_positives"] == 0][0]
    assert pooled["n_judge_failed"] == len(failed) and pooled["n_unparseable"] >= len(failed)
    assert judge.usage.failures == len(failed)


# ---------------------------------------------------------------------------------------------------
# Released format

def test_score_released_fixture_by_hand(prompts):
    answers, summary = score_released_captions(CAPTIONS, QAS_GT, lexical_judge(), prompts, CapEvalSettings(n_bootstrap=100),
                                               0, "mine", progress_file=QUIET)
    to_table(answers, schemas.CAPEVAL_ANSWERS, "answers")
    to_table(summary, schemas.CAPEVAL_SUMMARY, "summary")
    letters = {(r["sample_id"], r["context_index"]): [] for r in answers}
    for r in answers:
        letters[(r["sample_id"], r["context_index"])].append(r["parsed"])
    assert letters[("sample_0", 0)] == ["B", "A", "A"]  # Seth (positive): every fact stated -> every answer right
    assert letters[("sample_0", 1)] == letters[("sample_0", 2)] == ["D"] * 3  # Matthew, Judy: never mentioned
    assert all(letters[("sample_1", k)] == ["D"] * 3 for k in range(3))  # a caption with no memories at all
    assert letters[("sample_2", 0)] == ["A", "C", "D"]  # Johnny (negative) dragged in: two negatives lost
    assert letters[("sample_2", 2)] == ["D"] * 3  # Ellen (positive) never named
    assert {r["question_id"] for r in answers} == {"Q1", "Q2", "Q3"}
    assert len(answers) == 27 and not any(r["unparseable"] for r in answers)
    pooled = [r for r in summary if r["num_positives"] == 0][0]
    assert [r["num_positives"] for r in summary] == [1, 0]  # every released sample here has one positive
    assert pooled["acc_pos"] == pytest.approx(100.0 * 3 / 9)
    assert pooled["acc_neg"] == pytest.approx(100.0 * 16 / 18)
    assert pooled["policy"] == "mine" and pooled["policy_identity"] == "mine" and pooled["stand_in"] is True


def test_released_caption_keys_must_match(prompts):
    with pytest.raises(CapEvalInputError, match=r"not in the ground truth.*\['0'\].*sample_0"):
        score_released_captions({"0": "x"}, QAS_GT, lexical_judge(), prompts, CapEvalSettings(), 0, "mine")
    with pytest.raises(CapEvalInputError, match="has no caption for 2 of 3"):
        score_released_captions({"sample_0": "x"}, QAS_GT, lexical_judge(), prompts, CapEvalSettings(), 0, "mine")
    answers, summary = score_released_captions({"sample_0": None}, QAS_GT, lexical_judge(), prompts,
                                               CapEvalSettings(missing_captions="ignore", n_bootstrap=0), 0, "mine",
                                               progress_file=QUIET)
    assert len(answers) == 9 and all(r["caption_failed"] and r["parsed"] is None for r in answers)  # never scored
    to_table(answers, schemas.CAPEVAL_ANSWERS, "answers")
    pooled = next(r for r in summary if r["num_positives"] == 0)
    assert pooled["n_caption_failed"] == 1 and pooled["acc_pos"] is None and pooled["n_pos_questions"] == 0
    assert judge_failures(answers).total == 0  # a failed caption is not a judge failure


# ---------------------------------------------------------------------------------------------------
# The metric ordering on a real (small) benchmark


def simple_captions(test_rows):
    """Oracle / context-dump / blind captions written here, from the split's stored facts and dialogues."""
    rows = []
    for row in test_rows:
        facts = json.loads(row["context_facts"])
        names = list(row["context_names"])
        positives = list(row["positive_indices"])
        oracle = " ".join(f"{names[k]} {fact['text']}." for k in positives for fact in facts[k])
        dump = "\n\n".join(row["context_dialogues"])
        blind = f"The photo shows {len(positives)} subject(s) together in one scene."
        for policy, caption in (("oracle", oracle), ("context_dump", dump), ("blind", blind)):
            rows.append({"policy": policy, "sample_id": row["sample_id"], "caption": caption, "status": "ok",
                         "model_identity": f"{policy}:test", "stand_in": True})
    return rows


def reference_policy_captions(test_rows, prompts):
    from covip.stages.captioning import CaptioningSettings, caption_samples
    registry = ModelRegistry({"oracle": {"backend": "reference_oracle"}, "context_dump": {"backend": "reference_context_dump"},
                              "blind": {"backend": "reference_blind"}})
    rows = []
    for policy in ("oracle", "context_dump", "blind"):
        rows += caption_samples(test_rows, policy, registry.chat(policy), prompts, CaptioningSettings(), 0, progress_file=QUIET)
    return rows


def check_ordering(summary):
    pooled = {r["policy"]: r for r in summary if r["num_positives"] == 0}
    oracle, dump, blind = pooled["oracle"], pooled["context_dump"], pooled["blind"]
    assert oracle["acc_pos"] >= 80 and oracle["acc_neg"] >= 90
    assert dump["acc_pos"] >= 80 and dump["acc_neg"] <= oracle["acc_neg"] - 20
    assert blind["acc_pos"] <= 10 and blind["acc_neg"] >= 95
    assert all(r["stand_in"] for r in summary)


@pytest.mark.parametrize("source", ["simple", "reference_policies"])
def test_metric_ordering_on_benchmark(benchmark_splits, prompts, source):
    _, test_rows = benchmark_splits
    assert len(test_rows) >= 4 and {len(r["positive_indices"]) for r in test_rows} - {1, 2, 3, 4} == set()
    captions = simple_captions(test_rows) if source == "simple" else reference_policy_captions(test_rows, prompts)
    answers = judge_captions(captions, test_rows, lexical_judge(answer_style="varied"), prompts, CapEvalSettings(), 11,
                             "lexical", progress_file=QUIET)
    assert not any(r["unparseable"] for r in answers)  # every varied reply form was read
    summary = summarize_capeval(answers, 200, 11, policy_identities=policy_identities_from(captions))
    to_table(summary, schemas.CAPEVAL_SUMMARY, "summary")
    check_ordering(summary)
    counts = {r["num_positives"] for r in summary}
    assert counts == {r["num_positives"] for r in test_rows} | {0}


# ---------------------------------------------------------------------------------------------------
# A real judge model (slow)


@pytest.mark.integration
def test_real_judge_through_llama_server(llama_server, prompts, tmp_path):
    """Gemma 3 270M is too small to judge well; what is checked is the plumbing: sampled, seeded requests
    answered by a real server, every row valid, and a rerun served from the cache with the same answers."""
    entry = {"backend": "openai", "model": "gemma-3-270m", "base_url": llama_server, "concurrency": 2, "max_retries": 1,
             "sampling": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 8}}
    cache = str(tmp_path / "cache.sqlite")
    captions = {"sample_0": SAMPLE_0_CAPTION}
    settings = CapEvalSettings(missing_captions="ignore", n_bootstrap=20)
    judge = ModelRegistry({"judge": entry}, cache_path=cache).chat("judge")
    answers, summary = score_released_captions(captions, QAS_GT, judge, prompts, settings, 0, "mine", progress_file=QUIET)
    to_table(answers, schemas.CAPEVAL_ANSWERS, "answers")
    assert len(answers) == 9 and all(r["raw_answer"] is not None for r in answers)
    assert all(r["parsed"] in "ABCD" for r in answers) and not any(r["stand_in"] for r in answers)
    again = ModelRegistry({"judge": entry}, cache_path=cache).chat("judge")
    answers2, _ = score_released_captions(captions, QAS_GT, again, prompts, settings, 0, "mine", progress_file=QUIET)
    assert [r["raw_answer"] for r in answers2] == [r["raw_answer"] for r in answers]
    assert again.usage.cache_hits == 9
