"""Which lmms-eval model class drives a registry entry, and with which arguments.

- `openai` entries, and any policy the workflow serves itself (the job is given its base_url), go
  through lmms-eval's OpenAI-compatible chat model (`openai`): a served policy is just an endpoint.
- `transformers` entries run in the job's process on lmms-eval's own Qwen-VL chat classes
  (`qwen2_5_vl`, `qwen3_vl`), picked by the checkpoint's `model_type`. lmms-eval's generic
  `huggingface` class is not used: under transformers 5 it loads every model without its LM head and
  passes the processor a keyword transformers 5 refuses (checked with lmms-eval 0.7.3).
- `vllm` entries run in-process on lmms-eval's `vllm` chat class.

Anything else (Gemini, the offline stand-ins and reference policies) cannot be driven; the error names
the alternatives. Pure functions: the parse-time checks and the job use the same answer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.clients.spec import ModelSpec

# registry backend -> how the harness reaches it
ROUTES = {"openai": "api", "transformers": "in_process", "vllm": "in_process"}
# checkpoint model_type -> lmms-eval chat model class (in-process transformers)
QWEN_CLASSES = {"qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl"}
# Hub ids whose model_type can be told from the name when the checkpoint is not on disk yet.
_NAME_HINTS = (("qwen3-vl", "qwen3_vl"), ("qwen3_vl", "qwen3_vl"), ("qwen2.5-vl", "qwen2_5_vl"), ("qwen2_5_vl", "qwen2_5_vl"))
SELF_HOSTED_KEY = "EMPTY"  # what an OpenAI-compatible server that checks no key is sent


class UndrivableModelError(ValueError):
    """A registry entry the harness cannot run; the message names the alternatives."""


@dataclass(frozen=True)
class HarnessModel:
    """One lmms-eval model: its registered name, constructor arguments, and how it is reached."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    route: str = "api"  # 'api' | 'in_process' | 'served'

    def public_args(self) -> dict[str, Any]:
        """The arguments without the API key (for logs and result rows)."""
        return {k: v for k, v in self.args.items() if k != "api_key"}


def alternatives() -> str:
    return (f"backends {sorted(ROUTES)} (transformers: a Qwen2.5-VL or Qwen3-VL checkpoint, model types "
            f"{sorted(QWEN_CLASSES)}), or serve the model behind an OpenAI-compatible endpoint "
            "(backend openai with a base_url)")


def model_type_of(model: str) -> str | None:
    """The `model_type` of a local checkpoint's config.json, else a hint from a hub id, else None."""
    config = Path(model) / "config.json"
    if config.is_file():
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    lowered = model.lower()
    return next((kind for hint, kind in _NAME_HINTS if hint in lowered), None)


def check_drivable(spec: ModelSpec, model_type: str | None, where: str) -> str:
    """The route ('api' or 'in_process') of `spec`, or UndrivableModelError naming the alternatives.

    `model_type` (transformers only) is the checkpoint's model_type as far as it is known at parse time."""
    route = ROUTES.get(spec.backend)
    if route is None:
        raise UndrivableModelError(f"{where}: models.{spec.name} has backend '{spec.backend}', which lmms-eval "
                                   f"cannot drive; use {alternatives()}")
    if spec.backend == "openai" and not spec.model:
        raise UndrivableModelError(f"{where}: models.{spec.name} needs a `model` name to send to the endpoint")
    if spec.backend == "transformers" and model_type not in QWEN_CLASSES:
        raise UndrivableModelError(
            f"{where}: models.{spec.name} ({spec.model}) is a transformers model of type {model_type!r}; lmms-eval "
            f"runs {sorted(QWEN_CLASSES)} in-process (set general_benchmarks.model_types.{spec.name} if the "
            f"checkpoint is one of them but not on disk yet), or use {alternatives()}")
    return route


def _device(spec: ModelSpec) -> str:
    if spec.device != "auto":
        return spec.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def harness_model(spec: ModelSpec, *, model_type: str | None = None, base_url: str | None = None,
                  batch_size: int = 1, extra: dict[str, Any] | None = None) -> HarnessModel:
    """The lmms-eval model for `spec`. `base_url` set means a workflow-served policy: whatever its
    backend, it is reached as an OpenAI-compatible endpoint. `extra` is passed to the class verbatim."""
    extra = dict(extra or {})
    if base_url is not None or spec.backend == "openai":
        key = os.environ.get(spec.key_env, "") if spec.key_env else SELF_HOSTED_KEY
        args = {"model_version": spec.model, "base_url": base_url or spec.base_url, "api_key": key,
                "num_concurrent": spec.concurrency, "timeout": int(spec.timeout_s), "max_retries": spec.max_retries}
        return HarnessModel("openai", {**args, **extra}, "served" if base_url is not None else "api")
    check_drivable(spec, model_type, where="general_benchmark")
    if spec.backend == "transformers":
        device = _device(spec)
        args = {"pretrained": spec.model, "device": device, "device_map": device, "batch_size": batch_size}
        return HarnessModel(QWEN_CLASSES[model_type], {**args, **extra}, "in_process")
    args = {"model": spec.model, "tensor_parallel_size": max(1, spec.gpus), "batch_size": batch_size,
            "is_qwen3_vl": model_type == "qwen3_vl"}
    return HarnessModel("vllm", {**args, **extra}, "in_process")
