"""The model registry: named endpoints from the config, built lazily into cached, accounted clients.

Stages ask for a model by its role name (`dialogue_writer`, `verifier`, ...). The registry entry says
which backend serves it; this module builds the backend on first use, wraps it with the response
cache and usage counters, and checks API keys before any work starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import threading
import time
import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
from tqdm import tqdm

from covip.clients.base import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    ImageEmbedder,
    ImageGenerator,
    ImageRequest,
    ImageResponse,
    MissingCredentialsError,
    Usage,
)
from covip.clients.cache import ResponseCache, request_key
from covip.clients.ratelimit import RateLimiter, estimate_tokens

# Backends that run offline on this machine; the report marks their numbers as produced by a
# stand-in. They go through the response cache like every other backend (keyed by a fingerprint of
# their code), so a rerun of a finished workflow makes no model call at all.
LOCAL_BACKENDS = {
    "local_compositor",
    "local_pixel_verifier",
    "local_color_texture",
    "local_facts_writer",
    "local_lexical_judge",
    "local_ngram_judge",
    "reference_oracle",
    "reference_context_dump",
    "reference_blind",
    "reference_looking",
}
# Backends that run a real model in this process (no API key, but worth caching: generation is slow).
IN_PROCESS_MODEL_BACKENDS = {"transformers", "vllm", "open_clip"}
REMOTE_BACKENDS = {"openai", "gemini"}
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "gemini": "GEMINI_API_KEY"}


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the config's `models:` registry."""

    name: str
    backend: str
    model: str = ""
    base_url: str | None = None
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
            raise ValueError(f"models.{name}: unknown key(s) {sorted(unknown)}")
        return cls(name=name, **entry)

    def options_with_defaults(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """This entry's backend options over `defaults`; a key the backend does not know is an error."""
        unknown = sorted(set(self.options) - set(defaults))
        if unknown:
            raise ValueError(f"models.{self.name}.options: unknown key(s) {unknown}; known: {sorted(defaults)}")
        return {**defaults, **self.options}

    @property
    def is_local(self) -> bool:
        return self.backend in LOCAL_BACKENDS

    @property
    def identity(self) -> str:
        """What produced a row: registry name, backend and model, e.g. 'verifier:openai:Qwen/Qwen3-VL-8B'."""
        return f"{self.name}:{self.backend}:{self.model}" if self.model else f"{self.name}:{self.backend}"

    @property
    def key_env(self) -> str | None:
        if self.backend not in REMOTE_BACKENDS:
            return None
        if self.api_key_env:
            return self.api_key_env
        if self.backend == "openai" and self.base_url:
            return None  # a self-hosted server (vLLM, llama.cpp) that takes any key
        return DEFAULT_KEY_ENV[self.backend]

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


@dataclass
class UsageCounter:
    requests: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, cached: bool, failed: bool, usage: Usage, seconds: float) -> None:
        with self._lock:
            self.requests += 1
            self.cache_hits += int(cached)
            self.failures += int(failed)
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self.seconds += seconds

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def _error_response(model: str, error: BaseException) -> ChatResponse:
    return ChatResponse(None, model, error=f"{type(error).__name__}: {error}")


