"""Every built model is wrapped here: the shared response cache, rate limits and usage counters.

`CachedChatModel.complete_many` is how every stage sends its requests: cached answers come from one
bulk lookup, identical requests go out once, the rest are batched (in-process backends), sent as
asyncio tasks (the openai backend) or on a thread pool, within the entry's concurrency and rate
limits. Every answered request is committed to the cache the moment it returns, so a crash never
loses a finished call; a failed call is counted and returned with `error` set, never cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

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
    Usage,
)
from covip.clients.cache import ResponseCache, cache_context, request_key
from covip.clients.ratelimit import RateLimiter, estimate_tokens
from covip.clients.spec import ModelSpec


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


# Young-generation threshold while an async fan-out runs (CPython's default is 700); see _fewer_collections.
FAN_OUT_GC_THRESHOLD = 20_000
_gc_lock = threading.Lock()
_gc_depth = 0
_gc_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def _fewer_collections():
    """Collect garbage less often while many requests are in flight on one event loop.

    A request through the SDK allocates many container objects (request options, headers, URLs, the
    HTTP library's request and response) and keeps them for the 0.2-2 s it is in flight. At CPython's
    default threshold (700) a young collection ran every five requests or so, scanning the objects of
    all in-flight requests, and each full collection (~180 ms with a stage's rows in memory) stopped
    the loop reading replies: at concurrency 128 that cost 0.2-0.5 ms of CPU per request and ~5 % of
    the throughput (BENCHMARKS.md, issue 17). A higher threshold keeps collecting (cycles are still
    freed) ~30 times less often. It is process-wide, so it is raised once for nested or concurrent
    fan-outs and restored when the last one ends.
    """
    global _gc_depth, _gc_saved
    with _gc_lock:
        if _gc_depth == 0:
            _gc_saved = gc.get_threshold()
            if _gc_saved[0]:  # 0: automatic collection is off, and stays off
                gc.set_threshold(max(_gc_saved[0], FAN_OUT_GC_THRESHOLD), *_gc_saved[1:])
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                _gc_saved = None


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
        if key is None:
            return self._call(request, key)
        results: list[ChatResponse | None] = [None]

        def send(indices: list[int]) -> None:
            results[0] = self._call(request, key)

        share(self.cache, [key], [0], results, send, lambda found: self._hit(found[0]))
        return results[0]  # type: ignore[return-value]

    def probe(self, request: ChatRequest) -> ChatResponse:
        """One real call past the response cache (counted, never stored): is the endpoint answering now?"""
        return self._call(self._with_default_sampling(request), None)

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

        def send(indices: list[int]) -> None:
            if getattr(self.inner, "complete_batch", None) is not None:
                self._run_batched(requests, keys, indices, results, bar)
            elif getattr(self.inner, "acomplete", None) is not None and not _loop_running():
                with _fewer_collections():
                    asyncio.run(self._run_async(requests, keys, indices, results, bar, workers))
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    futures = {index: pool.submit(self._call, requests[index], keys[index]) for index in indices}
                    for index, future in futures.items():
                        results[index] = future.result()
                        bar.update()

        if todo and self.cache is not None:
            share(self.cache, keys, todo, results, send, lambda found: self._hit(found[0]), bar)
        elif todo:
            send(todo)
        for index, source in copies:
            answer = results[source]
            if answer is not None and answer.ok:
                self.usage.add(cached=True, failed=False, usage=Usage(), seconds=0.0)
                results[index] = ChatResponse(answer.text, answer.model, Usage(), cached=True,
                                              finish_reason=answer.finish_reason)
            else:
                results[index] = answer
            bar.update()
        bar.close()
        return results  # type: ignore[return-value]

    def _run_batched(self, requests, keys, todo, results, bar) -> None:
        # The entry's batch_size (every batching backend declares one, with its default); None: all of
        # them in one call (vLLM schedules a whole chunk better than we can split it).
        size = self.spec.resolved_options().get("batch_size")
        size = max(1, len(todo)) if size is None else max(1, int(size))
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
                    if self.limiter.active:  # no limits: skip the token estimate and an await per request
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
        # finish_reason: a cut-off answer stays cut off when a rerun reads it from the cache.
        return ChatResponse(payload["text"], payload["model"], Usage(**payload["usage"]), cached=True,
                            finish_reason=payload.get("finish_reason"))

    def _record(self, key: str | None, response: ChatResponse) -> None:
        """Count a fresh response, and store it when it succeeded (failures are retried next run)."""
        self.usage.add(cached=False, failed=not response.ok, usage=response.usage, seconds=response.latency_s)
        if key is not None and response.ok:
            usage = {"prompt_tokens": response.usage.prompt_tokens, "completion_tokens": response.usage.completion_tokens}
            payload = {"text": response.text, "model": response.model, "usage": usage}
            if response.finish_reason is not None:
                payload["finish_reason"] = response.finish_reason
            self.cache.put(key, self.spec.backend, self.spec.model, payload, role=self.spec.name)
        if key is not None and self.cache.claims is not None:  # after the answer is in the journal; a failed
            self.cache.claims.release(key)  # call's waiter sends it itself

    def _with_default_sampling(self, request: ChatRequest) -> ChatRequest:
        """The endpoint's sampling defaults from the registry, under what the stage asked for."""
        if not self.spec.sampling:
            return request
        sampling = {**self.spec.sampling, **request.sampling}
        return ChatRequest(request.messages, sampling, request.response_schema, request.task, request.seed)


def share(cache: ResponseCache, keys, todo: list[int], results, send, hit, bar=None) -> None:
    """Send the requests of `todo` that no other job is sending; wait for the others' answers.

    Each key is claimed before it is sent (covip.clients.claims). A key another job holds is waited
    for: its answer comes from that job's journal (a cache hit). A key whose claim was released
    without an answer (the call failed) or whose owner died is claimed and sent here. `hit` makes a
    result of a stored (payload, blob); `send(indices)` sends and records those.
    """
    claims = cache.claims
    if claims is None:
        return send(todo)
    waiting = list(todo)
    delay = 0.02
    while waiting:
        mine = [index for index in waiting if claims.claim(keys[index])]
        if len(mine) < len(waiting):  # a dead owner's claims are taken over
            claimed = set(mine)
            mine += [index for index in waiting if index not in claimed and claims.state(keys[index]) == "dead"
                     and claims.take_over(keys[index])]
        # Another job may have answered between our lookup and our claim: look again before sending.
        found = cache.get_many([keys[index] for index in waiting], fresh=True)
        answered = [index for index in waiting if keys[index] in found]
        for index in answered:
            claims.release(keys[index])
            results[index] = hit(found[keys[index]])
            if bar is not None:
                bar.update()
        done = set(answered)
        to_send = [index for index in mine if index not in done]
        if to_send:
            try:
                send(to_send)
            finally:  # a send that raised leaves no claim behind for others to wait on
                for index in to_send:
                    claims.release(keys[index])
            done.update(to_send)
        waiting = [index for index in waiting if index not in done]
        if waiting:
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)


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
        if key is None:
            return self._generate(request, None)
        if (found := self.cache.get(key)) is not None:
            return self._hit(found)
        results: list[ImageResponse | None] = [None]

        def send(indices: list[int]) -> None:
            results[0] = self._generate(request, key)

        share(self.cache, [key], [0], results, send, self._hit)  # another job generating it: wait for it
        return results[0]  # type: ignore[return-value]

    def _hit(self, found: tuple[dict, bytes | None]) -> ImageResponse:
        payload, blob = found
        self.usage.add(cached=True, failed=False, usage=Usage(), seconds=0.0)
        return ImageResponse(blob, payload["model"], payload.get("text", ""), payload.get("layout"), cached=True)

    def _generate(self, request: ImageRequest, key: str | None) -> ImageResponse:
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
            self.cache.put(key, self.spec.backend, self.spec.model, payload, response.image, role=self.spec.name)
        if key is not None and self.cache.claims is not None:
            self.cache.claims.release(key)
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


def wrap(inner: ChatModel | ImageGenerator, *, name: str = "model",
         concurrency: int = 1) -> CachedChatModel | CachedImageGenerator:
    """A model that is not in the registry (a test double, a user's own ChatModel or ImageGenerator)
    with the same interface and accounting as a registry model, and no cache."""
    if isinstance(inner, (CachedChatModel, CachedImageGenerator)):
        return inner
    spec = ModelSpec(name=name, backend="external", model=getattr(inner, "identity", type(inner).__name__),
                     concurrency=concurrency, stand_in=False)
    if hasattr(inner, "generate"):
        model = CachedImageGenerator(spec, inner, None)
    else:
        model = CachedChatModel(spec, inner, None, key_context={})
    model.identity = getattr(inner, "identity", spec.identity)
    return model
