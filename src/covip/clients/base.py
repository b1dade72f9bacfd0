"""The capabilities every model backend implements, and the request/response records they share.

Stages only ever see these interfaces. A production backend (openai SDK, google-genai, open_clip,
transformers, vLLM) and an offline stand-in (compositor, pixel verifier, facts-first writer,
colour/texture embedder) are interchangeable behind them, so a run moves from offline to paper scale
by changing the model registry in the config, not the code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    data: bytes
    mime: str = "image/png"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Message:
    role: str  # 'system' | 'user' | 'assistant'
    parts: tuple[Part, ...]

    @classmethod
    def user(cls, *parts: Part | str) -> "Message":
        return cls("user", tuple(TextPart(p) if isinstance(p, str) else p for p in parts))

    @classmethod
    def system(cls, text: str) -> "Message":
        return cls("system", (TextPart(text),))

    @classmethod
    def assistant(cls, text: str) -> "Message":
        return cls("assistant", (TextPart(text),))

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        return [p for p in self.parts if isinstance(p, ImagePart)]


@dataclass(frozen=True)
class ChatRequest:
    """One chat/VLM completion.

    `task` carries the structured facts the prompt was rendered from (e.g. the concept name and
    facts of a dialogue). Production backends ignore it and read only the messages; offline
    stand-ins, which cannot read prose, work from it. It is part of the cache key.
    """

    messages: tuple[Message, ...]
    sampling: dict[str, Any] = field(default_factory=dict)
    response_schema: dict[str, Any] | None = None  # JSON schema for structured output
    task: dict[str, Any] | None = None
    seed: int | None = None  # keys sampled (temperature > 0) calls so reruns reproduce them

    @property
    def images(self) -> list[ImagePart]:
        return [image for message in self.messages for image in message.images]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ChatResponse:
    text: str | None
    model: str
    usage: Usage = field(default_factory=Usage)
    cached: bool = False
    latency_s: float = 0.0
    error: str | None = None  # set when the call failed after its retries; text is then None
    # Why generation stopped, as the engine says: "stop" (a natural end), "length" (cut off at the token
    # cap), others from some servers; None when the backend cannot tell (stand-ins, older cache entries).
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    @property
    def truncated(self) -> bool:
        """The answer was cut off at the token cap: its text is not the whole answer."""
        return self.finish_reason == "length"


@dataclass(frozen=True)
class ImageRequest:
    instruction: str
    reference_images: tuple[ImagePart, ...]
    seed: int | None = None
    task: dict[str, Any] | None = None


@dataclass
class ImageResponse:
    image: bytes | None
    model: str
    text: str = ""  # anything the generator said besides the image
    layout: dict[str, Any] | None = None  # where each concept went, when the generator knows
    usage: Usage = field(default_factory=Usage)
    cached: bool = False
    latency_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.image is not None


@runtime_checkable
class ChatModel(Protocol):
    """Chat or vision-language completion (text out)."""

    identity: str

    def complete(self, request: ChatRequest) -> ChatResponse: ...


@runtime_checkable
class ImageGenerator(Protocol):
    """Text + reference images in, one image out."""

    identity: str

    def generate(self, request: ImageRequest) -> ImageResponse: ...


@runtime_checkable
class ImageEmbedder(Protocol):
    """Images in, one L2-normalised vector per image out."""

    identity: str

    def embed(self, images: list[bytes]) -> np.ndarray: ...


class MissingCredentialsError(RuntimeError):
    """A production backend was selected but its API key variable is not set."""


class BackendUnavailableError(RuntimeError):
    """A backend's optional dependency is missing or its model cannot be loaded."""