class CachedChatModel:
    """Wraps a chat backend with the shared response cache, rate limits and usage counters.

    Every answered request is committed to the cache the moment it returns, so a crash never loses
    a finished call; a failed call is counted and returned with `error` set, never cached.
    """

    def __init__(self, spec: ModelSpec, inner: ChatModel, cache: ResponseCache | None, key_context: dict | None = None):
        self.spec, self.inner, self.cache = spec, inner, cache
        self.identity = spec.identity
        self.usage = UsageCounter()
        self.key_context = key_context if key_context is not None else cache_context(spec)
        self.limiter = RateLimiter(spec.requests_per_minute, spec.tokens_per_minute)

    def complete(self, request: ChatRequest) -> ChatResponse:
        request = self._with_default_sampling(request)
        key = self._key(request)
        if (hit := self._cached(key)) is not None:
            return hit
        return self._call(request, key)

    def _call(self, request: ChatRequest, key: str | None) -> ChatResponse:
        """One real call: wait for the rate limit, call the backend, count and record the answer."""
        self.limiter.wait(estimate_tokens(request))
        start = time.perf_counter()
        try:
            response = self.inner.complete(request)
        except Exception as error:  # noqa: BLE001 - recorded on the row, never hidden
            response = _error_response(self.spec.model, error)
        response.latency_s = time.perf_counter() - start
        self._record(key, response)
        return response

    def complete_many(
        self, requests: list[ChatRequest], *, desc: str = "requests", progress_file=None, concurrency: int | None = None
    ) -> list[ChatResponse]:
        """Answer many requests, results in input order.

        Cached answers come from one bulk lookup; identical requests are sent once. The rest go to the
        backend batched when it can batch (transformers, vLLM: `complete_batch`), as asyncio tasks
        when it has an async client (openai: `acomplete`), else on a thread pool; concurrency is
        bounded by `concurrency` (default: the registry entry's) and the entry's rate limits.
        """
        requests = [self._with_default_sampling(r) for r in requests]
        keys = [self._key(r) for r in requests]
        results: list[ChatResponse | None] = list(self._cached_many(keys))
        # Identical requests (same key) are sent once; the copies are answered by the first.
        first_of: dict[str, int] = {}
        todo, copies = [], []
        for index, result in enumerate(results):
            if result is not None:
                continue
            key = keys[index]
            if key is not None and key in first_of:
                copies.append((index, first_of[key]))
            else:
                if key is not None:
                    first_of[key] = index
                todo.append(index)
        bar = tqdm(total=len(requests), initial=len(requests) - len(todo) - len(copies), desc=desc,
                   file=progress_file, mininterval=1.0, ascii=True)
        workers = max(1, concurrency or self.spec.concurrency)
        if todo:
            if getattr(self.inner, "complete_batch", None) is not None:
                self._run_batched(requests, keys, todo, results, bar)
            elif getattr(self.inner, "acomplete", None) is not None and not _loop_running():
                asyncio.run(self._run_async(requests, keys, todo, results, bar, workers))
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    futures = {index: pool.submit(self._call, requests[index], keys[index]) for index in todo}
                    for index, future in futures.items():
                        results[index] = future.result()
                        bar.update()
        for index, source in copies:
            answer = results[source]
            if answer is not None and answer.ok:
                self.usage.add(cached=True, failed=False, usage=Usage(), seconds=0.0)
                results[index] = ChatResponse(answer.text, answer.model, Usage(), cached=True)
            else:
                results[index] = answer
            bar.update()
        bar.close()
        return results  # type: ignore[return-value]

    def _run_batched(self, requests, keys, todo, results, bar) -> None:
        size = max(1, int(self.spec.options.get("batch_size", 8)))
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            for index in chunk:
                self.limiter.wait(estimate_tokens(requests[index]))
            began = time.perf_counter()
            try:
                answers = self.inner.complete_batch([requests[i] for i in chunk])
            except Exception as error:  # noqa: BLE001 - the whole batch failed; record it per row
                answers = [_error_response(self.spec.model, error) for _ in chunk]
            elapsed = (time.perf_counter() - began) / max(1, len(chunk))
            for index, response in zip(chunk, answers):
                response.latency_s = response.latency_s or elapsed
                self._record(keys[index], response)
                results[index] = response
            bar.update(len(chunk))

    async def _run_async(self, requests, keys, todo, results, bar, workers: int) -> None:
        """Send `todo` as asyncio tasks on one async client, at most `workers` in flight."""
        gate = asyncio.Semaphore(workers)
        async with self.inner.async_client(workers) as client:

            async def one(index: int) -> None:
                async with gate:
                    await self.limiter.wait_async(estimate_tokens(requests[index]))
                    start = time.perf_counter()
                    try:
                        response = await self.inner.acomplete(client, requests[index])
                    except Exception as error:  # noqa: BLE001 - recorded on the row, never hidden
                        response = _error_response(self.spec.model, error)
                    response.latency_s = time.perf_counter() - start
                    self._record(keys[index], response)  # committed now: a crash loses no finished call
                    results[index] = response
                    bar.update()

            await asyncio.gather(*(one(index) for index in todo))

    def _key(self, request: ChatRequest) -> str | None:
        if self.cache is None:
            return None
        return request_key(self.spec.backend, self.spec.model, request, self.key_context)

    def _cached(self, key: str | None) -> ChatResponse | None:
        """A stored response for `key` (counted as a cache hit), or None."""
        hit = self.cache.get(key) if key is not None else None
        return None if hit is None else self._hit(hit[0])

    def _cached_many(self, keys: list[str | None]) -> list[ChatResponse | None]:
        if self.cache is None:
            return [None] * len(keys)
        found = self.cache.get_many([key for key in keys if key is not None])
        return [self._hit(found[key][0]) if key in found else None for key in keys]

    def _hit(self, payload: dict) -> ChatResponse:
        self.usage.add(cached=True, failed=False, usage=Usage(), seconds=0.0)
        return ChatResponse(payload["text"], payload["model"], Usage(**payload["usage"]), cached=True)

    def _record(self, key: str | None, response: ChatResponse) -> None:
        """Count a fresh response, and store it when it succeeded (failures are retried next run)."""
        self.usage.add(cached=False, failed=not response.ok, usage=response.usage, seconds=response.latency_s)
        if key is not None and response.ok:
            usage = {"prompt_tokens": response.usage.prompt_tokens, "completion_tokens": response.usage.completion_tokens}
            self.cache.put(key, self.spec.backend, self.spec.model, {"text": response.text, "model": response.model, "usage": usage})

    def _with_default_sampling(self, request: ChatRequest) -> ChatRequest:
        """The endpoint's sampling defaults from the registry, under what the stage asked for."""
        if not self.spec.sampling:
            return request
        sampling = {**self.spec.sampling, **request.sampling}
        return ChatRequest(request.messages, sampling, request.response_schema, request.task, request.seed)


