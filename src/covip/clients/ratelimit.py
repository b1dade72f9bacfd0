"""Request and token rate limits per registry entry, shared by every thread and task of a process.

A generic cell-rate algorithm (a token bucket written as a schedule): each call reserves its cost
and is told how long to wait before it may start. Reserving instead of polling lets the same limiter
serve worker threads (`time.sleep`) and asyncio tasks (`asyncio.sleep`). The burst allowance is one
second's worth of the rate, so a job starts promptly but never runs ahead of the per-minute limit.

Limits are per job (one Snakemake job is one process): two jobs hitting the same endpoint at once
each get the full limit. Set the limit to the endpoint's quota divided by the jobs you run at once.
"""

from __future__ import annotations

import threading
import time

from covip.clients.base import ChatRequest

# Rough tokens of one image for the token limit (OpenAI's 512 px tile is 765 tokens).
IMAGE_TOKENS = 765


def estimate_tokens(request: ChatRequest) -> int:
    """An upper-ish estimate of a request's tokens before it is sent: ~4 characters a token, a
    fixed charge per image, plus the completion budget (`max_tokens`) when the sampling sets one."""
    chars = sum(len(message.text) for message in request.messages)
    completion = int(request.sampling.get("max_tokens") or 0)
    return chars // 4 + IMAGE_TOKENS * len(request.images) + completion


class _Schedule:
    """One rate (cost units per second) with a one-second burst allowance."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.burst = 1.0  # seconds of rate that may go at once
        self.next_free = 0.0  # theoretical time at which the schedule is empty again

    def reserve(self, cost: float, now: float) -> float:
        start = max(self.next_free, now)
        self.next_free = start + cost / self.rate
        return max(0.0, start - self.burst - now)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits; either may be None (unlimited)."""

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None):
        self._requests = _Schedule(requests_per_minute) if requests_per_minute else None
        self._tokens = _Schedule(tokens_per_minute) if tokens_per_minute else None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def reserve(self, tokens: int = 0) -> float:
        """Book one request of `tokens` and return the seconds to wait before sending it."""
        if not self.active:
            return 0.0
        with self._lock:
            now = time.monotonic()
            delays = [0.0]
            if self._requests is not None:
                delays.append(self._requests.reserve(1.0, now))
            if self._tokens is not None:
                delays.append(self._tokens.reserve(float(tokens), now))
            return max(delays)

    def wait(self, tokens: int = 0) -> None:
        """Block the calling thread until a request of `tokens` may go."""
        delay = self.reserve(tokens)
        if delay > 0:
            time.sleep(delay)

    async def wait_async(self, tokens: int = 0) -> None:
        """Suspend the calling task until a request of `tokens` may go."""
        import asyncio

        delay = self.reserve(tokens)
        if delay > 0:
            await asyncio.sleep(delay)
