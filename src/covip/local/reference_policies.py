"""Reference policies: ChatModel stand-ins that need no model, to calibrate CapEval-QA.

They read `request.task` (built by `covip.stages.captioning`), never the prompt text, and write
what an ideal, a shortcut-taking and a memory-less captioner would write. Run through the metric,
they bound it: a judge that cannot give the oracle high Acc+ and Acc-, the dump lower Acc-, and the
blind policy near-zero Acc+, is not measuring personalization.

- `OraclePolicy`: names the TRUE positive concepts and states every stored fact about each, in plain
  sentences, after one neutral sentence counting them. It never mentions a negative concept.
- `ContextDumpPolicy`: pastes every context dialogue, positives and negatives alike: the text
  shortcut the paper warns about (high Acc+, clearly lower Acc-).
- `BlindPolicy`: counts the subjects (by category when known) and says nothing else: no name, no
  memory (Acc+ near 0, Acc- near 100).

Other task kinds, answered from what each holds:

- 'cag_answer' (a follow-up question after a caption) and 'diagnostic' (a direct question): when
  the task carries a diagnostic item's truth (`answer`, and `last_action` for LAR), the oracle
  answers exactly that, in the form its metric reads: the place in the box the LSD question asks
  for (`\\boxed{}` or `//boxed{}`), the user's own words for LAR, the keyword for ITR; so it scores
  100 on every diagnostic and bounds the metric. Otherwise it answers with the evidence about the
  positive concepts (`positive_indices`, or `target_index` when the task names one): the fact
  sentences, or the user's lines of their dialogues when the task has no facts; the line sharing most
  content words with the question comes first. The dump answers with the single best-matching user
  line of ALL dialogues. The blind policy answers "I don't know." When the question asks for a boxed
  answer, the best line is also given boxed. With no evidence the oracle, too, says "I don't know."
- anything else is an error (recorded on the row by the client layer).

Every reply is a pure function of the task: no randomness, no state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from covip.clients.base import ChatRequest, ChatResponse, Usage
from covip.content.facts import fact_family
from covip.core.text import content_tokens

DONT_KNOW = "I don't know."

_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# One sentence per fact kind, completing the stored predicate fragment ("on 2024-05-12",
# "was sniffing a patch of lavender"). Spoken to the user, as a personal assistant's caption would be.
_FACT_SENTENCE = {
    "place": "You came across {name} {text}.",
    "date": "You last saw {name} {text}.",
    "event": "{name} {text}.",
    "habit": "{name} {text}.",
    "action": "The last time you checked, {name} {text}.",
    "location": "{name} is {text}.",
    "visit": "You visited {name} {text}.",
}
_PLACE_FACT_FOR_PLACES = "{name} is {text}."  # a place concept's 'place' fact says where it is
_NOUN = {"person": "person", "animal": "animal", "object": "object", "place": "place"}


class ReferencePolicyError(ValueError):
    """The request carries no task, or a task kind this policy does not serve."""


class _ReferencePolicy:
    label = "reference"

    def __init__(self, spec):
        self.spec = spec
        self.identity = spec.identity

    def complete(self, request: ChatRequest) -> ChatResponse:
        task = request.task
        if not isinstance(task, Mapping) or "kind" not in task:
            raise ReferencePolicyError(f"{type(self).__name__} works from request.task, and this request has none")
        kind = task["kind"]
        if kind == "caption":
            text = self.caption(task)
        elif kind in ("cag_answer", "diagnostic"):
            text = self.answer(task)
        else:
            raise ReferencePolicyError(
                f"{type(self).__name__} serves task kinds 'caption', 'cag_answer' and 'diagnostic', not '{kind}'"
            )
        return ChatResponse(text, self.spec.model or self.label, Usage(0, len(text.split())))

    def caption(self, task: Mapping) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def answer(self, task: Mapping) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class OraclePolicy(_ReferencePolicy):
    """Captions from the true positive concepts' stored facts only (see the module docstring)."""

    label = "oracle"

    def caption(self, task: Mapping) -> str:
        positives = _positive_indices(task)
        names = [_name(task, k) for k in positives]
        sentences = [_count_sentence(len(positives), names)]
        for k in positives:
            sentences += _evidence(task, k)
        return " ".join(sentences)

    def answer(self, task: Mapping) -> str:
        truth = _diagnostic_truth(task)
        if truth is not None:
            return truth
        evidence = [line for k in _positive_indices(task) for line in _evidence(task, k)]
        if not evidence:
            return DONT_KNOW
        ranked = _rank(evidence, str(task.get("question", "")))
        return _with_box(" ".join(ranked), ranked[0], task)


