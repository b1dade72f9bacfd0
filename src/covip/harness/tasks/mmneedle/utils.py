"""lmms-eval functions of our MMNeedle task. Image paths are relative to the unpacked archives, named
by the job in COVIP_BENCHMARK_DATA (covip.harness.runner). Exact match of (index, row, column)."""

import os
import re

from PIL import Image

_NUMBERS = re.compile(r"-?\d+")


def _root():
    return os.environ.get("COVIP_BENCHMARK_DATA", ".")


def doc_to_visual(doc):
    return [Image.open(os.path.join(_root(), p)).convert("RGB") for p in doc["image_paths"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return kwargs["instruction"].format(caption=doc["caption"]) + "\n" + kwargs["post_prompt"]


def parse_location(text):
    numbers = [int(n) for n in _NUMBERS.findall(text or "")]
    if numbers[:1] == [-1]:
        return (-1,)
    return tuple(numbers[:3])


def process_results(doc, results):
    return {"accuracy": float(parse_location(results[0]) == parse_location(str(doc["answer"])))}
