"""The measurement protocol (docs/protocol.md): every setting that moves a number, on a constructed
example whose score changes when the setting flips; and the top-level `protocol` key that sets the
switches at once.

Each row of CASES is one row of the protocol table with a setting: the setting, two of its values,
and the score of the same constructed example under each. Every protocol switch
(`covip.core.presets.SWITCHES`) must have a row, and its `default` and `authors-code` values must be
the two values the row compares.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
from PIL import Image

from covip.clients.base import TextPart
from covip.clients.registry import ModelRegistry
from covip.config.protocol import ProtocolError, apply_protocol
from covip.core.io import encode_png
from covip.core.presets import AUTHORS_CODE, DEFAULT_PROTOCOL, PROTOCOLS, SWITCHES, preset
from covip.prompts import PromptBook
from covip.stages.capeval import CapEvalSettings, judge_captions, summarize_capeval
from covip.stages.captioning import CaptioningSettings, caption_samples
from covip.stages.diagnostics.scoring import score_diagnostics
from covip.stages.diagnostics.settings import DiagnosticSettings
from support.fakes import scripted
from support.questions import options, question
from support.workflow import validated_config

ROOT = Path(__file__).resolve().parents[2]
QUIET = io.StringIO()
PNG = encode_png(Image.new("RGB", (8, 8), "teal"))
PROMPTS = PromptBook()


# ---------------------------------------------------------------------------------------------------
# Constructed examples

# One sample: Ann (in the photo) and Bob (not in it), one question each.
SPLIT = [{
    "sample_id": "s1", "num_positives": 1, "positive_indices": [0], "context_names": ["Ann", "Bob"],
    "context_images": [], "query_image": {"bytes": PNG, "path": None},
    "context_dialogues": ["User: Ann went to Paris last spring.\nModel: Lovely.",
                          "User: Bob drinks green tea every morning.\nModel: Noted."],
    "mcqa": [[question("Where did Ann go?", "B", options("Rome", "Paris", "Oslo"))],
             [question("What does Bob drink?", "A", options("Green tea", "Coffee", "Milk"))]],
}]


def capeval_of(captions, judge_reply=None, **settings) -> dict:
    """Acc+ and Acc- (pooled) of captions {sample_id: text}, judged by the lexical judge, or by a scripted
    judge whose reply to a question is `judge_reply(question)` (None: a failed call)."""
    if judge_reply is None:
        judge = ModelRegistry({"judge": {"backend": "local_lexical_judge"}}).chat("judge")
    else:
        judge, _ = scripted(lambda request: judge_reply(request.task["question"]))
    rows = [{"policy": "p", "sample_id": sample_id, "caption": text, "status": "ok"} for sample_id, text in captions.items()]
    split = SPLIT if set(captions) == {"s1"} else SPLIT + [{**SPLIT[0], "sample_id": "s2"}]
    cap_settings = CapEvalSettings(n_bootstrap=0, **settings)
    answers = judge_captions(rows, split, judge, PROMPTS, cap_settings, 0, "j", progress_file=QUIET)
    pooled = next(r for r in summarize_capeval(answers, 0, failed_calls=cap_settings.failed_calls) if r["num_positives"] == 0)
    return {"acc_pos": pooled["acc_pos"], "acc_neg": pooled["acc_neg"]}


def truncated_captions(value):
    # The caption was cut off at the token cap, after what it says about Ann.
    rows = [{"policy": "p", "sample_id": "s1", "caption": "Ann went to Paris and", "status": "truncated"}]
    judge = ModelRegistry({"judge": {"backend": "local_lexical_judge"}}).chat("judge")
    answers = judge_captions(rows, SPLIT, judge, PROMPTS, CapEvalSettings(n_bootstrap=0, truncated_captions=value), 0,
                             "j", progress_file=QUIET)
    return next(r for r in summarize_capeval(answers, 0) if r["num_positives"] == 0)["acc_pos"]


def letter_match(value, reply):
    return capeval_of({"s1": "Ann went to Paris."}, lambda q: reply, letter_match=value)["acc_pos"]


def failed_calls(value):
    # Two samples, every answer right, except that one judge call about s2 failed.
    replies = {"Where did Ann go?": "Answer: \\boxed{B}", "What does Bob drink?": "Answer: \\boxed{D}"}
    calls = iter(range(100))

    def reply(q):
        return None if (q == "Where did Ann go?" and next(calls) == 1) else replies[q]
    return capeval_of({"s1": "Ann went to Paris.", "s2": "Ann went to Paris."}, reply, failed_calls=value)["acc_pos"]


def captioned(reply, **settings) -> dict:
    """Acc+ and Acc- of the captions a scripted policy writes (`reply(request)`), lexical judge."""
    policy, _ = scripted(reply)
    rows = caption_samples(SPLIT, "p", policy, PROMPTS, CaptioningSettings(**settings), 0, progress_file=QUIET)
    return capeval_of({row["sample_id"]: row["caption"] for row in rows})


def by_number(request):
    """A policy that copies the dialogue headed 'Dialogue 1', as one trained on the 1-based layout recalls
    'the first memory'."""
    texts = [p.text for p in request.messages[-1].parts if isinstance(p, TextPart) and not p.text.startswith("Picture")]
    return texts[texts.index("=== Dialogue 1 ===\n") + 1]


def layout(value):
    return captioned(by_number, layout=value)["acc_pos"]


def strip_thinking(value):
    return captioned(lambda request: "<think>Bob drinks green tea.</think> Ann went to Paris.",
                     strip_thinking=value)["acc_neg"]


def diagnostic(task, response, judge_reply=None, **settings) -> float:
    item = {"sample_id": f"{task}0", "task": task, "question": "Q?", "target_index": 0,
            "answer": {"lsd": "Ryan Park", "lar": "return the books", "itr": "SKS"}[task],
            "last_action": "After that I need to return the books." if task == "lar" else None}
    row = {"policy": "p", "task": task, "mode": "direct", "sample_id": item["sample_id"], "caption": None,
           "response": response, "extracted": None, "score": None, "scorer": "", "model_identity": "m",
           "stand_in": False, "status": "ok", "error": None}
    judge = scripted(lambda request: judge_reply)[0] if judge_reply is not None else None
    (scored,) = score_diagnostics([row], [item], judge=judge, prompts=PROMPTS, settings=DiagnosticSettings(**settings))
    return scored["score"]


# (row of docs/protocol.md, setting, value A, value B, score under A, score under B, the score's function)
CASES = [
    ("CapEval-QA letter: one letter in the first box, or the expected letter in its text",
     "capeval.letter_match", "exact", "substring", 0.0, 100.0, lambda v: letter_match(v, "Answer: \\boxed{B. Paris}")),
    ("CapEval-QA letter: a reply without a box (a bare-letter judge prompt)",
     "capeval.letter_match", "exact", "lenient", 0.0, 100.0, lambda v: letter_match(v, "B")),
    ("CapEval-QA failed judge call: D, or the sample left out",
     "capeval.failed_calls", "as_d", "drop_sample", 50.0, 100.0, failed_calls),
    ("CapEval-QA caption cut off at the token cap: not judged, or judged as written",
     "capeval.truncated_captions", "fail", "judge", None, 100.0, truncated_captions),
    ("Caption layout: dialogues numbered from 1 with a blank line, or from 0 (the test notebook)",
     "captioning.layout", "training", "test_notebook", 100.0, 0.0, layout),
    ("Caption reasoning blocks removed before judging, or kept",
     "captioning.strip_thinking", True, False, 100.0, 0.0, strip_thinking),
    ("LSD box asked for and read: \\boxed (and //boxed), or the authors' //boxed reading",
     "diagnostics.lsd_box", "latex", "slashes", 1.0, 0.0, lambda v: diagnostic("lsd", "So: \\boxed{Ryan Park}", lsd_box=v)),
    ("LSD F1 tokens: whitespace split (punctuation kept), or words",
     "diagnostics.lsd_tokens", "whitespace", "words", 0.5, 1.0, lambda v: diagnostic("lsd", "\\boxed{Ryan Park.}", lsd_tokens=v)),
    ("LAR verdict: the leading Correct/Wrong, or 'correct' anywhere",
     "diagnostics.lar_verdict", "strict", "substring", 0.0, 1.0,
     lambda v: diagnostic("lar", "You had to buy milk.", "Incorrect", lar_verdict=v)),
    ("ITR keyword: case-sensitive substring, or a whole word in any case",
     "diagnostics.itr_match", "substring", "word", 0.0, 1.0, lambda v: diagnostic("itr", "Remember: sks!", itr_match=v)),
]


@pytest.mark.parametrize("row, setting, a, b, score_a, score_b, score", CASES, ids=[c[0] for c in CASES])
def test_flipping_the_setting_changes_the_score(row, setting, a, b, score_a, score_b, score):
    assert (score(a), score(b)) == (score_a, score_b)


def test_every_protocol_switch_has_a_case_comparing_its_two_protocols():
    for switch in SWITCHES:
        values = {switch.value(protocol) for protocol in PROTOCOLS}
        assert any(case[1] == switch.name and {case[2], case[3]} == values for case in CASES), switch.name


def test_docs_protocol_table_names_every_setting_and_protocol():
    text = (ROOT / "docs" / "protocol.md").read_text()
    for case in CASES:
        assert f"`{case[1]}`" in text, case[1]
    for protocol in PROTOCOLS:
        assert f"`{protocol}`" in text
    assert "## Data construction and GSPO training" in text


# ---------------------------------------------------------------------------------------------------
# The `protocol` key


def test_presets_and_null_settings():
    assert preset("capeval", "letter_match") == "exact" and preset("capeval", "letter_match", AUTHORS_CODE) == "substring"
    # A setting left null resolves to the default protocol's value when no workflow filled it in.
    assert CapEvalSettings().letter_match == "exact" and CaptioningSettings().layout == "training"
    assert DiagnosticSettings().lsd_box == "latex" and DiagnosticSettings().lar_verdict == "strict"
    with pytest.raises(ValueError, match="capeval.letter_match must be one of"):
        CapEvalSettings(letter_match="fuzzy")
    with pytest.raises(ValueError, match="protocol must be one of"):
        preset("capeval", "letter_match", "mine")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_protocol_key_sets_every_switch(protocol):
    config = {"protocol": protocol, "capeval": {"letter_match": None}, "diagnostics": {}}
    choice = apply_protocol(config)
    assert choice.name == protocol and choice.comparable and choice.label == protocol
    for switch in SWITCHES:
        assert config[switch.section][switch.key] == switch.value(protocol)


def test_a_deviating_switch_or_prompt_makes_the_protocol_custom():
    choice = apply_protocol({"protocol": AUTHORS_CODE, "capeval": {"letter_match": "exact"}})
    assert not choice.comparable and choice.label == "custom (authors-code with capeval.letter_match='exact')"
    same = apply_protocol({"protocol": AUTHORS_CODE, "capeval": {"letter_match": "substring"}})
    assert same.comparable  # setting a switch to the protocol's own value is no deviation
    prompt = apply_protocol({"prompts": {"capeval_judge": "mine.txt", "dialogue_writer": "w.txt"}})
    assert prompt.label == "custom (default with prompts.capeval_judge)"
    assert apply_protocol({}).label == DEFAULT_PROTOCOL
    with pytest.raises(ProtocolError, match="not a protocol"):
        apply_protocol({"protocol": "mine"})


@pytest.fixture(scope="module")
def default_config():
    return validated_config()


def test_prepare_applies_the_protocol_at_parse_time(default_config):
    from covip.config.prepare import prepare

    assert prepare(copy.deepcopy(default_config), ROOT).protocol.label == "default"
    config = copy.deepcopy(default_config)
    config["protocol"] = AUTHORS_CODE
    prepared = prepare(config, ROOT)
    assert prepared.protocol.label == AUTHORS_CODE and prepared.protocol.comparable
    assert config["capeval"]["letter_match"] == "substring" and config["diagnostics"]["lsd_box"] == "slashes"
    assert config["captioning"]["layout"] == "test_notebook" and config["captioning"]["strip_thinking"] is False
    config = copy.deepcopy(default_config)
    config["capeval"]["letter_match"] = "typo"
    with pytest.raises(ValueError, match="capeval.letter_match must be one of"):
        prepare(config, ROOT)


def test_the_schema_refuses_an_unknown_protocol(default_config):
    from snakemake.utils import validate

    config = copy.deepcopy(default_config)
    config["protocol"] = "mine"
    with pytest.raises(Exception, match="mine"):
        validate(config, str(ROOT / "config" / "schemas" / "config.schema.yaml"))