class ContextDumpPolicy(_ReferencePolicy):
    """Pastes every context dialogue together, whether or not its concept is in the image."""

    label = "context_dump"

    def caption(self, task: Mapping) -> str:
        return "\n\n".join(str(d).strip() for d in _dialogues(task))

    def answer(self, task: Mapping) -> str:
        lines = [line for dialogue in _dialogues(task) for line in _user_lines(dialogue)]
        if not lines:
            return DONT_KNOW
        best = _rank(lines, str(task.get("question", "")))[0]
        return _with_box(best, best, task)


class BlindPolicy(_ReferencePolicy):
    """Counts what is in the image (by category when known); no names, no memories."""

    label = "blind"

    def caption(self, task: Mapping) -> str:
        positives = _positive_indices(task)
        categories = list(task.get("context_categories") or [])
        n = len(positives)
        if n == 0:
            return "The photo shows an everyday scene."
        subject = "subject" if n == 1 else "subjects"
        sentence = f"The photo shows {_number(n)} {subject} in one scene"
        if categories:
            nouns = [_NOUN.get(fact_family(categories[k]), "object") for k in positives]
            sentence += ": " + _join([f"{_article(noun)} {noun}" for noun in nouns])
        return sentence + "."

    def answer(self, task: Mapping) -> str:
        return DONT_KNOW


# ---------------------------------------------------------------------------------------------------
# Helpers (pure functions of the task)


def _positive_indices(task: Mapping) -> list[int]:
    positives = task.get("positive_indices")
    if positives:
        return [int(k) for k in positives]
    target = task.get("target_index")
    return [int(target)] if target is not None and int(target) >= 0 else []


def _dialogues(task: Mapping) -> list[str]:
    for key in ("context_dialogues", "dialogues_context", "dialogues"):
        if task.get(key):
            return [str(d) for d in task[key]]
    return []


def _name(task: Mapping, k: int) -> str:
    names = task.get("context_names") or []
    return str(names[k]) if k < len(names) and names[k] else "this subject"


def _category(task: Mapping, k: int) -> str | None:
    categories = task.get("context_categories") or []
    return fact_family(str(categories[k])) if k < len(categories) and categories[k] else None


def _evidence(task: Mapping, k: int) -> list[str]:
    """What the oracle knows about context concept k: its facts as sentences, else its user lines."""
    facts = task.get("context_facts") or []
    if k < len(facts) and facts[k]:
        return [fact_sentence(f, _name(task, k), _category(task, k)) for f in facts[k]]
    dialogues = _dialogues(task)
    return _user_lines(dialogues[k]) if k < len(dialogues) else []


def fact_sentence(fact: Mapping, name: str, category: str | None = None) -> str:
    """One stored fact ({'kind', 'text'}) as a sentence about `name`, keeping the fact text verbatim."""
    kind, text = str(fact.get("kind", "")), str(fact["text"]).strip()
    template = _PLACE_FACT_FOR_PLACES if kind == "place" and category == "place" else _FACT_SENTENCE.get(kind, "{name} {text}.")
    sentence = template.format(name=name, text=text.rstrip("."))
    return sentence[0].upper() + sentence[1:]


def _user_lines(dialogue: str) -> list[str]:
    lines = []
    for line in str(dialogue).splitlines():
        match = re.match(r"\s*user\s*:\s*(.+)", line, re.IGNORECASE)
        if match:
            lines.append(match.group(1).strip())
    return lines


def _rank(lines: Sequence[str], question: str) -> list[str]:
    """Lines by content words shared with the question, most first (stable for ties)."""
    wanted = set(content_tokens(question))
    order = sorted(range(len(lines)), key=lambda i: -len(wanted & set(content_tokens(lines[i]))))
    return [lines[i] for i in order]


def _box_marker(question: str) -> str | None:
    """The box command a question asks for ('//boxed' as the authors' LSD question, else '\\boxed')."""
    if "//boxed" in question:
        return "//boxed"
    return "\\boxed" if "boxed" in question else None


def _with_box(text: str, best: str, task: Mapping) -> str:
    marker = _box_marker(str(task.get("question", "")))
    return f"{text} {marker}{{{best.rstrip('.')}}}" if marker else text


def _diagnostic_truth(task: Mapping) -> str | None:
    """The oracle's answer to an LSD / LAR / ITR item from its truth, or None when the task has none."""
    name = task.get("diagnostic_task") or (task.get("task") if task.get("kind") == "diagnostic" else None)
    answer = task.get("answer")
    if not answer or name not in ("lsd", "lar", "itr"):
        return None
    if name == "lsd":
        marker = _box_marker(str(task.get("question", ""))) or "\\boxed"
        return f"You last saw them at {answer}. {marker}{{{answer}}}"
    if name == "lar":
        return f'You told me: "{task.get("last_action") or answer}"'
    return f"Reminder: {answer}."


def _count_sentence(n: int, names: list[str]) -> str:
    if n == 0:
        return "The photo shows none of the subjects you told me about."
    subject = "subject" if n == 1 else "subjects"
    return f"The photo shows {_number(n)} familiar {subject}: {_join(names)}."


def _number(n: int) -> str:
    return _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
