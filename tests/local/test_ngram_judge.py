"""The n-gram stand-in judge: a different decision rule from the lexical judge, still a letter or D."""

from __future__ import annotations

import pytest

from covip.clients.base import ChatRequest, Message
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.local.ngram_judge import NgramJudge, ngram_choice

OPTIONS = {"A": "At the harbour market", "B": "In the botanical garden", "C": "On the mountain railway",
           "D": "The answer cannot be determined"}
QUESTION = "Where did the user meet Ottilie?"


def test_picks_the_option_the_caption_states():
    caption = "Ottilie is sitting on a bench. You met Ottilie in the botanical garden last spring."
    assert ngram_choice(caption, QUESTION, OPTIONS, 0.3, 0.05) == "B"


def test_abstains_when_the_caption_says_nothing_relevant():
    assert ngram_choice("Two dogs run across a field.", QUESTION, OPTIONS, 0.3, 0.05) == "D"
    assert ngram_choice("", QUESTION, OPTIONS, 0.3, 0.05) == "D"


def test_differs_from_the_lexical_rule_without_a_name_gate():
    # The fact is stated about someone else; the lexical judge answers D (Ottilie is not named),
    # the n-gram judge has no name gate and follows the shared wording.
    from covip.local.lexical_judge import lexical_choice

    caption = "You met Bruno in the botanical garden last spring."
    assert lexical_choice(caption, QUESTION, OPTIONS, 0.6) == "D"
    assert ngram_choice(caption, QUESTION, OPTIONS, 0.3, 0.05) == "B"


def test_serves_capeval_requests_through_the_registry():
    judge = ModelRegistry({"ngram": {"backend": "local_ngram_judge"}}).chat("ngram")
    request = ChatRequest((Message.user("prompt"),), task={"kind": "capeval", "caption": "You met Ottilie in the botanical garden.",
                                                           "question": QUESTION, "options": OPTIONS})
    assert judge.complete(request).text == "Answer: \\boxed{B}"  # the judge prompt's answer line
    refused = judge.complete(ChatRequest((Message.user("x"),), task={"kind": "lar_judge"}))
    assert not refused.ok and "capeval" in refused.error  # recorded as a failed call, never a letter
    with pytest.raises(ValueError, match="threshold"):
        NgramJudge(ModelSpec.from_config("ngram", {"backend": "local_ngram_judge", "options": {"threshold": 2}}))
