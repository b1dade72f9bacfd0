"""The facts-first writer: an offline stand-in for the dialogue and MCQA writer models.

It cannot read prose, so it works from `request.task`, the structured facts the prompt was rendered
from, and answers in the form a real model would: 'User: ... / Model: ...' lines for a dialogue, a
JSON reply (sometimes fenced, sometimes with options as a list or option D left out) for questions.
The stage therefore runs its real parsing, repair and validation code on this output.

Phrasing varies with a generator derived from the request seed and task, so dialogues differ from
each other without being random between runs. `spec.options` can make it misbehave on purpose, at a
fixed, deterministic rate, so the re-ask and failure paths can be exercised:

    malformed_rate: share of replies that are broken in one of several ways (wrong turn count,
                    missing name, no JSON, duplicate options, two answers, ...); default 0
    error_rate:     share of calls that fail as a backend error would; default 0
    format_variety: vary the surface format within what parsers must accept; default true
"""

from __future__ import annotations

import json
import random
import re

from covip.clients.base import ChatRequest, ChatResponse, Usage
from covip.content.facts import alternative_fact_texts, fact_family, fake_first_names, infer_category
from covip.core.seeding import pyrandom_for
from covip.core.schemas import NONE_OPTION

DIALOGUE_FAULTS = ("too_few_turns", "starts_with_model", "no_name", "prose", "no_facts")
MCQA_FAULTS = ("not_json", "truncated", "too_few", "duplicate_options", "two_answers", "answer_d", "wrong_d")

_INTROS = (
    "This is {name}.",
    "Here's a photo of {name}.",
    "Meet {name}!",
    "Let me show you {name}.",
    "Take a look at {name} in this picture.",
    "I want to tell you about {name}, who is in this photo.",
)
_USER_FACT = {
    "place": (
        "I saw {name} {text}.",
        "I ran into {name} {text}.",
        "Guess what, I came across {name} {text}.",
        "I spotted {name} {text}.",
    ),
    "location": ("{name} is {text}.", "You can find {name} {text}.", "Just so you know, {name} is {text}."),
    "date": ("I saw {name} {text}.", "I last met up with {name} {text}.", "The last time I saw {name} was {text}."),
    "visit": ("I visited {name} {text}.", "My last visit to {name} was {text}.", "I went to {name} {text}."),
    "event": (
        "{name} {text}!",
        "Big news: {name} {text}.",
        "Something memorable: {name} {text}.",
        "You should know that {name} {text}.",
    ),
    "habit": ("{name} {text}.", "A fun detail: {name} {text}.", "Funny thing is, {name} {text}.", "Also, {name} {text}."),
    "action": ("{name} {text} when I last checked in.", "When I dropped by, {name} {text}.", "Last time I looked, {name} {text}."),
}
_MODEL_CLAUSE = {
    "place": "you saw {name} {text}",
    "location": "{name} is {text}",
    "date": "you saw {name} {text}",
    "visit": "you visited {name} {text}",
}
_ECHOES = ("Noted: {clause}.", "Thanks, I'll remember that {clause}.", "Got it, {clause}.", "Understood, {clause}.")
_ACKS = (
    "Thanks for telling me about {name}!",
    "That's good to know about {name}.",
    "I'll keep that in mind about {name}.",
    "Got it. Is there anything else I should remember about {name}?",
    "Noted, thanks for sharing that about {name}.",
    "I'll remember that for next time we talk about {name}.",
)
_FILLERS = (
    "Could you remember {name} for me?",
    "I just wanted you to know about {name}.",
    "Please keep {name} in mind for later.",
    "That's all about {name} for now.",
)
_QUESTIONS = {
    "place": (
        "Where did the user come across {name}?",
        "Where did the user say they saw {name}?",
        "At which place did the user see {name}?",
    ),
    "location": ("Where is {name} located?", "Where can {name} be found, according to the user?"),
    "date": ("On what date did the user see {name}?", "When did the user see {name}, according to the chat?"),
    "visit": ("On what date did the user visit {name}?", "When did the user go to {name}?"),
    "event": (
        "What event involving {name} did the user mention?",
        "Which of these happened to {name}, according to the user?",
        "What notable event did the user share about {name}?",
    ),
    "habit": (
        "What habit of {name} did the user describe?",
        "Which of these is typical of {name}, according to the user?",
        "What regular routine did the user describe for {name}?",
    ),
    "action": (
        "What was happening with {name} the last time the user checked?",
        "According to the user, what was {name} doing most recently?",
        "What was {name} up to in the user's most recent sighting?",
    ),
}
_NAME_QUESTION = "What name does the user use in this chat?"


