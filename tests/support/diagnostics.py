"""A concept pool whose people are told apart by colour alone, and the LSD / LAR / ITR sets built from it
(the session fixture `diagnostic_sets` in tests/conftest.py): set generation, answering and scoring
tests share one build."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from covip.core.io import encode_png
from covip.core.names import DIAGNOSTIC_TASKS
from covip.stages.diagnostics.sets import build_diagnostic_set
from covip.stages.diagnostics.settings import DiagnosticSettings

PERSON_COLOURS = {"p0": (255, 0, 0), "p1": (0, 200, 0), "p2": (0, 0, 255), "p3": (255, 0, 255), "p4": (0, 255, 255)}
OBJECT_COLOURS = {"o0": (255, 140, 0), "o1": (140, 0, 255)}
ALL_COLOURS = PERSON_COLOURS | OBJECT_COLOURS

SET_SETTINGS = DiagnosticSettings(items_per_task=6, image_size=128)
SET_SEED = 5


def disc(colour) -> bytes:
    image = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((8, 8, 88, 88), fill=(*colour, 255))
    return encode_png(image)


def disc_pool(colours=ALL_COLOURS) -> list[dict]:
    """Concept rows (schemas.CONCEPTS): one coloured disc per concept; 'p*' are persons, 'o*' objects."""
    return [
        {"concept_id": cid, "category": "person" if cid.startswith("p") else "object", "kind": "disc", "source": "test",
         "name": f"Pool{cid}", "image": disc(colour), "width": 96, "height": 96}
        for cid, colour in colours.items()
    ]


def build_sets(prompts) -> dict[str, list[dict]]:
    """task -> the items of its set on `disc_pool()` (SET_SETTINGS, SET_SEED)."""
    return {task: build_diagnostic_set(task, disc_pool(), SET_SETTINGS, seed=SET_SEED, progress_file=io.StringIO(),
                                       prompts=prompts)
            for task in DIAGNOSTIC_TASKS}
