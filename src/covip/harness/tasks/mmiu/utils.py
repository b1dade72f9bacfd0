"""lmms-eval functions of our MMIU task. Image paths in the annotations are relative to the unpacked
archives; the job names that folder in COVIP_BENCHMARK_DATA (covip.harness.runner)."""

import os
import re

from PIL import Image

_LETTER = re.compile(r"\b([A-Z])\b")


def _root():
    return os.environ.get("COVIP_BENCHMARK_DATA", ".")


def doc_to_visual(doc):
    paths = doc["input_image_path"]
    return [Image.open(os.path.join(_root(), os.path.normpath(p))).convert("RGB") for p in paths]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    parts = [doc.get("context") or "", doc["question"], doc["options"], kwargs.get("post_prompt", "")]
    return "\n".join(part.strip() for part in parts if part and part.strip())


def process_results(doc, results):
    match = _LETTER.search(results[0] or "")
    letter = match.group(1) if match else ""
    return {"accuracy": float(letter == str(doc["output"]).strip()[:1].upper())}
