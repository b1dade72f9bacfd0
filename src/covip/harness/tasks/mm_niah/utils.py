"""lmms-eval functions of our MM-NIAH task. Image paths are relative to the unpacked image archive,
named by the job in COVIP_BENCHMARK_DATA (covip.harness.runner)."""

import ast
import os
import re
import string

from PIL import Image

LETTERS = string.ascii_uppercase
_LETTER = re.compile(r"\b([A-Z])\b")
_LIST = re.compile(r"\[[^\]]*\]")


def _root():
    return os.environ.get("COVIP_BENCHMARK_DATA", ".")


def _choices(doc):
    return (doc.get("meta") or {}).get("choices") or []


def doc_to_visual(doc):
    paths = list(doc.get("images_list") or []) + list((doc.get("meta") or {}).get("choices_image_path") or [])
    return [Image.open(os.path.join(_root(), p)).convert("RGB") for p in paths]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    lines = [doc.get("context") or "", doc["question"]]
    choices = _choices(doc)
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    lines.append(kwargs["choice_prompt"] if choices or (doc.get("meta") or {}).get("choices_image_path")
                 else kwargs["list_prompt"] if isinstance(doc.get("answer"), list) else "")
    return "\n".join(line for line in lines if line)


def _as_list(text):
    match = _LIST.search(text or "")
    try:
        return [int(x) for x in ast.literal_eval(match.group(0))] if match else []
    except (ValueError, SyntaxError, TypeError):
        return []


def score(doc, reply):
    answer = doc["answer"]
    if isinstance(answer, list):  # counting: soft accuracy over the positions
        predicted = _as_list(reply)
        if not answer:
            return float(not predicted)
        return sum(1 for a, p in zip(answer, predicted) if int(a) == p) / max(len(answer), len(predicted))
    if isinstance(answer, int) or (isinstance(answer, str) and len(answer) == 1 and answer.isalpha()):
        match = _LETTER.search(reply or "")
        expected = LETTERS[answer] if isinstance(answer, int) else answer.upper()
        return float(bool(match) and match.group(1) == expected)
    return float(str(answer).strip().lower() in (reply or "").strip().lower())


def process_results(doc, results):
    return {"accuracy": score(doc, results[0])}
