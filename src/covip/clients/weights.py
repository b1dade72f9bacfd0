"""Model weights: where a registry entry's weights come from, fetching them once, finding them offline.

Rule download_models fetches every weights source the run needs, one job per source, before any job
that uses it starts; the jobs themselves then run with `HF_HUB_OFFLINE=1`, so a compute node without
network works and no two jobs race on the same multi-GB download. A source is:

- a hub repository: `org/name`, or `hf://org/name[@revision]`: huggingface_hub's `snapshot_download`
  into the hub cache of `HF_HOME` (config `weights.hf_home`); a hub dataset is
  `hf://datasets/org/name[@revision]` (huggingface_hub's own spelling; the authors' diagnostic sets
  in `diagnostic_sources` come this way, through the same rule and cache);
- `local://path` (or an existing path): a folder or file already on disk, standing in for the hub
  (the tests use it for the Gemma GGUF; on an air-gapped cluster, a copy of the weights);
- `open_clip://architecture/tag`: open_clip's pretrained weights for a tag such as `openai` (they
  come from the hub too, into the same cache).

An entry names its source with `weights:`; without it, a served entry or an in-process model whose
`model` is a hub id is fetched by that id, and an open_clip entry by its `pretrained` tag.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from covip.clients.backends import IN_PROCESS_BACKENDS
from covip.clients.spec import ModelSpec

HUB = "hf://"
HUB_DATASETS = "hf://datasets/"
LOCAL = "local://"
OPEN_CLIP = "open_clip://"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class WeightsError(RuntimeError):
    """Weights that cannot be fetched, or are not on disk where a job needs them."""


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # 'hub' | 'local' | 'open_clip'
    location: str  # repo id, path, or 'architecture/tag'
    revision: str | None = None
    repo_type: str = "model"  # a hub source: 'model' or 'dataset'

    @property
    def text(self) -> str:
        if self.kind == "hub":
            prefix = HUB_DATASETS if self.repo_type == "dataset" else HUB
            return f"{prefix}{self.location}" + (f"@{self.revision}" if self.revision else "")
        return f"{LOCAL if self.kind == 'local' else OPEN_CLIP}{self.location}"

    @property
    def slug(self) -> str:
        """A file name for this source (the download job's wildcard and marker file)."""
        readable = re.sub(r"[^A-Za-z0-9._-]+", "--", self.location.strip("/"))[-60:].strip("-.")
        digest = hashlib.sha256(self.text.encode()).hexdigest()[:10]
        return f"{self.kind}--{readable}--{digest}"


def parse_source(text: str) -> WeightsSource:
    """'hf://org/name@rev', 'hf://datasets/org/name@rev', 'org/name', 'local://path',
    'open_clip://arch/tag' or a path."""
    if text.startswith(HUB):
        dataset = text.startswith(HUB_DATASETS)
        repo, _, revision = text[len(HUB_DATASETS if dataset else HUB):].partition("@")
        if not _HUB_ID.fullmatch(repo):
            raise ValueError(f"'{text}': a hub source is hf://org/name[@revision] (a dataset: hf://datasets/org/name[@revision])")
        return WeightsSource("hub", repo, revision or None, "dataset" if dataset else "model")
    if text.startswith(LOCAL):
        return WeightsSource("local", text[len(LOCAL):])
    if text.startswith(OPEN_CLIP):
        arch, _, tag = text[len(OPEN_CLIP):].partition("/")
        if not arch or not tag:
            raise ValueError(f"weights '{text}': an open_clip source is open_clip://architecture/tag")
        return WeightsSource("open_clip", f"{arch}/{tag}")
    if os.path.exists(text) or not _HUB_ID.fullmatch(text):
        return WeightsSource("local", text)
    return WeightsSource("hub", text)


def source_of(spec: ModelSpec, built_here=lambda path: False) -> WeightsSource | None:
    """The weights an entry needs on disk before its job starts, or None (API models, stand-ins,
    models the workflow builds itself)."""
    if spec.weights:
        return parse_source(spec.weights)
    if spec.backend == "open_clip":
        tag = spec.pretrained
        if not tag or os.path.exists(tag) or os.sep in tag:
            return None  # random initialisation, or a checkpoint file given by path
        return WeightsSource("open_clip", f"{spec.model}/{tag}")
    if spec.serve is None and spec.backend not in IN_PROCESS_BACKENDS:
        return None
    if not spec.model or built_here(spec.model):
        return None
    source = parse_source(spec.model)
    return source if source.kind == "hub" else None  # a local path: nothing to fetch


def hub_cache(hf_home: str | None = None) -> str | None:
    """The hub cache folder under `hf_home` (None: huggingface_hub's own default, HF_HOME included)."""
    return str(Path(hf_home) / "hub") if hf_home else None


def fetch(source: WeightsSource, *, hf_home: str | None = None, offline: bool = False) -> str:
    """Put the weights on disk (or, `offline`, check that they are) and return their local path."""
    if source.kind == "local":
        path = Path(source.location).expanduser()
        if not path.exists():
            raise WeightsError(f"weights {source.text}: nothing at {path.resolve()}")
        return str(path.resolve())
    if source.kind == "open_clip":
        import open_clip.pretrained as pretrained

        arch, tag = source.location.split("/", 1)
        config = pretrained.get_pretrained_cfg(arch, tag)
        if not config:
            raise WeightsError(f"weights {source.text}: open_clip has no pretrained tag '{tag}' for '{arch}' "
                               f"(known: {pretrained.list_pretrained_tags_by_model(arch)})")
        try:
            return pretrained.download_pretrained(config, cache_dir=hub_cache(hf_home))
        except Exception as error:  # noqa: BLE001 - offline and not cached, network down, ...
            raise WeightsError(f"weights {source.text}: {type(error).__name__}: {error}") from error
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source.location, revision=source.revision, repo_type=source.repo_type,
                                 cache_dir=hub_cache(hf_home), local_files_only=offline)
    except Exception as error:  # noqa: BLE001 - huggingface_hub's many error types, one message
        hint = (" (offline: seed the hub cache first, or set weights.offline: false so rule download_models fetches it)"
                if offline else "")
        raise WeightsError(f"weights {source.text}: {type(error).__name__}: {error}{hint}") from error


def local_path(source: WeightsSource, hf_home: str | None = None) -> str:
    """Where already fetched weights are, never touching the network (what a job calls)."""
    return fetch(source, hf_home=hf_home, offline=True)


def download(source_text: str, *, hf_home: str | None = None, offline: bool = False) -> dict:
    """Rule download_models: fetch one source (or, `offline`, check it is on disk); what the marker holds."""
    import time

    source = parse_source(source_text)
    started = time.perf_counter()
    path = fetch(source, hf_home=hf_home, offline=offline)
    files = [path] if os.path.isfile(path) else [str(p) for p in Path(path).rglob("*") if p.is_file()]
    return {"source": source.text, "path": path, "files": len(files),
            "bytes": sum(os.path.getsize(f) for f in files), "seconds": round(time.perf_counter() - started, 3),
            "checked_only": offline}