def _loop_running() -> bool:
    """Whether this thread already runs an event loop (then asyncio.run cannot be used)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class CachedImageGenerator:
    def __init__(self, spec: ModelSpec, inner: ImageGenerator, cache: ResponseCache | None):
        self.spec, self.inner, self.cache = spec, inner, cache
        self.identity = spec.identity
        self.usage = UsageCounter()
        self.key_context = cache_context(spec)
        self.limiter = RateLimiter(spec.requests_per_minute, spec.tokens_per_minute)

    def generate(self, request: ImageRequest) -> ImageResponse:
        key = request_key(self.spec.backend, self.spec.model, request, self.key_context) if self.cache is not None else None
        if key is not None and (hit := self.cache.get(key)) is not None:
            payload, blob = hit
            self.usage.add(cached=True, failed=False, usage=Usage(), seconds=0.0)
            return ImageResponse(blob, payload["model"], payload.get("text", ""), payload.get("layout"), cached=True)
        self.limiter.wait(len(request.instruction) // 4)
        start = time.perf_counter()
        try:
            response = self.inner.generate(request)
        except Exception as error:  # noqa: BLE001
            response = ImageResponse(None, self.spec.model, error=f"{type(error).__name__}: {error}")
        response.latency_s = time.perf_counter() - start
        self.usage.add(cached=False, failed=not response.ok, usage=response.usage, seconds=response.latency_s)
        if key is not None and response.ok:
            payload = {"model": response.model, "text": response.text, "layout": response.layout}
            self.cache.put(key, self.spec.backend, self.spec.model, payload, response.image)
        return response


class CachedEmbedder:
    """Wraps an image embedder with the response cache: one entry per (model, image content)."""

    def __init__(self, spec: ModelSpec, inner: ImageEmbedder, cache: ResponseCache | None):
        self.spec, self.inner, self.cache = spec, inner, cache
        self.identity = getattr(inner, "identity", spec.identity)
        self.usage = UsageCounter()
        self.key_context = cache_context(spec)

    def __getattr__(self, name: str):  # describe(), batch_size, ... of the wrapped embedder
        if name == "inner":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _key(self, image: bytes) -> str:
        blob = f"{self.spec.backend}\0{self.spec.model}\0{sorted(self.key_context.items())}\0".encode()
        return "embed:" + hashlib.sha256(blob + hashlib.sha256(image).digest()).hexdigest()

    def embed(self, images: list[bytes]) -> np.ndarray:
        if self.cache is None:
            vectors = self.inner.embed(images)
            for _ in images:
                self.usage.add(cached=False, failed=False, usage=Usage(), seconds=0.0)
            return vectors
        keys = [self._key(image) for image in images]
        found = self.cache.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        fresh: dict[int, np.ndarray] = {}
        if missing:
            start = time.perf_counter()
            vectors = np.asarray(self.inner.embed([images[i] for i in missing]), dtype=np.float32)
            seconds = (time.perf_counter() - start) / len(missing)
            for row, index in enumerate(missing):
                fresh[index] = vectors[row]
                self.usage.add(cached=False, failed=False, usage=Usage(), seconds=seconds)
                payload = {"dim": int(vectors.shape[1])}
                self.cache.put(keys[index], self.spec.backend, self.spec.model, payload, vectors[row].tobytes())
        rows = []
        for index, key in enumerate(keys):
            if index in fresh:
                rows.append(fresh[index])
            else:
                self.usage.add(cached=True, failed=False, usage=Usage(), seconds=0.0)
                rows.append(np.frombuffer(found[key][1], dtype=np.float32))
        if not rows:
            return np.asarray(self.inner.embed([]), dtype=np.float32)
        return np.stack(rows).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------
# What else keys a cached answer besides the request: options and a fingerprint of the model


# Files up to this size are hashed by content; larger ones (multi-GB weights) by size and mtime.
_HASH_LIMIT = 64 * 2**20


@lru_cache(maxsize=None)
def path_fingerprint(path: str) -> str:
    """A hash of a local model folder or file, computed once per process.

    Every file (hidden files such as Snakemake's timestamp aside) contributes its relative path and
    size, plus its content hash when it is at most 64 MiB, else its mtime. Configs, tokenizers and
    small weights are thus compared by content (a rebuilt identical model still hits the cache),
    and a retrained large model changes at least its weights' mtime.
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root) if file != root else file.name}\0{stat.st_size}\0".encode())
        if stat.st_size <= _HASH_LIMIT:
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        else:
            digest.update(str(stat.st_mtime_ns).encode())
    return digest.hexdigest()[:16]


