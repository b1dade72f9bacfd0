"""Chat/VLM completions through the openai SDK: OpenAI itself, `vllm serve`, llama.cpp's server."""

from __future__ import annotations

import base64
import os
from typing import Any

from covip.clients.base import BackendUnavailableError, ChatRequest, ChatResponse, ImagePart, TextPart, Usage

# Sampling keys the Chat Completions API takes directly; anything else (top_k, min_p, repetition
# penalty) is a server extension that vLLM and llama.cpp read from the request body.
_STANDARD_SAMPLING = {"temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty", "seed", "stop", "n"}


OPTION_DEFAULTS = {
    # 'inline': images go as base64 data URLs (VLM endpoints). 'placeholder': each image becomes the
    # text "[image]" and the content a plain string, for text-only endpoints (llama.cpp without a
    # vision projector silently drops list-form content, text parts included).
    "image_mode": "inline",
}


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
    request: ChatRequest, model: str, structured_output: str, image_mode: str = "inline"
) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create` for a request (pure, unit-tested)."""
    if image_mode not in ("inline", "placeholder"):
        raise ValueError(f"image_mode must be 'inline' or 'placeholder', got {image_mode!r}")
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": _content(m, image_mode)} for m in request.messages],
    }
    extra: dict[str, Any] = {}
    for key, value in request.sampling.items():
        (payload if key in _STANDARD_SAMPLING else extra)[key] = value
    if request.seed is not None and "seed" not in payload:
        payload["seed"] = request.seed
    if request.response_schema is not None:
        if structured_output == "json_schema":  # OpenAI, vLLM
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": request.response_schema},
            }
        elif structured_output == "json_object":  # llama.cpp server: JSON mode constrained by a schema
            payload["response_format"] = {"type": "json_object", "schema": request.response_schema}
    if extra:
        payload["extra_body"] = extra
    return payload


class OpenAIChatModel:
    """Any OpenAI-compatible endpoint; the SDK's own retries handle 429/5xx/timeouts with backoff."""

    def __init__(self, spec):
        try:
            import openai
        except ImportError as error:  # pragma: no cover - openai is a core dependency
            raise BackendUnavailableError("backend 'openai' needs the openai package") from error
        self.spec = spec
        self.identity = spec.identity
        self.options = spec.options_with_defaults(OPTION_DEFAULTS)
        api_key = os.environ.get(spec.key_env) if spec.key_env else None
        # Self-hosted servers take any key; the SDK insists on a non-empty one.
        self._client = openai.OpenAI(
            api_key=api_key or "unused",
            base_url=spec.base_url,
            timeout=spec.timeout_s,
            max_retries=spec.max_retries,
        )

    def complete(self, request: ChatRequest) -> ChatResponse:
        payload = build_openai_payload(request, self.spec.model, self.spec.structured_output, self.options["image_mode"])
        completion = self._client.chat.completions.create(**payload)
        choice = completion.choices[0]
        usage = Usage()
        if completion.usage is not None:
            usage = Usage(completion.usage.prompt_tokens or 0, completion.usage.completion_tokens or 0)
        return ChatResponse(choice.message.content or "", completion.model or self.spec.model, usage)
