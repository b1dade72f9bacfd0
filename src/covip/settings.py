"""Helpers for stage settings dataclasses (one per stage, built from its config section)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def settings_from(cls: type[T], section: dict[str, Any] | None, where: str) -> T:
    """Build a settings dataclass from a config section; unknown keys fail with their path."""
    section = dict(section or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")
    return cls(**section)


def help_of(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
