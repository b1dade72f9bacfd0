"""Chat/VLM completions through the openai SDK: OpenAI itself, `vllm serve`, llama.cpp's server.

The body is built for the entry's API dialect (`covip.clients.dialects`): the OpenAI API gets the
Chat Completions fields only (and the parameter names its reasoning models accept), a vLLM or
llama.cpp server also gets the sampling extensions it reads. A sampling key the dialect cannot take
is left out and said once per entry and key in the job's log.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
from typing import Any

from covip.clients.base import BackendUnavailableError, ChatRequest, ChatResponse, ImagePart, TextPart, Usage
from covip.clients.dialects import adapt_body

log = logging.getLogger("covip.clients")

COMPLETIONS_PATH = "/chat/completions"
_PARSED = "covip.chat_response"  # where the SDK-side body check leaves the parsed answer


class MalformedCompletion(ValueError):
    """A 200 answer whose body is not a chat completion (a proxy's error page, a cut-off body): the SDK
    does not check bodies, so the response hook below turns it into an error its retry loop retries."""


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
    """Any OpenAI-compatible endpoint, through the openai SDK: its transport, auth, timeouts and retry
    policy (429s, 5xx answers, timeouts and connection errors, with backoff, jitter and Retry-After).

    `max_retries` is one budget per call, the SDK's: a 200 answer whose body is no chat completion (a
    proxy's error page, a cut-off body) fails inside the SDK's send, as a decoding error its retry loop
    already retries, so it spends the same budget instead of a second, nested loop (which once made
    (n + 1)^2 attempts). `complete` serves worker threads; `async_client` + `acomplete` let the
    registry's `complete_many` keep many requests in flight from one thread on the SDK's aiohttp
    transport, which is what high-concurrency judging needs on a small machine.
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
        # library's Response unparsed when asked for it, and its errors are what the SDK retries.
        self._httpx = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])
        http_client = openai.DefaultHttpxClient(event_hooks={"response": [self._check_sync]}, timeout=spec.timeout_s)
        self._client = openai.OpenAI(**self._client_kwargs(), http_client=http_client)
        # The endpoint's absolute URL, joined to the client's base URL once the way the SDK joins a path:
        # given a path, the SDK parses it and joins it again on every request (~30 us of ~1 ms each).
        base = self._client.base_url
        self._url = str(base.copy_with(raw_path=base.raw_path + COMPLETIONS_PATH.lstrip("/").encode()))

    def _client_kwargs(self) -> dict[str, Any]:
        # The key is read from the environment when a client is made and kept only inside it.
        api_key = os.environ.get(self.spec.key_env) if self.spec.key_env else None
        # Self-hosted servers take any key; the SDK insists on a non-empty one.
        return {
            "api_key": api_key or "unused",
            "base_url": self.spec.base_url,
            "timeout": self.spec.timeout_s,
            "max_retries": self.spec.max_retries,
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

    def _parse(self, raw: bytes) -> ChatResponse:
        """A ChatResponse from the raw body of a 200 answer. Read as plain JSON: the SDK's typed `create`
        spends more CPU on transforming the request and building pydantic objects than on the HTTP
        itself, which caps a 2-core client far below what a judge server can answer (BENCHMARKS.md)."""
        try:
            data = json.loads(raw)
            message = data["choices"][0]["message"]
            text = message.get("content") or ""
            usage = data.get("usage") or {}
            tokens = Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
            finish = data["choices"][0].get("finish_reason")
            return ChatResponse(str(text), str(data.get("model") or self.spec.model), tokens,
                                finish_reason=None if finish is None else str(finish))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:  # JSONDecodeError too
            raise MalformedCompletion(f"a 200 answer that is not a chat completion ({type(error).__name__}: "
                                      f"{error}): {raw[:200]!r}") from error

    def _check(self, response) -> None:
        """Parse a 2xx completion inside the SDK's send; a malformed body raises the HTTP library's
        DecodingError there, which the SDK retries within `max_retries` like a broken connection."""
        if not 200 <= response.status_code < 300 or not response.request.url.path.endswith(COMPLETIONS_PATH):
            return
        try:
            response.extensions[_PARSED] = self._parse(response.content)
        except MalformedCompletion as error:
            raise self._httpx.DecodingError(str(error), request=response.request) from error

    def _check_sync(self, response) -> None:
        response.read()
        self._check(response)

    async def _check_async(self, response) -> None:
        await response.aread()
        self._check(response)

    def _answer(self, response) -> ChatResponse:
        return response.extensions.get(_PARSED) or self._parse(response.content)

    def _failed(self, error: Exception) -> Exception:
        """The SDK's final connection error after malformed bodies, named for what it was."""
        cause = error.__cause__
        if isinstance(error, self._openai.APIConnectionError) and isinstance(cause, self._httpx.DecodingError) \
                and isinstance(cause.__cause__, MalformedCompletion):
            return cause.__cause__
        return error

    def complete(self, request: ChatRequest) -> ChatResponse:
        try:
            # The SDK's generic POST: its auth, timeouts and retries, without the typed layer.
            return self._answer(self._client.post(self._url, body=self._body(request), cast_to=self._httpx.Response))
        except self._openai.APIConnectionError as error:
            raise self._failed(error) from error

    def async_client(self, concurrency: int | None = None):
        """A fresh `openai.AsyncOpenAI` on the SDK's aiohttp transport (use as `async with`; an async
        client belongs to one event loop).

        aiohttp, not httpx: httpx's connection-pool bookkeeping was ~88% of the client's CPU at
        concurrency 128 (BENCHMARKS.md). aiohttp keeps every idle connection alive up to its connector
        limit, so the limit is the concurrency: each request finds a warm connection and none is
        closed and reopened (httpx's default pool kept only 100 alive)."""
        kwargs = self._client_kwargs()
        limits = self._httpx.Limits(max_connections=max(concurrency or 100, 1), keepalive_expiry=30.0)
        hooks = {"response": [self._check_async]}
        try:
            kwargs["http_client"] = self._openai.DefaultAioHttpClient(limits=limits, timeout=self.spec.timeout_s,
                                                                      event_hooks=hooks)
        except RuntimeError:  # openai without its aiohttp extra: the httpx transport still works
            log.warning("models.%s: aiohttp missing (pip install 'openai[aiohttp]'); using httpx", self.spec.name)
            kwargs["http_client"] = self._openai.DefaultAsyncHttpxClient(limits=limits, timeout=self.spec.timeout_s,
                                                                         event_hooks=hooks)
        return self._openai.AsyncOpenAI(**kwargs)

    async def acomplete(self, client, request: ChatRequest) -> ChatResponse:
        """Answer one request on an async client from `async_client`, within the call's one retry budget."""
        try:
            return self._answer(await client.post(self._url, body=self._body(request), cast_to=self._httpx.Response))
        except self._openai.APIConnectionError as error:
            raise self._failed(error) from error
