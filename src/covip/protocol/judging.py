"""Asking a judge and reading its reply, plus the repair loop every model-calling stage uses.

- CapEval-QA (SPEC §3): `build_judge_request` shows the judge one caption and one question with
  options A-D, nothing else (instructions first, then the caption, then the question, as the
  authors' prompt). `read_judge_reply` reads the reply by one of `LETTER_RULES` and `score_reading`
  turns it into the scored letter: 'exact' (default) takes the letter from the FIRST `\\boxed{}`,
  which must hold one letter; 'substring' is the authors' code (the expected letter occurs in the
  first box's text); 'lenient' also reads replies without a box (a prompt that asks for a bare
  letter). No box, or no single letter, scores as D.
- LAR (SPEC §5): `build_lar_judge_request` shows question, reference and response;
  `read_lar_verdict` reads Correct / Wrong by one of `VERDICT_RULES`.
- Seeds: every judge request carries a seed derived from what it judges, so a sampled judge is
  reproducible and its answers cacheable.
- `ask_with_repair`: send requests; while a reply fails its check, send the problem back and ask
  again, within a budget of attempts; what is still wrong after that is a failed outcome, kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from covip.clients.base import ChatRequest, ChatResponse, Message
from covip.core.schemas import NONE_LETTER, OPTION_LETTERS
from covip.core.seeding import derive_seed
from covip.core.text import boxed_spans, normalize_text, strip_think, unfinished_think, unwrap_latex_text, without_closed_think
from covip.prompts import PromptBook

CAPEVAL_PROMPT = "capeval_judge"
CAPEVAL_REPAIR_PROMPT = "capeval_repair"
LAR_PROMPT = "lar_judge"
LETTER_RULES = ("exact", "substring", "lenient")
VERDICT_RULES = ("strict", "substring")


def judge_seed(seed: int, *keys: object) -> int:
    """A 31-bit seed for one CapEval-QA judge request (servers such as llama.cpp take 32-bit seeds)."""
    return derive_seed(seed, "capeval", *keys) % (2**31)


def lar_judge_seed(policy: str, mode: str, sample_id: str) -> int:
    """The seed of one LAR judge request."""
    return derive_seed(0, "lar-judge", policy, mode, sample_id) % (2**31)


def build_judge_request(caption: str, question: Mapping, prompts: PromptBook, *, seed: int | None) -> ChatRequest:
    """The judge's request for one question: the caption and the question with options A-D, nothing else.

    `question` is `{'question': str, 'options': {'A'..'D': str}}` (an answer key, if present, is
    never shown). `task` carries the same facts for offline stand-ins; sampling comes from the
    judge's registry entry.
    """
    options = {letter: str(question["options"][letter]) for letter in OPTION_LETTERS}
    text = prompts.render(
        CAPEVAL_PROMPT,
        caption=caption,
        question=question["question"],
        option_a=options["A"],
        option_b=options["B"],
        option_c=options["C"],
        option_d=options["D"],
    )
    task = {"kind": "capeval", "caption": caption, "question": question["question"], "options": options}
    return ChatRequest((Message.user(text),), task=task, seed=seed)


_MARKUP = re.compile(r"[*_`#>]")
_BARE = re.compile(r"[\(\[]?\s*([A-Da-d])\s*[\)\]]?\s*[.:]?")
_LABELLED = re.compile(r"[\(\[]?([A-D])[\)\].:]\s+\S")
# 'answer is B', 'Answer: b', 'option (C)', 'choice D.'; a lower-case letter only when nothing but
# punctuation or the end follows it, so 'the answer is a tough one' names no letter.
_KEYWORD = re.compile(
    r"(?i:\b(?:answer|option|choice)\b)(?:\s+(?i:is|would\s+be|should\s+be|will\s+be))?\s*[:\-=]?\s*[\(\[]?"
    r"(?:([A-D])(?![\w'’])|([a-d])(?=\s*(?:[\)\].:,;!]|$)))"
)
_LETTER_LIST = re.compile(r"(?<![\w'’])[\(\[]?[A-D][\)\]]?\s*(?:\bor\b|\band\b|/|,|&)\s*[\(\[]?[A-D](?![\w'’])")
_STANDALONE = re.compile(r"(?<![\w'’])[\(\[]?([A-D])[\)\]]?(?![\w'’-])")


def lenient_letter(text: str | None, options: Mapping[str, str] | None = None) -> str | None:
    """The letter A-D a reply without a box names (rule 'lenient'), or None when it names none or more than one.

    Read, in this order: a bare letter ('B', 'b', '(B)', '**B**', 'B.'); two letters offered as
    alternatives ('A or B') -> None; a reply that starts with a labelled option ('B) Oak trees');
    a letter after 'answer', 'option' or 'choice' ('Answer: B', 'The answer is B) Oak trees';
    different letters there -> None); the reply being exactly one option's text (needs `options`);
    finally a single stand-alone capital letter ('I would pick C.'; the article 'A' before a word
    does not count). Reasoning inside <think>...</think> is ignored; an unclosed <think> gives None.
    """
    if text is None or unfinished_think(text):
        return None  # an unclosed <think>: the model ran out of tokens while still reasoning
    cleaned = _MARKUP.sub("", without_closed_think(text)).strip()
    if not cleaned:
        return None
    if match := _BARE.fullmatch(cleaned):
        return match[1].upper()
    if _LETTER_LIST.search(cleaned):
        return None
    if match := _LABELLED.match(cleaned):
        return match[1]
    named = {(upper or lower).upper() for upper, lower in _KEYWORD.findall(cleaned)}
    if len(named) == 1:
        return named.pop()
    if len(named) > 1:
        return None
    if options:
        reply = normalize_text(cleaned)
        same = [letter for letter in OPTION_LETTERS
                if letter in options and normalize_text(str(options[letter])) == reply]
        if len(same) == 1:
            return same[0]
    standalone = set()
    for match in _STANDALONE.finditer(cleaned):
        letter = match[1]
        following = cleaned[match.end() :]
        if letter == "A" and not match[0].startswith(("(", "[")) and re.match(r"\s+[a-z]", following):
            continue  # the article 'A', as in 'A dog is ...'
        standalone.add(letter)
    return standalone.pop() if len(standalone) == 1 else None


_AUTHORS_BOX = re.compile(r"\\boxed\{(.*?)\}", re.DOTALL)
_BOX_DECORATION = re.compile(r"^[\s*_`(\[]*(.*?)[\s*_`)\].]*$", re.DOTALL)


@dataclass(frozen=True)
class JudgeReading:
    """What a CapEval-QA judge reply says: the one letter it gives (None: none) and its first box's text."""

    letter: str | None
    box: str | None  # the first box's content as read (None: the reply has no box)


