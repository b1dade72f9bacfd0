"""Gemini through google-genai: VLM completions and image generation.

The SDK does not retry by default; we turn its retry policy on (attempts from the registry entry)
so rate limits and transient server errors back off instead of failing a stage.
"""

from __future__ import annotations

import os

from covip.clients.base import (
    BackendUnavailableError,
    ChatRequest,
    ChatResponse,
    ImagePart,
    ImageRequest,
    ImageResponse,
    TextPart,
    Usage,
)


def _client(spec):
    try:
        from google import genai
        from google.genai import types
    except ImportError as error:  # pragma: no cover - google-genai is a core dependency
        raise BackendUnavailableError("backend 'gemini' needs the google-genai package") from error
    retry = types.HttpRetryOptions(attempts=max(1, spec.max_retries + 1), initial_delay=1.0, max_delay=60.0)
    options = types.HttpOptions(timeout=int(spec.timeout_s * 1000), retry_options=retry)
    return genai.Client(api_key=os.environ[spec.key_env], http_options=options), types


def _parts(message, types) -> list:
    parts = []
    for part in message.parts:
        if isinstance(part, TextPart):
            parts.append(types.Part.from_text(text=part.text))
        elif isinstance(part, ImagePart):
            parts.append(types.Part.from_bytes(data=part.data, mime_type=part.mime))
    return parts


def _usage(response) -> Usage:
    meta = getattr(response, "usage_metadata", None)
    if meta is None:
        return Usage()
    return Usage(meta.prompt_token_count or 0, meta.candidates_token_count or 0)


class GeminiChatModel:
    def __init__(self, spec):
        self.spec = spec
        self.identity = spec.identity
        self._client, self._types = _client(spec)

    def complete(self, request: ChatRequest) -> ChatResponse:
        types = self._types
        system = "\n".join(m.text for m in request.messages if m.role == "system") or None
        contents = [
            types.Content(role="model" if m.role == "assistant" else "user", parts=_parts(m, types))
            for m in request.messages
            if m.role != "system"
        ]
        sampling = dict(request.sampling)
        config = types.GenerateContentConfig(
            system_instruction=system,
            temperature=sampling.get("temperature"),
            top_p=sampling.get("top_p"),
            top_k=sampling.get("top_k"),
            max_output_tokens=sampling.get("max_tokens"),
            seed=request.seed,
            response_mime_type="application/json" if request.response_schema else None,
            response_json_schema=request.response_schema,
        )
        response = self._client.models.generate_content(model=self.spec.model, contents=contents, config=config)
        return ChatResponse(response.text or "", self.spec.model, _usage(response))


class GeminiImageGenerator:
    """Reference photos + instruction in, one generated scene out (Gemini image models)."""

    def __init__(self, spec):
        self.spec = spec
        self.identity = spec.identity
        self._client, self._types = _client(spec)

    def generate(self, request: ImageRequest) -> ImageResponse:
        types = self._types
        parts = [types.Part.from_bytes(data=ref.data, mime_type=ref.mime) for ref in request.reference_images]
        parts.append(types.Part.from_text(text=request.instruction))
        config = types.GenerateContentConfig(response_modalities=["IMAGE", "TEXT"], seed=request.seed)
        response = self._client.models.generate_content(
            model=self.spec.model, contents=[types.Content(role="user", parts=parts)], config=config
        )
        image, text = None, []
        for candidate in response.candidates or []:
            for part in candidate.content.parts if candidate.content else []:
                if part.inline_data is not None and part.inline_data.data and image is None:
                    image = part.inline_data.data
                elif part.text:
                    text.append(part.text)
        error = None if image is not None else "the model returned no image: " + " ".join(text)[:300]
        return ImageResponse(image, self.spec.model, " ".join(text), usage=_usage(response), error=error)
