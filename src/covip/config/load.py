"""The workflow's config as Snakemake would build it, for the commands that read it outside a run
(`covip preflight`, `covip plan`): the embedded default under the given files unless one of them says
`standalone: true`, later files merged over earlier ones key by key, then validated against the
config schema (which fills in every default) and checked by `covip.config.prepare.prepare`.

One exception to key-by-key merging, here and in the workflow (rules/common.smk): a file that gives
a registry entry another `backend` replaces that entry instead of merging into it, so switching
`image_generator` from the compositor to Gemini does not carry the compositor's `options` along
(the config check would rightly refuse them for Gemini)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from covip.config.prepare import Prepared, prepare, standalone_config

ROOT = Path(__file__).resolve().parents[3]


def merge(base: dict, overlay: Mapping) -> dict:
    """`overlay` over `base`, nested mappings merged key by key (Snakemake's --configfile semantics)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _files(configfiles: Sequence[str | Path], root: Path) -> list[str]:
    files = [str(f) for f in configfiles]
    return files if standalone_config(files) else [str(root / "config" / "config.yaml"), *files]


def switched_entries(configfiles: Sequence[str | Path], root: str | Path = ROOT) -> dict[str, dict]:
    """Registry entries a later file gives another backend: name -> the entry as the files from that
    one on define it (what replaces the key-by-key merge of the whole stack)."""
    entries: dict[str, dict] = {}
    switched: set[str] = set()
    for path in _files(configfiles, Path(root)):
        models = (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("models") or {}
        for name, entry in models.items():
            entry = dict(entry or {})
            if name in entries and "backend" in entry and entry["backend"] != entries[name].get("backend"):
                entries[name] = copy.deepcopy(entry)
                switched.add(name)
            else:
                entries[name] = merge(entries.get(name, {}), entry)
    return {name: entries[name] for name in sorted(switched)}


def load_config(configfiles: Sequence[str | Path], root: str | Path = ROOT) -> dict:
    """The merged, schema-validated config (defaults filled in) of `configfiles`."""
    from snakemake.utils import validate

    root = Path(root)
    config: dict = {}
    for path in _files(configfiles, root):
        config = merge(config, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    config.setdefault("models", {}).update(switched_entries(configfiles, root))
    validate(config, str(root / "config" / "schemas" / "config.schema.yaml"))
    return config


def load_prepared(configfiles: Sequence[str | Path], root: str | Path = ROOT) -> Prepared:
    """`load_config`, then the parse-time checks and per-rule answers of `prepare`."""
    return prepare(load_config(configfiles, root), Path(root))