def _variant(kind: str, category: str) -> str:
    """Phrasing key: place concepts are located and visited rather than seen somewhere."""
    if category == "place" and kind == "place":
        return "location"
    if category == "place" and kind == "date":
        return "visit"
    return kind


def option_text(kind: str, text: str) -> str:
    """A fact text as a multiple-choice option ('on 2025-10-11' -> '2025-10-11', 'was reading' -> 'Reading')."""
    if kind == "date":
        text = re.sub(r"^on\s+", "", text)
    elif kind == "action":
        text = re.sub(r"^was\s+", "", text)
    return text[:1].upper() + text[1:]


class FactsFirstWriter:
    """A ChatModel that writes dialogues and MCQAs from the facts in `request.task`."""

    def __init__(self, spec):
        self.spec = spec
        self.identity = spec.identity
        self.model = spec.model or "facts-first-writer"
        self.options = spec.resolved_options()
        for key in ("malformed_rate", "error_rate"):
            if not 0.0 <= float(self.options[key]) <= 1.0:
                raise ValueError(f"models.{spec.name}.options.{key} must be in [0, 1], got {self.options[key]}")

    def complete(self, request: ChatRequest) -> ChatResponse:
        task = request.task or {}
        if task.get("kind") not in ("dialogue", "mcqa"):
            raise ValueError(
                f"{self.identity}: the facts-first writer serves only task kinds 'dialogue' and 'mcqa', "
                f"got {task.get('kind')!r}"
            )
        key = json.dumps(task, sort_keys=True, default=str)
        seed = request.seed or 0
        # Faults and content use separate generators, so turning faults on does not change the
        # wording of the replies that stay good.
        faults = pyrandom_for(seed, "facts-writer-faults", key)
        rnd = pyrandom_for(seed, "facts-writer", key)
        if faults.random() < float(self.options["error_rate"]):
            return ChatResponse(None, self.model, error="simulated backend error (facts-first writer error_rate)")
        fault = None
        if faults.random() < float(self.options["malformed_rate"]):
            fault = faults.choice(DIALOGUE_FAULTS if task["kind"] == "dialogue" else MCQA_FAULTS)
        if task["kind"] == "dialogue":
            text = self._dialogue(task, rnd, fault)
        else:
            text = self._mcqa(task, rnd, fault)
        prompt_words = sum(len(message.text.split()) for message in request.messages)
        return ChatResponse(text, self.model, Usage(prompt_words, len(text.split())))

    # -----------------------------------------------------------------------------------------------
    # Dialogues

    def _dialogue(self, task: dict, rnd: random.Random, fault: str | None) -> str:
        name, facts = task["name"], list(task.get("facts") or [])
        raw = task.get("category")
        category = fact_family(raw) if isinstance(raw, str) and raw.strip() else infer_category(facts) or "object"
        users = max(1, int(task.get("num_turns", 6)) // 2)
        if fault == "no_facts":
            facts = []
        groups: list[list[dict]] = [[] for _ in range(users)]
        for index, fact in enumerate(facts):
            groups[index % users].append(fact)
        turns: list[tuple[str, str]] = []
        for index, group in enumerate(groups):
            sentences = [rnd.choice(_INTROS).format(name=name)] if index == 0 else []
            for fact in group:
                variant = _variant(fact["kind"], category)
                sentences.append(rnd.choice(_USER_FACT[variant]).format(name=name, text=fact["text"]))
            if not group and index > 0:
                sentences.append(rnd.choice(_FILLERS).format(name=name))
            turns.append(("User", " ".join(sentences)))
            if group and rnd.random() < 0.5:
                fact = group[0]
                variant = _variant(fact["kind"], category)
                clause = _MODEL_CLAUSE.get(variant, "{name} {text}").format(name=name, text=fact["text"])
                turns.append(("Model", rnd.choice(_ECHOES).format(clause=clause)))
            else:
                turns.append(("Model", rnd.choice(_ACKS).format(name=name)))
        if fault == "too_few_turns":
            turns = turns[:-2] if len(turns) > 2 else turns[:1]
        elif fault == "starts_with_model":
            turns = [("Model" if role == "User" else "User", text) for role, text in turns]
        elif fault == "no_name":
            turns = [(role, re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", "my friend", text)) for role, text in turns]
        if fault == "prose":
            return " ".join(text for _, text in turns)
        return self._render_turns(turns, rnd)

    def _render_turns(self, turns: list[tuple[str, str]], rnd: random.Random) -> str:
        style = rnd.random() if self.options["format_variety"] else 0.0
        model_label = "Assistant" if 0.60 <= style < 0.75 else "Model"
        bold = 0.75 <= style < 0.90
        lines = []
        for role, text in turns:
            label = model_label if role == "Model" else role
            lines.append(f"**{label}:** {text}" if bold else f"{label}: {text}")
        separator = "\n\n" if self.options["format_variety"] and rnd.random() < 0.3 else "\n"
        body = separator.join(lines)
        if self.options["format_variety"] and rnd.random() < 0.1:
            body = "Here is the chat:\n\n" + body
        return body

    # -----------------------------------------------------------------------------------------------
    # Multiple-choice questions

    def _mcqa(self, task: dict, rnd: random.Random, fault: str | None) -> str:
        name, facts, n = task["name"], list(task.get("facts") or []), int(task.get("n", 3))
        raw = task.get("category")
        category = fact_family(raw) if isinstance(raw, str) and raw.strip() else infer_category(facts) or "person"
        fact_texts = [fact["text"] for fact in facts]
        questions = []
        for fact in facts[:n]:
            variant = _variant(fact["kind"], category)
            wrong = alternative_fact_texts(
                fact["kind"], category, rnd.getrandbits(32), (name, fact["text"]), 2, exclude=fact_texts
            )
            questions.append(
                self._question(
                    rnd.choice(_QUESTIONS[variant]).format(name=name),
                    option_text(fact["kind"], fact["text"]),
                    [option_text(fact["kind"], text) for text in wrong],
                    rnd,
                )
            )
        if len(questions) < n:
            # Fewer facts than questions: the name itself is the one other fact every dialogue states.
            others = fake_first_names(rnd.getrandbits(32), 2, exclude=[name])
            questions.append(self._question(_NAME_QUESTION, name, others, rnd))
        questions = questions[:n]
        return self._render_mcqa(self._break_mcqa(questions, fault), rnd, fault)

    @staticmethod
    def _question(question: str, correct: str, wrong: list[str], rnd: random.Random) -> dict:
        position = rnd.randrange(3)
        texts = list(wrong)
        texts.insert(position, correct)
        options = {letter: text for letter, text in zip("ABC", texts)}
        options["D"] = NONE_OPTION
        return {"question": question, "options": options, "answer": "ABC"[position]}

    @staticmethod
    def _break_mcqa(questions: list[dict], fault: str | None) -> list[dict]:
        questions = [dict(q, options=dict(q["options"])) for q in questions]
        if not questions or fault is None:
            return questions
        first = questions[0]
        if fault == "too_few":
            return questions[:-1]
        if fault == "duplicate_options":
            other = "B" if first["answer"] != "B" else "C"
            first["options"][other] = first["options"][first["answer"]].upper()
        elif fault == "two_answers":
            other = "A" if first["answer"] != "A" else "B"
            first["answer"] = f"{first['answer']}, {other}"
        elif fault == "answer_d":
            first["answer"] = "D"
        elif fault == "wrong_d":
            first["options"]["D"] = "None of the above"
        return questions

    def _render_mcqa(self, questions: list[dict], rnd: random.Random, fault: str | None) -> str:
        if fault == "not_json":
            lines = ["Sure! Here are the questions:"]
            for index, q in enumerate(questions, 1):
                lines.append(f"{index}. {q['question']}")
                lines.extend(f"   {letter}) {text}" for letter, text in q["options"].items())
                lines.append(f"   Answer: {q['answer']}")
            return "\n".join(lines)
        variety = bool(self.options["format_variety"])
        out = []
        for q in questions:
            options: dict | list = dict(q["options"])
            answer = q["answer"]
            if variety and fault != "wrong_d" and rnd.random() < 0.15:
                options.pop("D")
            if variety and rnd.random() < 0.15:
                options = [f"{letter}) {text}" for letter, text in options.items()]
            if variety and len(answer) == 1:
                style = rnd.random()
                if style < 0.1:
                    answer = f"({answer})"
                elif style < 0.2:
                    answer = f"{answer}) {q['options'][answer]}"
            out.append({"question": q["question"], "options": options, "answer": answer})
        text = json.dumps({"questions": out}, indent=2 if variety and rnd.random() < 0.5 else None, ensure_ascii=False)
        if fault == "truncated":
            return text[: len(text) // 2]
        if variety and rnd.random() < 0.4:
            text = f"```json\n{text}\n```"
        return text
