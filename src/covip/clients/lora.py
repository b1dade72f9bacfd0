"""LoRA adapters on a base model, as the in-process backends load them (registry option `adapter`).

A registry entry either names a merged model in `model`, or names the base model in `model` and a
peft LoRA adapter in `options.adapter`: a local folder with `adapter_config.json` and the adapter
weights, or a hub id already in the local cache (a run never downloads). The transformers backend
applies it with peft; the vLLM backend with `enable_lora` and a `LoRARequest` on every generate call.
The adapter's files key the response cache (covip.clients.cache.model_fingerprint), so a retrained
adapter at the same path is never answered from the cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from covip.clients.base import BackendUnavailableError

# LoRA ranks vLLM's engine accepts for `max_lora_rank`.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_path(adapter: str | None) -> str | None:
    """The local folder of an adapter: the path itself, or the cached hub snapshot of a hub id; None
    when it is neither (not downloaded)."""
    if not adapter:
        return None
    if os.path.isdir(adapter):
        return adapter
    try:  # a hub id: its cached snapshot, never a download
        from huggingface_hub import snapshot_download

        return snapshot_download(adapter, local_files_only=True)
    except Exception:  # noqa: BLE001 - not a hub id, or not cached
        return None


def require_adapter(adapter: str, where: str) -> tuple[str, dict[str, Any]]:
    """(local folder, adapter_config.json contents) of an adapter, or BackendUnavailableError naming
    `where` (e.g. 'models.policy.options.adapter')."""
    path = adapter_path(adapter)
    if path is None:
        raise BackendUnavailableError(
            f"{where}: LoRA adapter {adapter!r} is neither a local folder nor a hub id in the local cache "
            "(download it first, e.g. `huggingface-cli download ID`)"
        )
    config_file = Path(path) / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BackendUnavailableError(f"{where}: {path} is not a peft LoRA adapter ({config_file}: {error})") from error
    return path, config


def vllm_rank(config: dict[str, Any], where: str) -> int:
    """The smallest rank vLLM accepts that holds the adapter's `r` (its `max_lora_rank`)."""
    rank = int(config.get("r") or 0)
    for allowed in VLLM_RANKS:
        if rank <= allowed:
            return allowed
    raise BackendUnavailableError(f"{where}: LoRA rank {rank} exceeds vLLM's largest ({VLLM_RANKS[-1]})")
