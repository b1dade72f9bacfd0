"""Test doubles shared by the stage tests: a scripted chat model, wrapped like a registry model.

Stages take the registry's cached model and call `complete_many`; a bare fake (an object with only
`complete`) goes through `covip.clients.cached.wrap` (no cache, the same accounting), so a test
sees exactly what a registry model would give the stage.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from covip.clients.base import ChatRequest, ChatResponse, Usage
from covip.clients.cached import CachedChatModel, wrap

# What a reply function may return: text (a good call), None (a failed call, returned with `error`),
# an exception (raised by the backend) or a whole ChatResponse.
Reply = Callable[[ChatRequest], "str | None | BaseException | ChatResponse"]


class ScriptedChat:
    """A ChatModel whose replies come from `reply(request)`; it records every request it gets, in the
    order the calls arrive (thread-safe)."""

    def __init__(self, reply: Reply, identity: str = "scripted:test", *, error: str = "RuntimeError: scripted failure",
                 usage: Callable[[str], Usage] | None = None, model: str = "scripted"):
        self.reply, self.identity, self.error, self.usage, self.model = reply, identity, error, usage, model
        self.requests: list[ChatRequest] = []
        self._lock = threading.Lock()

    def complete(self, request: ChatRequest) -> ChatResponse:
        with self._lock:
            self.requests.append(request)
        out = self.reply(request)
        if isinstance(out, BaseException):
            raise out
        if isinstance(out, ChatResponse):
            return out
        if out is None:
            return ChatResponse(None, self.model, error=self.error)
        return ChatResponse(out, self.model, self.usage(out) if self.usage else Usage())


def scripted(reply: Reply, identity: str = "scripted:test", *, concurrency: int = 1,
             **options) -> tuple[CachedChatModel, ScriptedChat]:
    """(the wrapped model a stage takes, the fake that records the requests)."""
    fake = ScriptedChat(reply, identity, **options)
    return wrap(fake, concurrency=concurrency), fake
