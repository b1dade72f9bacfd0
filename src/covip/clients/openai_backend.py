"""Chat/VLM completions through the openai SDK: OpenAI itself, `vllm serve`, llama.cpp's server.

The body is built for the entry's API dialect (`covip.clients.dialects`): the OpenAI API gets the
Chat Completions fields only (and the parameter names its reasoning models accept), a vLLM or
llama.cpp server also gets the sampling extensions it reads. A sampling key the dialect cannot take
is left out and said once per entry and key in the job's log.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import logging
import os
import time
from typing import Any

from covip.clients import retry
from covip.clients.base import BackendUnavailableError, ChatRequest, ChatResponse, ImagePart, TextPart, Usage
from covip.clients.dialects import adapt_body

log = logging.getLogger("covip.clients")

COMPLETIONS_PATH = "/chat/completions"


class MalformedCompletion(ValueError):
    """A 200 answer whose JSON is not a chat completion (retried like a body that is not JSON)."""


# A 200 answer whose body is not a completion (a proxy's error page, a cut-off body that still parsed):
# the SDK does not retry these, so the one retry loop below does.
MALFORMED = (json.JSONDecodeError, MalformedCompletion)


def _content(message, image_mode: str = "inline") -> str | list[dict[str, Any]]:
    if not message.images:
        return message.text
    if image_mode == "placeholder":
        return "\n".join(part.text if isinstance(part, TextPart) else "[image]" for part in message.parts)
    parts: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            url = f"data:{part.mime};base64,{base64.b64encode(part.data).decode()}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def build_openai_payload(
    request: ChatRequest, model: str, structured_output: str, image_mode: str = "inline", *,
    dialect: str = "openai", reasoning_effort: str | None = None, notes: list[str] | None = None,
) -> dict[str, Any]:
    """The JSON body of a chat completion for a request, in the endpoint's dialect (pure, unit-tested).

    Sampling keys the dialect does not take are left out; why, one line per key, is appended to `notes`."""
    if image_mode not in ("inline", "placeholder"):
        raise ValueError(f"image_mode must be 'inline' or 'placeholder', got {image_mode!r}")
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": _content(m, image_mode)} for m in request.messages],
    }
    sampling = dict(request.sampling)
    if request.seed is not None and sampling.get("seed") is None:
        sampling["seed"] = request.seed
    if request.response_schema is not None:
        if structured_output == "json_schema":  # OpenAI, vLLM
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": request.response_schema},
            }
        elif structured_output == "json_object":  # llama.cpp server: JSON mode constrained by a schema
            payload["response_format"] = {"type": "json_object", "schema": request.response_schema}
    body, dropped = adapt_body(payload, sampling, dialect, model, reasoning_effort)
    if notes is not None:
        notes.extend(dropped)
    return body


class OpenAIChatModel:
    """Any OpenAI-compatible endpoint.

    `max_retries` is one budget per call (`covip.clients.retry`): the SDK client itself never retries,
    one loop here retries 429s, 5xx answers, timeouts, connection errors and malformed 200 bodies with
    the SDK's backoff and Retry-After rules, so a call makes at most `max_retries + 1` attempts.
    `complete` (the SDK's generic POST) serves worker threads; `async_client` + `acomplete` (aiohttp)
    let the registry's `complete_many` keep many requests in flight from one thread, which is what
    high-concurrency judging needs on a small machine.
    """

    def __init__(self, spec):
        try:
            import openai
        except ImportError as error:  # pragma: no cover - openai is a core dependency
            raise BackendUnavailableError("backend 'openai' needs the openai package") from error
        self.spec = spec
        self.identity = spec.identity
        self.options = spec.resolved_options()
        self.dialect = spec.dialect
        self._noted: set[str] = set()
        self._openai = openai
        # The SDK's HTTP library (httpx, or httpx2 in recent releases): its generic POST returns that
        # library's Response unparsed when asked for it.
        self._httpx = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])
        self._client = openai.OpenAI(**self._client_kwargs())

    def _client_kwargs(self) -> dict[str, Any]:
        # The key is read from the environment when a client is made and kept only inside it.
        api_key = os.environ.get(self.spec.key_env) if self.spec.key_env else None
        # Self-hosted servers take any key; the SDK insists on a non-empty one.
        return {
            "api_key": api_key or "unused",
            "base_url": self.spec.base_url,
            "timeout": self.spec.timeout_s,
            "max_retries": 0,  # the one retry loop is ours (see the class docstring)
        }

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for this entry's dialect; each sampling key left out is logged once."""
        notes: list[str] = []
        body = build_openai_payload(request, self.spec.model, self.spec.structured_output, self.options["image_mode"],
                                    dialect=self.dialect, reasoning_effort=self.options["reasoning_effort"], notes=notes)
        for note in notes:
            if note not in self._noted:
                self._noted.add(note)
                log.warning("models.%s: not sent: %s", self.spec.name, note)
        return body

    def _response(self, raw: bytes) -> ChatResponse:
        """A ChatResponse from the raw body of a 200 answer. Read as plain JSON: the SDK's typed `create`
        spends more CPU on transforming the request and building pydantic objects than on the HTTP
        itself, which caps a 2-core client far below what a judge server can answer (BENCHMARKS.md)."""
        data = json.loads(raw)  # a body that is not JSON raises json.JSONDecodeError: retried
        try:
            message = data["choices"][0]["message"]
            text = message.get("content") or ""
            usage = data.get("usage") or {}
            tokens = Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
            finish = data["choices"][0].get("finish_reason")
            return ChatResponse(str(text), str(data.get("model") or self.spec.model), tokens,
                                finish_reason=None if finish is None else str(finish))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
            raise MalformedCompletion(
                f"a 200 answer that is not a chat completion ({type(error).__name__}: {error}): {str(data)[:200]}"
            ) from error

    def _retry_wait(self, error: Exception, retries: int) -> float | None:
        """Seconds to wait before retrying after `error`, or None when it must be raised (not
        retryable, or the call's budget of `max_retries` is spent)."""
        if retries >= self.spec.max_retries or not retry.is_retryable(error, MALFORMED):
            return None
        return retry.delay(retries, retry.error_headers(error))

    def complete(self, request: ChatRequest) -> ChatResponse:
        body = self._body(request)
        retries = 0
        while True:
            try:
                # The SDK's generic POST: its auth and timeouts, without the typed layer.
                return self._response(self._client.post(COMPLETIONS_PATH, body=body, cast_to=self._httpx.Response).content)
            except Exception as error:
                wait = self._retry_wait(error, retries)
                if wait is None:
                    raise
            retries += 1
            time.sleep(wait)

    def async_client(self, concurrency: int | None = None) -> "_AsyncSession":
        """A fresh aiohttp session for `acomplete` (use as `async with`; it belongs to one event loop).

        Plain aiohttp, the openai SDK's own async transport, without the SDK's request layer: at
        concurrency 128 httpx's pool bookkeeping and then the SDK's per-request building (options
        models, URL parsing, header merging) were most of the client's CPU, which held the judge far
        below a bare aiohttp loop (BENCHMARKS.md). The request is the same: the URL, headers and key the
        SDK client resolved, the same body. aiohttp keeps every idle connection alive up to its
        connector limit, so the limit is the concurrency: each request finds a warm connection and
        none is closed and reopened."""
        headers = {name: value for name, value in self._client.default_headers.items() if isinstance(value, str)}
        headers.update(self._client.auth_headers)
        headers["X-Stainless-Async"] = "async:asyncio"
        url = str(self._client.base_url).rstrip("/") + COMPLETIONS_PATH
        return _AsyncSession(url, headers, self.spec.timeout_s, max(1, concurrency or 100))

    async def acomplete(self, client: "_AsyncSession", request: ChatRequest) -> ChatResponse:
        """Answer one request on a session from `async_client`, within the call's one retry budget."""
        body = json.dumps(self._body(request)).encode()
        retries = 0
        while True:
            try:
                return self._response(await client.post(body))
            except Exception as error:
                wait = self._retry_wait(error, retries)
                if wait is None:
                    raise
            retries += 1
            await asyncio.sleep(wait)


class _AsyncSession:
    """One aiohttp session posting chat completions; errors as `covip.clients.retry` names them."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float, limit: int):
        self.url, self.headers, self.timeout_s, self.limit = url, headers, timeout_s, limit
        self._session = None

    async def __aenter__(self) -> "_AsyncSession":
        import aiohttp

        # As the SDK's timeout: connecting, and each wait for bytes, not the whole answer.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.limit, keepalive_timeout=30.0)
        self._session = aiohttp.ClientSession(connector=connector, headers=self.headers, timeout=timeout)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    async def post(self, body: bytes) -> bytes:
        """The body of a 2xx answer; an HTTP error, a broken connection or a stall raises."""
        import aiohttp

        try:
            async with self._session.post(self.url, data=body) as response:
                raw = await response.read()
                if response.status >= 300:
                    raise retry.status_error(response.status, response.headers, raw)
                return raw
        except asyncio.TimeoutError as error:
            raise retry.APITimeoutError("Request timed out.") from error
        except aiohttp.ClientError as error:
            raise retry.APIConnectionError(f"Connection error: {type(error).__name__}: {error}") from error
