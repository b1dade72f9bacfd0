"""One retry budget per model call, with the openai SDK's retry semantics.

The SDK retries HTTP failures itself, but not a 200 answer whose body is no completion; running both
loops multiplies the budgets (6 retries each way made 49 attempts). So the SDK client gets
`max_retries=0` and this policy retries both kinds from one budget, deciding and waiting as the SDK's
`_should_retry` and `_calculate_retry_timeout` do (openai/_base_client.py): timeouts, connection
errors, 408, 409, 429 and 5xx, an `x-should-retry` header obeyed, `retry-after-ms` / `retry-after`
honoured up to two minutes, else 0.5 s doubling to 8 s less up to 25% jitter.
"""

from __future__ import annotations

import email.utils
import math
import random
import time

INITIAL_DELAY_S = 0.5
MAX_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 120.0


def retry_after(headers) -> float | None:
    """Seconds the server asked to wait (`retry-after-ms`, `retry-after` as seconds or a date), or None."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            continue
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        moment = email.utils.parsedate_tz(value)
        return None if moment is None else email.utils.mktime_tz(moment) - time.time()
    except (TypeError, ValueError, OverflowError):
        return None


def retryable_status(status: int, headers) -> bool:
    """Whether an HTTP error answer is worth another attempt (the SDK's rule)."""
    wait = retry_after(headers)
    if wait is not None and math.isfinite(wait) and wait > MAX_RETRY_AFTER_S:
        return False
    hint = headers.get("x-should-retry") if headers is not None else None
    if hint in ("true", "false"):
        return hint == "true"
    return status in (408, 409, 429) or status >= 500


class APIStatusError(RuntimeError):
    """An HTTP error answer on the async path (named as the openai SDK names its own, so failure reasons
    read the same whichever path sent the request)."""

    def __init__(self, status: int, headers, body: bytes):
        super().__init__(f"Error code: {status} - {body[:300].decode('utf-8', 'replace')}")
        self.status_code, self.headers = status, headers


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


class APIConnectionError(RuntimeError):
    """A connection that failed, broke off or stalled past the timeout, on the async path."""


class APITimeoutError(APIConnectionError):
    pass


def status_error(status: int, headers, body: bytes) -> APIStatusError:
    kind = RateLimitError if status == 429 else InternalServerError if status >= 500 else APIStatusError
    return kind(status, headers, body)


def is_retryable(error: BaseException, malformed: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether a failed attempt may be retried: a transport error (timeouts included), a retryable
    status, or a malformed 200 body (`malformed`, the backend's own exception types)."""
    import openai

    if isinstance(error, (*malformed, openai.APIConnectionError, APIConnectionError)):
        return True
    if isinstance(error, openai.APIStatusError):
        return retryable_status(error.status_code, error.response.headers)
    if isinstance(error, APIStatusError):
        return retryable_status(error.status_code, error.headers)
    return False


def delay(retry: int, headers=None) -> float:
    """Seconds to wait before retry number `retry` (0-based): the server's wish, else backoff with jitter."""
    wait = retry_after(headers)
    if wait is not None and math.isfinite(wait) and 0 < wait <= MAX_RETRY_AFTER_S:
        return wait
    return min(INITIAL_DELAY_S * 2.0 ** min(retry, 1000), MAX_DELAY_S) * (1 - 0.25 * random.random())


def error_headers(error: BaseException):
    """The headers of the HTTP answer behind an error, when there was one."""
    if isinstance(error, APIStatusError):
        return error.headers
    response = getattr(error, "response", None)
    return getattr(response, "headers", None)
