"""GSPO rewards on golden cases (SPEC section 4): yes/no, degeneration rules on both sides of each
threshold, the caption/joint scores through a real (offline) judge and its cache. The shared metrics
(boxed index F1, caption scores) are tested in tests/core/test_metrics.py."""

import json

import pytest

from covip.clients.registry import ModelRegistry
from covip.training.rewards import (
    RewardSuite,
    completion_text,
    degeneration_reasons,
    duplicate_ngram_ratio,
    duplicate_sentence_ratio,
    is_degenerate,
    parse_yes_no,
    repeated_chunk_ratio,
    yes_no_reward,
)


# ----- vision: yes / no


@pytest.mark.parametrize(
    "text, expected",
    [("Yes", True), ("yes.", True), ("**No**", False), ("no, it is not there", False), ("YES it is", True),
     ("I think so", None), ("nothing", None), ("", None), ("Yesterday", None), ("No. Well, yes.", False)],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


@pytest.mark.parametrize(
    "completion, truth, expected",
    [("Yes.", True, 1.0), ("yes", False, 0.0), ("No", False, 1.0), ("maybe", False, 0.0),  # neither word: no reward
     (None, True, 0.0), ("", False, 0.0)],
)
def test_yes_no_reward(completion, truth, expected):
    assert yes_no_reward(completion, truth) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [("plain", "plain"), ([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], "ab"),
     ([{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "image"}, {"type": "text", "text": "y"}]}], "xy"),
     (None, ""), ([], "")],
)
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


# ----- degeneration: each rule on both sides of its threshold


def test_duplicate_sentences_threshold():
    # 10 sentences, 3 duplicates -> ratio 0.3: degenerate; 2 duplicates -> 0.2: not.
    unique = [f"sentence number {w} is here" for w in "abcdefghij"]
    at = unique[:7] + [unique[0]] * 3
    below = unique[:8] + [unique[0]] * 2
    assert duplicate_sentence_ratio(". ".join(at) + ".") == (pytest.approx(0.3), 10)
    assert "duplicate_sentences" in degeneration_reasons(". ".join(at) + ".")
    assert "duplicate_sentences" not in degeneration_reasons(". ".join(below) + ".")


def test_duplicate_sentences_needs_four_sentences():
    # 3 sentences, all the same (ratio 0.67) but fewer than 4: this rule does not fire.
    text = "A cat sits. A cat sits. A cat sits."
    assert duplicate_sentence_ratio(text)[1] == 3
    assert "duplicate_sentences" not in degeneration_reasons(text)
    assert "duplicate_sentences" in degeneration_reasons(text + " A cat sits.")


def test_case_and_whitespace_are_normalized():
    assert "duplicate_sentences" in degeneration_reasons("A Cat sits. a  cat\nsits. A CAT SITS. a cat sits.")


def _words(n, start=0):
    return [f"w{i}" for i in range(start, start + n)]


def test_duplicate_ngrams_threshold():
    # 30 distinct words followed by their first k words again: the duplicate 5-gram ratio grows with k.
    def text_with_repeat(k):
        return " ".join(_words(30) + _words(k))

    ratios = {k: duplicate_ngram_ratio(text_with_repeat(k))[0] for k in range(5, 25)}
    k_at = min(k for k, r in ratios.items() if r >= 0.3)
    assert ratios[k_at - 1] < 0.3 <= ratios[k_at]
    assert "duplicate_5grams" in degeneration_reasons(text_with_repeat(k_at))
    assert "duplicate_5grams" not in degeneration_reasons(text_with_repeat(k_at - 1))
    # k = 20: 46 five-grams of which the 16 that start in the repeat are duplicates.
    assert duplicate_ngram_ratio(text_with_repeat(20)) == (pytest.approx(16 / 46), 50)


def test_duplicate_ngrams_needs_twenty_words():
    # 19 words that are one 5-gram repeated: very repetitive but under 20 words.
    short = " ".join(["a b c d e"] * 3 + ["a b c d"])
    assert duplicate_ngram_ratio(short)[1] == 19
    assert "duplicate_5grams" not in degeneration_reasons(short)
    assert "duplicate_5grams" in degeneration_reasons(short + " e")