def _local_model_path(name: str | None) -> str | None:
    """A local folder or file for a model name: the path itself, or a hub snapshot already cached."""
    if not name:
        return None
    if os.path.exists(name):
        return name
    try:  # a hub id: its cached snapshot (the folder name is the commit), never a download
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not a hub id, or not cached: the id alone keys the cache
        return None


def model_fingerprint(spec: ModelSpec) -> str:
    """What identifies the model behind an entry beyond its name (see `cache_context`)."""
    if spec.backend in LOCAL_BACKENDS:
        from covip.fingerprint import code_fingerprint

        return "code:" + code_fingerprint(*_backend_modules(spec.backend))
    if spec.backend in IN_PROCESS_MODEL_BACKENDS:
        weights = spec.pretrained if spec.backend == "open_clip" else spec.model
        path = _local_model_path(weights)
        return f"files:{path_fingerprint(os.path.abspath(path))}" if path else f"id:{weights}"
    return "remote"  # the endpoint's model name is all we can know


def cache_context(spec: ModelSpec) -> dict[str, Any]:
    """Besides backend, model and request, a cache key includes the entry's backend options and a
    fingerprint of the model: a local model folder's files, or a stand-in's code."""
    return {"options": spec.options, "fingerprint": model_fingerprint(spec)}


class ModelRegistry:
    """Builds each named model once, on first use."""

    def __init__(self, models: dict[str, dict[str, Any]], cache_path: str | None = None):
        self.specs = {name: ModelSpec.from_config(name, entry) for name, entry in models.items()}
        self._cache_path = cache_path
        self._cache: ResponseCache | None = None
        self._built: dict[str, Any] = {}

    def spec(self, name: str) -> ModelSpec:
        if name not in self.specs:
            raise KeyError(f"no model named '{name}' in the config's models registry (have: {sorted(self.specs)})")
        return self.specs[name]

    def _response_cache(self, spec: ModelSpec) -> ResponseCache | None:
        if not spec.uses_cache or self._cache_path is None:
            return None
        if self._cache is None:
            self._cache = ResponseCache(self._cache_path)
        return self._cache

    def chat(self, name: str) -> CachedChatModel:
        if name not in self._built:
            spec = self.spec(name)
            check_credentials(spec)
            self._built[name] = CachedChatModel(spec, _build_chat_backend(spec), self._response_cache(spec))
        return self._built[name]

    def image_generator(self, name: str) -> CachedImageGenerator:
        if name not in self._built:
            spec = self.spec(name)
            check_credentials(spec)
            self._built[name] = CachedImageGenerator(spec, _build_image_backend(spec), self._response_cache(spec))
        return self._built[name]

    def embedder(self, name: str) -> ImageEmbedder:
        if name not in self._built:
            spec = self.spec(name)
            check_credentials(spec)
            self._built[name] = CachedEmbedder(spec, _build_embedder_backend(spec), self._response_cache(spec))
        return self._built[name]


