"""CapEval-QA questions written by hand: options A-C plus the fixed D, and a question with its answer key."""

from __future__ import annotations

from covip.core.schemas import NONE_OPTION


def options(a: str, b: str, c: str) -> dict[str, str]:
    return {"A": a, "B": b, "C": c, "D": NONE_OPTION}


def question(text: str, answer: str, opts: dict[str, str] | None = None) -> dict:
    return {"question": text, "options": opts or options("one", "two", "three"), "answer": answer}