def box_letter(content: str | None) -> str | None:
    """The letter a box holds when it holds exactly one capital A-D (spaces, markdown, brackets, a
    final full stop and `\\text{}` around it allowed), else None."""
    if content is None:
        return None
    inner = _BOX_DECORATION.fullmatch(unwrap_latex_text(content))
    letter = inner[1].strip() if inner else ""
    return letter if letter in OPTION_LETTERS else None


def read_judge_reply(text: str | None, options: Mapping[str, str] | None = None, rule: str = "exact") -> JudgeReading:
    """Read a judge's reply by `rule` (one of LETTER_RULES; module docstring).

    'exact': closed <think> blocks are skipped (an unclosed one reads as no answer); the first
    complete `\\boxed{...}` (balanced braces) is the answer and must hold one letter. 'substring':
    the authors' reading, on the raw reply: the text of the first `\\boxed{` up to the next `}`.
    'lenient': the first box's letter if it has one, else the rules of `lenient_letter`.
    """
    if rule not in LETTER_RULES:
        raise ValueError(f"letter rule must be one of {list(LETTER_RULES)}, got {rule!r}")
    if text is None:
        return JudgeReading(None, None)
    if rule == "substring":
        boxes = _AUTHORS_BOX.findall(text)
        return JudgeReading(box_letter(boxes[0]), boxes[0]) if boxes else JudgeReading(None, None)
    if unfinished_think(text):
        return JudgeReading(None, None)  # the model ran out of tokens while still reasoning
    spans = boxed_spans(without_closed_think(text))
    box = spans[0][2] if spans else None
    letter = box_letter(box)
    if letter is None and rule == "lenient" and box is None:
        letter = lenient_letter(text, options)
    return JudgeReading(letter, box)


def parse_judge_letter(text: str | None, options: Mapping[str, str] | None = None, rule: str = "exact") -> str | None:
    """The letter a judge's reply gives under `rule`, or None (see `read_judge_reply`)."""
    return read_judge_reply(text, options, rule).letter


def score_reading(reading: JudgeReading, target: str, rule: str = "exact") -> tuple[str, bool]:
    """(the scored answer, whether it scores) for a question whose scoring letter is `target` (the
    correct letter of a positive question, D for a negative one).

    With no readable letter the answer is D, as in the authors' code. Under 'substring' a box whose
    text is not a single letter scores when `target` occurs in it (the authors' `a in pred`), and the
    scored answer is the box's text.
    """
    if reading.letter is not None:
        return reading.letter, reading.letter == target
    if rule == "substring" and reading.box is not None:
        return reading.box.strip(), target in reading.box
    return NONE_LETTER, target == NONE_LETTER


def build_lar_judge_request(question: str, reference: str, response: str, prompts: PromptBook, *,
                            seed: int = 0) -> ChatRequest:
    """The LAR judge's request: prompt `lar_judge` (question, reference, response -> Correct/Wrong).
    `reference` is the item's `last_action` (the user's own words) when the set has it, else its answer."""
    text = prompts.render(LAR_PROMPT, question=question, reference=reference, response=response)
    task = {"kind": "lar_judge", "question": question, "reference": reference, "response": response}
    return ChatRequest(messages=(Message.user(text),), task=task, seed=seed)