# Which class serves each (capability, backend). Modules are imported by name on first use, so an
# optional dependency is needed only when its backend is selected, and the code fingerprint of a
# stage includes just the backend modules its config selects (see backend_module).
BACKENDS: dict[str, dict[str, str]] = {
    "chat": {
        "openai": "covip.clients.openai_backend:OpenAIChatModel",
        "gemini": "covip.clients.genai_backend:GeminiChatModel",
        "local_facts_writer": "covip.local.facts_writer:FactsFirstWriter",
        "local_pixel_verifier": "covip.local.pixel_verifier:PixelVerifier",
        "local_lexical_judge": "covip.local.lexical_judge:LexicalJudge",
        "local_ngram_judge": "covip.local.ngram_judge:NgramJudge",
        "reference_oracle": "covip.local.reference_policies:OraclePolicy",
        "reference_context_dump": "covip.local.reference_policies:ContextDumpPolicy",
        "reference_blind": "covip.local.reference_policies:BlindPolicy",
        "reference_looking": "covip.local.looking_policy:LookingPolicy",
        "transformers": "covip.clients.transformers_backend:TransformersChatModel",
        "vllm": "covip.clients.vllm_backend:VLLMChatModel",
    },
    "image": {
        "gemini": "covip.clients.genai_backend:GeminiImageGenerator",
        "local_compositor": "covip.local.compositor:Compositor",
    },
    "embed": {
        "open_clip": "covip.clients.openclip_backend:OpenClipEmbedder",
        "local_color_texture": "covip.local.embedder:ColorTextureEmbedder",
    },
}


def backend_module(capability: str, backend: str) -> str:
    """The module implementing `backend` for `capability` (for code fingerprints)."""
    return _backend_target(capability, backend, where=backend).split(":")[0]


def _backend_modules(backend: str) -> list[str]:
    """Every module implementing `backend`, whatever capability it serves."""
    return sorted({target.split(":")[0] for table in BACKENDS.values() for name, target in table.items() if name == backend})


def _backend_target(capability: str, backend: str, where: str) -> str:
    try:
        return BACKENDS[capability][backend]
    except KeyError:
        raise ValueError(
            f"{where}: backend '{backend}' cannot serve '{capability}' (choose from {sorted(BACKENDS[capability])})"
        ) from None


def _build(capability: str, spec: ModelSpec):
    module, cls = _backend_target(capability, spec.backend, where=f"models.{spec.name}").split(":")
    return getattr(importlib.import_module(module), cls)(spec)


def _build_chat_backend(spec: ModelSpec) -> ChatModel:
    return _build("chat", spec)


def _build_image_backend(spec: ModelSpec) -> ImageGenerator:
    return _build("image", spec)


def _build_embedder_backend(spec: ModelSpec) -> ImageEmbedder:
    return _build("embed", spec)


T = TypeVar("T")
R = TypeVar("R")


def run_concurrently(
    fn: Callable[[T], R], items: Iterable[T], *, concurrency: int, desc: str, file=None
) -> Iterator[R]:
    """Apply `fn` to items with bounded concurrency, yielding results in input order, with progress."""
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, file=file, mininterval=1.0, dynamic_ncols=False, ascii=True)
    if concurrency <= 1:
        for item in items:
            result = fn(item)
            bar.update()
            yield result
        bar.close()
        return
    # A bounded window of futures: a result is dropped as soon as it is yielded, so a stage that
    # streams its output (synthesis writes each image as it comes) never holds all results at once.
    window: deque = deque()
    pending = iter(items)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for item in itertools.islice(pending, 2 * concurrency):
            window.append(pool.submit(fn, item))
        while window:
            result = window.popleft().result()
            for item in itertools.islice(pending, 1):
                window.append(pool.submit(fn, item))
            bar.update()
            yield result
    bar.close()