def _doubled(size: int, lead: int) -> str:
    """`lead` distinct words, then a segment of size + 5 distinct words, twice: 12 of the sliding
    windows of `size` words repeat (6 in each copy), out of lead + size + 11 windows."""
    segment = _words(size + 5, start=5000)
    return " ".join(_words(lead) + segment + segment)


# Sliding windows, stride 1, as the authors' test (SPEC section 4): (text, window size, expected ratio).
SLIDING_CHUNK_CASES = [
    # A repeat that starts off any multiple of the window size: the non-overlapping chunks of the old rule
    # saw none of it; the sliding windows find 12 of 60 windows repeated -> 0.2, the threshold.
    pytest.param(_doubled(10, 39), 10, 12 / 60, id="misaligned-repeat-at-threshold-10"),
    pytest.param(_doubled(10, 40), 10, 12 / 61, id="one-word-more-below-threshold-10"),
    pytest.param(_doubled(20, 29), 20, 12 / 60, id="misaligned-repeat-at-threshold-20"),
    pytest.param(_doubled(30, 19), 30, 12 / 60, id="misaligned-repeat-at-threshold-30"),
    pytest.param(_doubled(30, 20), 30, 12 / 61, id="one-word-more-below-threshold-30"),
    # X X with |X| = the window: only the two windows equal to X repeat, 2 of size + 1.
    pytest.param(" ".join(_words(10) * 2), 10, 2 / 11, id="exact-double-10"),
    pytest.param(" ".join(_words(20) * 2), 20, 2 / 21, id="exact-double-20"),
    # A short loop: every window occurs again.
    pytest.param(" ".join(["a b c"] * 20), 10, 1.0, id="loop-60-words"),
    pytest.param(" ".join(["a b c"] * 20), 30, 1.0, id="loop-60-words-window-30"),
    # Fewer than 2 x window words: no chunk of that size can repeat without overlapping itself.
    pytest.param(" ".join(["a b c"] * 6 + ["a"]), 10, 0.0, id="loop-19-words"),
    pytest.param(" ".join(["a b c"] * 19), 30, 0.0, id="loop-57-words-window-30"),
    pytest.param(" ".join(_words(100)), 10, 0.0, id="no-repeat"),
    pytest.param("", 10, 0.0, id="empty"),
]


@pytest.mark.parametrize("text, size, expected", SLIDING_CHUNK_CASES)
def test_repeated_chunk_ratio_uses_sliding_windows(text, size, expected):
    assert repeated_chunk_ratio(text, size) == pytest.approx(expected)
    fires = f"repeated_{size}_word_chunks" in degeneration_reasons(text)
    assert fires == (expected >= 0.2 - 1e-12)


def test_a_misaligned_repeat_alone_makes_a_caption_degenerate():
    # 69 words, no punctuation, duplicate 5-gram ratio 11/65 < 0.3: only the 10-word windows fire.
    assert degeneration_reasons(_doubled(10, 39)) == ["repeated_10_word_chunks"]
    assert degeneration_reasons(_doubled(10, 40)) == []


def test_normal_prose_is_not_degenerate():
    text = ("Jeffrey stands by the window of the cafe at New Ryan holding a cup of green tea, the one drink he orders. "
            "Behind him the morning light falls on a row of bicycles, and a small dog sleeps under the table.")
    assert degeneration_reasons(text) == []
    assert not is_degenerate("")


# ----- caption and joint scores


def _caption_truth():
    q = lambda text, answer: {"question": text, "options": {"A": "green tea", "B": "coffee", "C": "milk",  # noqa: E731
                                                          "D": "The answer cannot be determined"}, "answer": answer}
    return {"sample_id": "s1", "positive_indices": [0], "indices": [1],  # joint: 1-based memory numbers
            "questions": [[q("What does Jeffrey drink?", "A")] * 3, [q("What does Mara drink?", "B")] * 3]}


