"""lmms-eval functions of the tiny multi-image task (loaded by lmms-eval from this folder by path).

The wording lives in the task's YAML (`lmms_eval_specific_kwargs`); these functions only assemble it.
"""

import io
import re
import string

from PIL import Image

LETTERS = string.ascii_uppercase
_LETTER = re.compile(r"\b([A-Z])\b")


def doc_to_visual(doc):
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in doc["images"]]


def no_visual(doc):
    return []


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    lines = []
    if kwargs.get("description"):
        lines += [kwargs["description"].format(number=i + 1, colour=c) for i, c in enumerate(doc["colours"])]
    lines.append(kwargs["question"].format(colour=doc["target"]))
    lines += [f"{LETTERS[i]}. " + kwargs["option"].format(number=i + 1) for i in range(len(doc["colours"]))]
    lines.append(kwargs["post_prompt"])
    return "\n".join(lines)


def parse_letter(text):
    """The first stand-alone capital letter of a reply, or '' when there is none."""
    match = _LETTER.search(text or "")
    return match.group(1) if match else ""


def process_results(doc, results):
    return {"accuracy": float(parse_letter(results[0]) == doc["answer"])}
