"""The model registry: named endpoints from the config, built lazily into cached, accounted clients.

Stages ask for a model by its role name (`dialogue_writer`, `verifier`, ...). The registry entry says
which backend serves it (covip.clients.backends); this module builds the backend on first use and
wraps it with the response cache and usage counters (covip.clients.cached), after checking its API key.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any

from covip.clients.backends import backend_target
from covip.clients.base import ChatModel, ImageEmbedder, ImageGenerator
from covip.clients.cache import ResponseCache
from covip.clients.cached import CachedChatModel, CachedEmbedder, CachedImageGenerator
from covip.clients.spec import ModelSpec, check_credentials


# {entry: base_url} of the model servers the workflow started for a shell rule's processes (JSON;
# `covip gpu-run` sets it, covip.serving); a script rule's StageRun passes its servers directly.
SERVED_ENV = "COVIP_SERVED"


def served_from_env() -> dict[str, str]:
    text = os.environ.get(SERVED_ENV)
    return json.loads(text) if text else {}


class ServerNotStartedError(RuntimeError):
    """An entry the workflow serves was asked for, but no server was started for it in this job."""


class ModelRegistry:
    """Builds each named model once, on first use.

    `served` maps the entries the workflow serves (`serve:`) to the base_url of the server started for
    this job; such an entry is an OpenAI-compatible endpoint at that address.
    """

    def __init__(self, models: dict[str, dict[str, Any]], cache_path: str | None = None,
                 served: dict[str, str] | None = None, *, job: str | None = None, rule: str | None = None):
        self.specs = {name: ModelSpec.from_config(name, entry) for name, entry in models.items()}
        for name, url in (served or {}).items():
            if name in self.specs:
                self.specs[name] = dataclasses.replace(self.specs[name], base_url=url)
        self._cache_path = cache_path
        self._owner = {"job": job, "rule": rule}  # named in the cache journal (usage of a killed job)
        self._cache: ResponseCache | None = None
        self._built: dict[str, Any] = {}

    def spec(self, name: str) -> ModelSpec:
        if name not in self.specs:
            raise KeyError(f"no model named '{name}' in the config's models registry (have: {sorted(self.specs)})")
        return self.specs[name]

    def _to_build(self, name: str) -> ModelSpec:
        """The entry to build a client for: its key present, and its server started when it is served."""
        spec = self.spec(name)
        if spec.serve is not None and not spec.base_url:
            raise ServerNotStartedError(
                f"models.{name} is served by the workflow (`serve:`), but this job started no server for it; "
                "a job starts the servers of the roles its rule calls (params.models)")
        check_credentials(spec)
        return spec

    def _response_cache(self, spec: ModelSpec) -> ResponseCache | None:
        if not spec.uses_cache or self._cache_path is None:
            return None
        if self._cache is None:
            self._cache = ResponseCache(self._cache_path, **self._owner)
        return self._cache

    def close(self) -> None:
        """Close the response cache's journal (sync it and mark it finished)."""
        if self._cache is not None:
            self._cache.close()

    def chat(self, name: str) -> CachedChatModel:
        if name not in self._built:
            spec = self._to_build(name)
            self._built[name] = CachedChatModel(spec, _build_chat_backend(spec), self._response_cache(spec))
        return self._built[name]

    def image_generator(self, name: str) -> CachedImageGenerator:
        if name not in self._built:
            spec = self._to_build(name)
            self._built[name] = CachedImageGenerator(spec, _build_image_backend(spec), self._response_cache(spec))
        return self._built[name]

    def embedder(self, name: str) -> ImageEmbedder:
        if name not in self._built:
            spec = self._to_build(name)
            self._built[name] = CachedEmbedder(spec, _build_embedder_backend(spec), self._response_cache(spec))
        return self._built[name]


def _build(capability: str, spec: ModelSpec):
    module, cls = backend_target(capability, spec.backend, where=f"models.{spec.name}").split(":")
    return getattr(importlib.import_module(module), cls)(spec)


def _build_chat_backend(spec: ModelSpec) -> ChatModel:
    return _build("chat", spec)


def _build_image_backend(spec: ModelSpec) -> ImageGenerator:
    return _build("image", spec)


def _build_embedder_backend(spec: ModelSpec) -> ImageEmbedder:
    return _build("embed", spec)
