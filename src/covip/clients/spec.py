"""One entry of the config's `models:` registry, as the registry, the backends and the workflow see it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from covip.clients.backends import BACKENDS, STAND_IN_BACKENDS, UnknownBackendError, resolved_options
from covip.clients.base import MissingCredentialsError
from covip.clients.dialects import DIALECTS, check_reasoning_effort, check_sampling, resolve_dialect


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the config's `models:` registry."""

    name: str
    backend: str
    model: str = ""
    base_url: str | None = None
    api_dialect: str | None = None  # backend 'openai': 'openai' | 'vllm' | 'llama_cpp' (covip.clients.dialects)
    api_key_env: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    structured_output: str = "json_schema"  # 'json_schema' | 'json_object' | 'none'
    concurrency: int = 4
    requests_per_minute: float | None = None  # per job; None: unlimited
    tokens_per_minute: float | None = None  # per job, estimated before sending (ratelimit.estimate_tokens)
    timeout_s: float = 120.0
    max_retries: int = 4
    pretrained: str | None = None  # open_clip weights tag or checkpoint path
    device: str = "auto"
    gpus: int = 0  # GPUs a job running this model in-process needs (Snakemake resource gpu)
    stand_in: bool | None = None  # None: offline stand-ins and reference policies; set true for e.g. a random-weight model
    cache: bool | None = None  # None or true: every call goes through the response cache; false: never
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any]) -> "ModelSpec":
        known = set(cls.__dataclass_fields__) - {"name"}
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"models.{name}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        if entry.get("backend") not in BACKENDS:
            raise UnknownBackendError(f"models.{name}.backend: unknown backend {entry.get('backend')!r} "
                                      f"(choose from {sorted(BACKENDS)})")
        spec = cls(name=name, **entry)
        spec.check()
        return spec

    def check(self) -> None:
        """What can be checked of this entry alone: its options against those its backend declares, and
        for backend 'openai' its dialect, its own sampling keys and reasoning_effort (each error names
        the entry, the key and the known alternatives)."""
        where = f"models.{self.name}"
        options = self.resolved_options()
        if self.api_dialect is not None and self.backend != "openai":
            raise ValueError(f"{where}.api_dialect: only entries of backend 'openai' have a dialect "
                             f"(this one is '{self.backend}')")
        if self.backend == "openai":
            if self.api_dialect is not None and self.api_dialect not in DIALECTS:
                raise ValueError(f"{where}.api_dialect: unknown dialect {self.api_dialect!r} (choose from {list(DIALECTS)})")
            check_sampling(self.sampling, self.dialect, self.model, where)
            check_reasoning_effort(options.get("reasoning_effort"), self.dialect, self.model, where)

    def resolved_options(self) -> dict[str, Any]:
        """This entry's `options:` over the defaults its backend declares (covip.clients.backends); a key
        the backend does not read is an error naming the entry, the key and the known keys."""
        return resolved_options(self.backend, self.options, f"models.{self.name}")

    @property
    def dialect(self) -> str | None:
        """The API dialect of an 'openai' entry (explicit, else 'openai' without a base_url and 'vllm'
        with one: covip.clients.dialects); None for other backends."""
        return resolve_dialect(self.api_dialect, self.base_url) if self.backend == "openai" else None

    @property
    def is_local(self) -> bool:
        """True for offline stand-ins (code standing in for a model)."""
        return self.backend in STAND_IN_BACKENDS

    @property
    def identity(self) -> str:
        """What produced a row: registry name, backend and model, e.g. 'verifier:openai:Qwen/Qwen3-VL-8B'
        (with '+lora:<adapter>' when a LoRA adapter is applied on the model)."""
        base = f"{self.name}:{self.backend}:{self.model}" if self.model else f"{self.name}:{self.backend}"
        adapter = self.options.get("adapter")
        return f"{base}+lora:{adapter}" if adapter else base

    @property
    def key_env(self) -> str | None:
        """The environment variable holding this entry's API key, or None when it needs none."""
        backend = BACKENDS.get(self.backend)
        if backend is None or backend.kind != "api":
            return None
        if self.api_key_env:
            return self.api_key_env
        if self.backend == "openai" and self.base_url:
            return None  # a self-hosted server (vLLM, llama.cpp) that takes any key
        return backend.key_env

    @property
    def uses_cache(self) -> bool:
        return True if self.cache is None else self.cache

    @property
    def is_stand_in(self) -> bool:
        """True for offline stand-ins, reference policies and models marked `stand_in: true`."""
        return self.is_local if self.stand_in is None else self.stand_in


def is_stand_in(model) -> bool:
    """Whether a built model (anything with a registry `spec`) is a stand-in; False if it has no spec."""
    spec = getattr(model, "spec", None)
    return bool(spec.is_stand_in) if isinstance(spec, ModelSpec) else False


def check_credentials(spec: ModelSpec) -> None:
    """Fail before any work when a remote backend's key variable is unset (never print the key)."""
    env = spec.key_env
    if env is None:
        return
    if not os.environ.get(env):
        raise MissingCredentialsError(
            f"models.{spec.name} uses backend '{spec.backend}' but the environment variable {env} is not set; "
            f"export it (the key is read from the environment only and never written anywhere)"
        )