_VERDICT = re.compile(r"\b(incorrect|not\s+correct|wrong|correct)\b", re.IGNORECASE)
_LEAD_VERDICT = re.compile(
    r"^[\W_]*(?:(?:final\s+)?(?:verdict|answer|judgement|judgment|grade)\s*[:\-]?[\W_]*)?"
    r"(incorrect|not\s+correct|wrong|correct)\b",
    re.IGNORECASE,
)


def parse_lar_verdict(text: str | None) -> bool | None:
    """True for a 'correct' verdict, False for 'wrong'/'incorrect', None when absent or contradictory.

    Tolerates case, markdown, an 'Answer:'/'Verdict:' prefix, a <think> block and an explanation after
    the verdict. When the text mentions both, the verdict at its start decides; otherwise None.
    """
    if not text:
        return None
    body = strip_think(text).strip()
    lead = _LEAD_VERDICT.match(body)
    if lead:
        return lead.group(1).lower() == "correct"
    found = {m.group(1).lower() == "correct" for m in _VERDICT.finditer(body)}
    return found.pop() if len(found) == 1 else None


def read_lar_verdict(text: str | None, rule: str = "strict") -> bool | None:
    """The LAR verdict under `rule` (VERDICT_RULES): 'strict' is `parse_lar_verdict` (None when absent
    or contradictory); 'substring' is the authors' reading, True when 'correct' occurs anywhere in the
    lower-cased reply (so 'Incorrect' is True). None only for no reply, or an unreadable strict one."""
    if rule not in VERDICT_RULES:
        raise ValueError(f"verdict rule must be one of {list(VERDICT_RULES)}, got {rule!r}")
    if rule == "substring":
        return None if text is None else "correct" in text.lower()
    return parse_lar_verdict(text)


# ---------------------------------------------------------------------------------------------------
# Asking with repair


@dataclass
class Outcome:
    """What came of asking a model until its answer passed a check."""

    value: Any | None  # what the check accepted (None while nothing was accepted)
    attempts: int
    raw: str | None  # the last text the model returned (None if every call failed)
    failure: str | None  # '<code>: <detail> (after N attempt(s))' when no attempt was accepted

    @property
    def ok(self) -> bool:
        return self.failure is None


Check = Callable[[int, str], tuple[Any, list[str]]]
NextRequest = Callable[[int, int, ChatRequest, ChatResponse, list[str]], ChatRequest]


def ask_with_repair(model, requests: Sequence[ChatRequest], check: Check, next_request: NextRequest,
                    max_attempts: int, *, desc: str = "requests", progress_file=None,
                    concurrency: int | None = None) -> list[Outcome]:
    """Ask every request; re-ask those whose reply fails `check`, up to `max_attempts` calls each.

    Round by round, all open requests go to `model.complete_many` together (cache, batching,
    concurrency). `check(index, text)` returns (value, problems); no problems accepts the value.
    `next_request(index, attempt, previous_request, response, problems)` builds the next attempt: a
    repair (the reply and the problem sent back) after a bad reply, or the same question afresh after
    a failed call. Outcomes come back in input order.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    current = list(requests)
    outcomes = [Outcome(None, 0, None, None) for _ in current]
    codes = ["invalid_output"] * len(current)
    problems: list[list[str]] = [[] for _ in current]
    pending = list(range(len(current)))
    for attempt in range(1, max_attempts + 1):
        if not pending:
            break
        responses = model.complete_many([current[i] for i in pending], desc=desc, progress_file=progress_file,
                                        concurrency=concurrency)
        still_open = []
        for index, response in zip(pending, responses):
            outcome = outcomes[index]
            outcome.attempts = attempt
            if not response.ok:
                codes[index], problems[index] = "model_error", [response.error or "the model returned no text"]
            else:
                outcome.raw = response.text
                value, found = check(index, response.text)
                if not found:
                    outcome.value = value
                    continue
                if response.truncated:  # said, so a failure reason tells a cut-off from a bad reply
                    found = [*found, "reply cut off at the token cap (finish_reason 'length')"]
                codes[index], problems[index] = "invalid_output", found
            if attempt < max_attempts:
                current[index] = next_request(index, attempt + 1, current[index], response, problems[index])
            still_open.append(index)
        pending = still_open
    for index in pending:
        detail = "; ".join(problems[index])
        outcomes[index].failure = f"{codes[index]}: {detail} (after {outcomes[index].attempts} attempt(s))"
    return outcomes


def repaired(original: ChatRequest, reply: str, repair_text: str, *, attempt: int, seed: int) -> ChatRequest:
    """The next attempt after a bad reply: the original turn(s), the reply, then the problem."""
    return ChatRequest(original.messages + (Message.assistant(reply), Message.user(repair_text)), original.sampling,
                       original.response_schema, dict(original.task or {}, attempt=attempt), seed)


def reasked(request: ChatRequest, *, attempt: int, seed: int) -> ChatRequest:
    """The same conversation asked again (after a failed call), with the attempt number and a new seed."""
    return ChatRequest(request.messages, request.sampling, request.response_schema,
                       dict(request.task or {}, attempt=attempt), seed)
