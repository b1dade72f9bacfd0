"""Keep config/schemas/config.schema.yaml in step with the stage settings dataclasses.

Each stage's settings are a dataclass with defaults and help texts (the single source of truth).
The JSON schema that Snakemake validates the config with must say the same thing, so its stage
sections are generated from those dataclasses, and the backend enum of a registry entry from
`covip.clients.backends`: `covip config-schema` rewrites the blocks between the markers, and a test
fails when the committed file is stale.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from pathlib import Path

import yaml

# config section -> settings dataclass
STAGE_SETTINGS = {
    "concept_pool": "covip.stages.concepts:ConceptPoolSettings",
    "synthesis": "covip.stages.synthesis:SynthesisSettings",
    "filtering": "covip.stages.filtering:FilterSettings",
    "negatives": "covip.stages.negatives:NegativeSettings",
    "dialogues": "covip.stages.dialogues:DialogueSettings",
    "mcqa": "covip.stages.mcqa:MCQASettings",
    "splits": "covip.stages.splits:SplitSettings",
    "captioning": "covip.stages.captioning:CaptioningSettings",
    "capeval": "covip.stages.capeval:CapEvalSettings",
    "diagnostics": "covip.stages.diagnostics.settings:DiagnosticSettings",
    "training": "covip.training.settings:TrainingSettings",
    "controls": "covip.stages.controls.settings:ControlSettings",
    "human_eval": "covip.human_eval.settings:HumanEvalSettings",
    "general_benchmarks": "covip.stages.general.settings:GeneralSettings",
    "plan": "covip.planning.settings:PlanSettings",
}
BEGIN = "  # BEGIN GENERATED STAGE SECTIONS (covip config-schema)"
END = "  # END GENERATED STAGE SECTIONS"
SCHEMA_PATH = Path(__file__).resolve().parents[3] / "config" / "schemas" / "config.schema.yaml"


def settings_class(section: str) -> type:
    module, name = STAGE_SETTINGS[section].split(":")
    return getattr(importlib.import_module(module), name)


def _json_type(annotation) -> dict:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [_json_type(a) for a in typing.get_args(annotation)]
        merged: list[str] = []
        for option in options:
            kind = option.get("type", [])
            merged.extend(kind if isinstance(kind, list) else [kind])
        return {"type": sorted(set(merged))}
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        return {"type": "array"}
    if origin is dict or annotation is dict:
        return {"type": "object"}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(annotation))}
    return {
        bool: {"type": "boolean"},
        int: {"type": "integer"},
        float: {"type": "number"},
        str: {"type": "string"},
        type(None): {"type": "null"},
    }.get(annotation, {})


def section_schema(cls: type) -> dict:
    hints = typing.get_type_hints(cls)
    properties = {}
    defaults = {}
    for field in dataclasses.fields(cls):
        prop = _json_type(hints[field.name])
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            raise ValueError(f"{cls.__name__}.{field.name} has no default")
        if isinstance(default, tuple):
            default = list(default)
        prop["default"] = default
        defaults[field.name] = default
        if field.metadata.get("help"):
            prop["description"] = " ".join(field.metadata["help"].split())
        for key in ("minimum", "maximum", "enum"):
            if key in field.metadata:
                prop[key] = field.metadata[key]
        properties[field.name] = prop
    return {"type": "object", "additionalProperties": False, "default": {}, "properties": properties}


def generated_block() -> str:
    sections = {section: section_schema(settings_class(section)) for section in STAGE_SETTINGS}
    body = yaml.safe_dump(sections, sort_keys=False, width=100, allow_unicode=True)
    indented = "".join(f"  {line}\n" if line else "\n" for line in body.splitlines())
    return f"{BEGIN}\n{indented}{END}"


BACKENDS_BEGIN = "      # BEGIN GENERATED BACKENDS (covip config-schema)"
BACKENDS_END = "      # END GENERATED BACKENDS"


def backends_block() -> str:
    """The `backend` property of a registry entry: the enum of covip.clients.backends, described."""
    from covip.clients.backends import BACKENDS

    lines = [BACKENDS_BEGIN, "      backend:", f"        enum: [{', '.join(BACKENDS)}]", "        description: >"]
    for backend in BACKENDS.values():
        lines.append(f"          {backend.name} ({backend.kind}): {backend.summary};")
    return "\n".join(lines) + "\n" + BACKENDS_END


def _replace_block(text: str, begin: str, end: str, block: str) -> str:
    start, stop = text.index(begin), text.index(end) + len(end)
    return text[:start] + block + text[stop:]


def render(text: str) -> str:
    text = _replace_block(text, BACKENDS_BEGIN, BACKENDS_END, backends_block())
    return _replace_block(text, BEGIN, END, generated_block())
