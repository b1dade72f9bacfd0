"""Rendered prompts are pinned: an accidental change to a template or a request builder shows up here.

After an intended change, regenerate with `COVIP_UPDATE_SNAPSHOTS=1 python -m pytest tests/stages/test_prompt_snapshots.py`
and review the diff of tests/snapshots/.
"""

import os
import re
from pathlib import Path

import pytest
from PIL import Image

from covip.clients.base import ImagePart
from covip.core.io import encode_png
from covip.core.names import DIAGNOSTIC_TASKS
from covip.prompts import PromptBook, available_prompts
from covip.protocol.judging import build_judge_request, build_lar_judge_request
from covip.protocol.requests import build_cag_request, build_caption_request, build_direct_request, diagnostic_system
from covip.stages.capeval import CapEvalSettings, judge_captions
from covip.stages.dialogues import DialogueSettings, write_dialogues
from covip.stages.filtering import build_fidelity_request
from covip.stages.mcqa import MCQASettings, write_mcqas
from covip.stages.synthesis import render_instruction
from support.fakes import scripted

SNAPSHOTS = Path(__file__).resolve().parents[1] / "snapshots"
PNG = encode_png(Image.new("RGBA", (8, 8), "teal"))


def concept(concept_id, name, category):
    return {"concept_id": concept_id, "category": category, "kind": "k", "source": "s", "name": name,
            "image": PNG, "width": 8, "height": 8}


def recorder():
    """(a model a stage takes, the fake that records its requests); every answer is a useless 'no'."""
    return scripted(lambda request: "no", "recorder", model="recorder")


def show(request) -> str:
    lines = []
    for message in request.messages:
        lines.append(f"--- {message.role}")
        for part in message.parts:
            lines.append("<image>" if isinstance(part, ImagePart) else part.text)
    return "\n".join(lines) + "\n"


