"""Code fingerprints, so that editing package code a stage runs makes Snakemake rerun that stage.

Snakemake's `code` rerun trigger sees a rule's own script, not the modules that script imports. Each
rule therefore puts `code_fingerprint("covip.stages.dialogues", ...)` in its params: a hash of the
source of those modules and of every `covip` module they import, transitively (found by reading
import statements, without importing anything), plus the data file a module loads as its own
(`facts.yaml` beside `facts.py`). An edit to any of them changes the params, and
Snakemake's `params` trigger reruns the stage and everything downstream; an edit elsewhere in the
package changes nothing.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

PACKAGE = "covip"


@lru_cache(maxsize=None)
def _package_root() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    return Path(spec.origin).parent


@lru_cache(maxsize=None)
def _module_file(module: str) -> Path | None:
    """The source file of a `covip` module, found on disk: `importlib.util.find_spec` would import
    the parent package of a dotted name (covip.training.trainer pulls in transformers, seconds per
    dry run) when the name turns out to be a function imported from a module."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = _package_root().joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=None)
def _imports_of(module: str, path: Path) -> frozenset[str]:
    """Names of `covip` modules imported by a module's source (absolute and relative imports).

    Cached: one Snakemake parse fingerprints dozens of rules whose closures share most modules, and
    reading each source once keeps the dry run of the paper config fast (BENCHMARKS.md)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            # `from covip.local import compositor` imports a submodule, not just a name.
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return frozenset(name for name in found if name == PACKAGE or name.startswith(PACKAGE + "."))


def imported_modules(script: str | Path) -> frozenset[str]:
    """The `covip` modules (and names) a script outside the package imports, e.g. a workflow script."""
    path = Path(script)
    return _imports_of("__script__", path)


def module_closure(*modules: str) -> dict[str, Path]:
    """Every `covip` module reachable by imports from `modules`, with its source file."""
    seen: dict[str, Path] = {}
    stack = list(modules)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        try:
            path = _module_file(name)
        except (ImportError, ValueError):
            path = None
        if path is None or path.suffix != ".py":
            continue  # a name imported from a module, not a module itself
        seen[name] = path
        # Importing `covip.a.b` runs the `covip.a` and `covip` package initialisers too.
        parts = name.split(".")
        stack.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        stack.extend(_imports_of(name, path))
    return seen


@lru_cache(maxsize=None)
def code_fingerprint(*modules: str) -> str:
    """A short hash of the source of `modules` and all `covip` modules they import."""
    digest = hashlib.sha256()
    for name, path in sorted(module_closure(*modules).items()):
        digest.update(name.encode() + b"\0" + _source_digest(path))
    return digest.hexdigest()[:16]


@lru_cache(maxsize=None)
def _source_digest(path: Path) -> bytes:
    """A module's source, and the data file it loads as its own (covip/content/facts.yaml beside
    facts.py), hashed once per parse however many fingerprints include the module."""
    digest = hashlib.sha256(path.read_bytes())
    data = path.with_suffix(".yaml")
    if data.is_file():
        digest.update(b"\0" + data.read_bytes())
    return digest.digest()
