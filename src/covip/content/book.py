"""Benchmark content files by name: YAML beside this module, each replaceable by a user's file.

The config's `content:` section maps a name to the path of a replacement of the same shape (for a
translation, say); stages that use a content file take that path, and its text is part of the
stage's params, so editing it reruns the stage.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

CONTENT_NAMES = ("facts", "diagnostic_lines")


class ContentError(ValueError):
    """An unknown content name, or a replacement file that cannot be read."""


def _source(name: str, path: str | None) -> str:
    if name not in CONTENT_NAMES:
        raise ContentError(f"no content named '{name}'; known: {list(CONTENT_NAMES)}")
    if path is None:
        return (resources.files(__package__) / f"{name}.yaml").read_text(encoding="utf-8")
    file = Path(path)
    if not file.is_file():
        raise ContentError(f"content.{name}: replacement file {file} does not exist")
    return file.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def load_content(name: str, path: str | None = None) -> Any:
    """The parsed YAML of content file `name` (the packaged one, or the replacement at `path`)."""
    try:
        return yaml.safe_load(_source(name, path))
    except yaml.YAMLError as error:
        raise ContentError(f"content.{name} ({path or name + '.yaml'}): not valid YAML ({error})") from error


def content_fingerprint(overrides: dict[str, str] | None, *names: str) -> str:
    """Hash of the named content files' text as this run uses them, for Snakemake params."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0" + _source(name, (overrides or {}).get(name)).encode() + b"\0")
    return digest.hexdigest()[:16]