def check(name: str, text: str):
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("COVIP_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert path.exists(), f"missing snapshot {path}; run with COVIP_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(), f"prompt '{name}' changed; review and update the snapshot"


CONCEPTS = [concept("c1", "Odalys", "animal"), concept("c2", "Bertram", "object")]


def test_query_synthesis_prompt():
    check("query_synthesis", render_instruction(PromptBook(), CONCEPTS, 320) + "\n")


def test_visual_fidelity_prompt():
    check("visual_fidelity", show(build_fidelity_request(PromptBook(), CONCEPTS, PNG)))


@pytest.fixture(scope="module")
def dialogue_requests():
    model, fake = recorder()
    contexts = [{"sample_id": "s0", "context_concept_ids": ["c1"], "positive_indices": [0],
                 "negative_concept_ids": [], "negative_similarity": [], "embedder": "e"}]
    write_dialogues(contexts, CONCEPTS, model, PromptBook(), DialogueSettings(max_attempts=2), seed=1)
    return fake.requests


def test_dialogue_prompts(dialogue_requests):
    assert len(dialogue_requests) == 2  # the first ask and one repair
    check("dialogue_writer", show(dialogue_requests[0]))
    check("dialogue_repair", show(dialogue_requests[1]))


def test_caption_and_cag_prompts(benchmark_splits):
    sample = benchmark_splits[1][0]
    request = build_caption_request(sample, PromptBook())
    check("caption", show(request))
    cag = build_cag_request(request, "A caption.", "Where did I last see this person?",
                            system=diagnostic_system("lsd", "cag", PromptBook()), prompts=PromptBook())
    assert [m.role for m in cag.messages] == ["system", "user", "assistant", "user"]
    check("cag_question", show(cag).split("--- assistant", 1)[1])


def test_capeval_judge_prompt():
    question = {"question": "When did the user take Odalys to the park?",
                "options": {"A": "Last weekend", "B": "Last Monday", "C": "Last summer",
                            "D": "The answer cannot be determined"}}
    check("capeval_judge", show(build_judge_request("Odalys naps in the sun.", question, PromptBook(), seed=1)))


def test_capeval_repair_prompt():
    """A judge reply that names no letter goes back with the repair instruction (capeval.max_attempts > 1)."""
    model, fake = recorder()  # 'no' names no option
    question = {"question": "When did the user take Odalys to the park?",
                "options": {"A": "Last weekend", "B": "Last Monday", "C": "Last summer",
                            "D": "The answer cannot be determined"}, "answer": "A"}
    split = [{"sample_id": "s0", "positive_indices": [0], "context_names": ["Odalys"], "mcqa": [[question]]}]
    captions = [{"policy": "p", "sample_id": "s0", "caption": "Odalys naps in the sun.", "status": "ok"}]
    judge_captions(captions, split, model, PromptBook(), CapEvalSettings(max_attempts=2), 1, "judge")
    assert len(fake.requests) == 2 and fake.requests[1].task["attempt"] == 2
    check("capeval_repair", show(fake.requests[1]))


DIAGNOSTIC_ITEM = {
    "sample_id": "d0000", "images_context": [{"bytes": PNG, "path": None}] * 2,
    "dialogues_context": ["User: This is Odalys. I saw Odalys at Ryan Park on 2025-10-11.\nModel: Noted.",
                          "User: This is Bertram. I met Bertram in New Melanie on 2024-03-02.\nModel: Got it."],
    "query_image": {"bytes": PNG, "path": None}, "answer": "Ryan Park", "target_index": 0,
}


@pytest.mark.parametrize("task", DIAGNOSTIC_TASKS)
def test_diagnostic_question_prompts(task):
    book = PromptBook()
    item = {**DIAGNOSTIC_ITEM, "task": task, "question": book.render_section("diagnostic_questions", task, box="\\boxed")}
    check(f"diagnostic_{task}", show(build_direct_request(item, book)))


def test_lar_judge_prompt():
    request = build_lar_judge_request("What was I doing the last time?", "After that I need to return the library books.",
                                      "You said you had to take the books back to the library.", PromptBook())
    check("lar_judge", show(request))


def test_mcqa_prompts():
    model, fake = recorder()
    dialogue = {
        "sample_id": "s0", "concept_id": "c1", "context_index": 0, "name": "Odalys",
        "facts": [{"kind": "place", "text": "at Ryan Park"}, {"kind": "date", "text": "on 2025-10-11"}],
        "turns": [], "dialogue": "User: I saw Odalys at Ryan Park on 2025-10-11.\nModel: Noted.",
        "status": "ok", "failure_reason": "", "attempts": 1, "raw_response": None, "writer": "w",
    }
    write_mcqas([dialogue], model, PromptBook(), MCQASettings(max_attempts=2), seed=1)
    assert len(fake.requests) == 2
    assert fake.requests[0].response_schema is not None
    check("mcqa_writer", show(fake.requests[0]))
    check("mcqa_repair", show(fake.requests[1]))


@pytest.mark.parametrize("task", ["multi_vision", "vision", "joint"])
def test_training_task_prompts(benchmark_splits, task):
    from covip.training.records import build_record

    record = build_record(benchmark_splits[0][0], task, PromptBook(), seed=0, where="train row 0")
    text = "\n".join("<image>" if p["type"] == "image" else p["text"] for p in record["prompt"][0]["content"])
    check(f"train_{task}", text + "\n")


# ---------------------------------------------------------------------------------------------------
# Every template is pinned by at least one snapshot that really renders it

SNAPSHOTS_OF = {
    "capeval_judge": ["capeval_judge", "capeval_repair"],
    "capeval_repair": ["capeval_repair"],
    "caption": ["caption", "cag_question"],
    "diagnostic_questions": [f"diagnostic_{task}" for task in DIAGNOSTIC_TASKS],
    "dialogue_repair": ["dialogue_repair"],
    "dialogue_writer": ["dialogue_writer", "dialogue_repair"],
    "lar_judge": ["lar_judge"],
    "mcqa_repair": ["mcqa_repair"],
    "mcqa_writer": ["mcqa_writer", "mcqa_repair"],
    "query_synthesis": ["query_synthesis"],
    "train_tasks": ["train_joint", "train_multi_vision", "train_vision"],
    "visual_fidelity": ["visual_fidelity"],
}
_PLACEHOLDER = re.compile(r"\$(?:\w+|\{\w+\})")


def fixed_text(template: str) -> list[str]:
    """The literal pieces of a template's lines: what every rendering must contain (placeholders,
    section headers and blank lines left out; short joiners like ', ' too)."""
    pieces = []
    for line in template.splitlines():
        if re.fullmatch(r"\s*\[\[\w+\]\]\s*", line):
            continue
        for piece in _PLACEHOLDER.split(line.replace("$$", "\0")):
            piece = piece.replace("\0", "$").strip()
            if len(piece) >= 4:
                pieces.append(piece)
    return pieces


def test_every_template_has_a_snapshot():
    assert sorted(SNAPSHOTS_OF) == available_prompts()
    mapped = {name for names in SNAPSHOTS_OF.values() for name in names}
    assert mapped == {path.stem for path in SNAPSHOTS.glob("*.txt")}  # and no snapshot is left unmapped


@pytest.mark.parametrize("template", sorted(SNAPSHOTS_OF))
def test_snapshots_exercise_their_template(template):
    """Every fixed line of the template (each section, for sectioned ones) shows up in one of its snapshots."""
    texts = [(SNAPSHOTS / f"{name}.txt").read_text() for name in SNAPSHOTS_OF[template]]
    missing = [piece for piece in fixed_text(PromptBook().source(template)) if not any(piece in text for text in texts)]
    assert not missing, f"prompt '{template}': no snapshot shows {missing[:3]}"


def test_fixed_text_check_can_fail():
    """The check above catches a snapshot that does not render its template."""
    assert fixed_text("[[a]]\nShow $name the way ${how}.\n\n[[b]]\nCosts $$5 now") == ["Show", "the way", "Costs $5 now"]
    texts = [(SNAPSHOTS / "visual_fidelity.txt").read_text()]
    pieces = fixed_text(PromptBook().source("lar_judge"))
    assert pieces and not any(piece in text for piece in pieces for text in texts)


def test_templates_are_read_once_and_an_edited_override_is_seen(tmp_path, monkeypatch):
    override = tmp_path / "repair.txt"
    override.write_text("first $x")
    book = PromptBook({"capeval_repair": str(override)})
    reads = []
    original = PromptBook._read
    monkeypatch.setattr(PromptBook, "_read", lambda self, name: reads.append(name) or original(self, name))
    assert [book.render("capeval_repair", x=i) for i in range(3)] == ["first 0", "first 1", "first 2"]
    sections = [book.sections("caption", ["context"]) for _ in range(3)]
    assert sections[0].keys() == sections[2].keys() and "query" in sections[0]
    assert reads == ["capeval_repair", "caption"]
    override.write_text("second $x")
    os.utime(override, ns=(1, 10**18))  # a new modification time even on a coarse clock
    assert book.render("capeval_repair", x=1) == "second 1" and reads[-1] == "capeval_repair"