def test_caption_reward_through_the_judge_and_cache(tmp_path):
    # cache: true puts the offline judge behind the same SQLite cache a served judge uses.
    registry = ModelRegistry({"lexical_judge": {"backend": "local_lexical_judge", "model": "lexical-v1", "cache": True}},
                             cache_path=str(tmp_path / "cache.sqlite"))
    judge = registry.chat("lexical_judge")
    suite = RewardSuite(judge, max_tokens=10)
    truth = json.dumps(_caption_truth())
    good = "Jeffrey drinks green tea by the window."
    leaky = "Jeffrey drinks green tea and Mara drinks coffee."
    loop = " ".join(["the cat sat on the mat"] * 8)
    rewards = suite.caption(None, [good, leaky, "", loop, "short one"], ["caption"] * 4 + ["vision"], [truth] * 5,
                            completion_ids=[[0] * 5, [0] * 5, [], [0] * 5, [0] * 5])
    assert rewards[0] == pytest.approx(1.0)  # 3 positives right (3 x 1/3), negatives all D
    assert rewards[1] == pytest.approx(1.0 - 1.0)  # the negatives leak: -3/3
    assert rewards[2] == pytest.approx(0.0)  # empty caption: positives D (wrong), negatives D (fine)
    assert rewards[3] == -1.0  # degenerate
    assert rewards[4] is None  # another task's row
    over = suite.caption(None, [good], ["caption"], [truth], completion_ids=[[0] * 11])
    assert over == [-1.0]  # above the token limit
    at_limit = suite.caption(None, [good], ["caption"], [truth], completion_ids=[[0] * 10])
    assert at_limit == [pytest.approx(1.0)]
    assert judge.usage.cache_hits > 0  # the second ask of the same caption came from the cache


def test_joint_reward_adds_vision_and_caption_terms(tmp_path):
    judge = ModelRegistry({"j": {"backend": "local_lexical_judge"}}, cache_path=str(tmp_path / "c.sqlite")).chat("j")
    suite = RewardSuite(judge)
    truth = json.dumps(_caption_truth())
    [r] = suite.joint(None, [r"\boxed{[1]} Jeffrey drinks green tea by the window."], ["joint"], [truth],
                      completion_ids=[[0] * 5])
    assert r == pytest.approx(1.0 + 3.0)  # F1 1 + 3 correct positives - 0 leaks


def test_task_rewards_skip_other_rows():
    suite = RewardSuite()
    mv = json.dumps({"indices": [0, 2]})
    vis = json.dumps({"present": False})
    assert suite.multi_vision(None, [r"\boxed{[0,2]}", "No"], ["multi_vision", "vision"], [mv, vis]) == [1.0, None]
    assert suite.vision(None, [r"\boxed{[0,2]}", "No"], ["multi_vision", "vision"], [mv, vis]) == [None, 1.0]
    # Conversational completions (lists of messages) are read too.
    assert suite.vision(None, [[{"role": "assistant", "content": "yes"}]], ["vision"], [vis]) == [0.0]
    with pytest.raises(ValueError, match="unknown task"):
        suite.functions(["captions"])


# multi_vision as the authors read it: the FIRST box, concept indices counted from 0.
MULTI_VISION_CASES = [
    pytest.param(r"Answer: \boxed{[0, 2]}", [0, 2], 1.0, id="zero-based-exact"),
    pytest.param(r"\boxed{[1, 3]}", [0, 2], 0.0, id="one-based-answer-to-zero-based-truth"),
    pytest.param(r"\boxed{0}", [0], 1.0, id="single-index-first-concept"),
    pytest.param(r"\boxed{[0]} on reflection \boxed{[0, 2]}", [0, 2], 2 / 3, id="first-box-counts-not-last"),
    pytest.param(r"\boxed{[x]} then \boxed{[0, 2]}", [0, 2], 0.0, id="unreadable-first-box-not-rescued"),
    pytest.param(r"\boxed{[0, 1, 2]}", [0, 2], 0.8, id="one-extra"),
    pytest.param("no box", [0], 0.0, id="no-box"),
]


@pytest.mark.parametrize("completion, indices, expected", MULTI_VISION_CASES)
def test_multi_vision_reward_reads_the_first_box_from_zero(completion, indices, expected):
    [reward] = RewardSuite().multi_vision(None, [completion], ["multi_vision"], [json.dumps({"indices": indices})])
    assert reward == pytest.approx(expected)
