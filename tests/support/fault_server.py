"""An OpenAI-compatible chat server on loopback that misbehaves on purpose, for reliability tests.

`POST /v1/chat/completions` answers with a deterministic function of the request's first user
message (`respond`): a dialogue for the dialogue writer's prompt, a JSON question set for the MCQA
writer's, a boxed letter for the CapEval judge's. Repair turns a stage appends do not change the answer,
so a run under faults must end with exactly the rows of a fault-free run.

Faults are drawn per (request body, attempt number) from a seeded hash, so the same run meets the
same faults every time:

- `429` / `500`: an error status with a short `retry-after-ms`, which the openai SDK honours;
- `stall`: no answer for `stall_s` seconds (set it above the client's timeout), then the
  connection closes;
- `body_truncated`: status 200 whose JSON body stops half-way and the connection closes;
- `body_garbage`: status 200 with a body that is not JSON;
- `body_not_completion`: status 200 with JSON that is no chat completion (a gateway's error object);
- `truncated`: a completion whose content is the answer cut in half (truncated JSON for MCQA);
- `garbage`: a completion whose content is unrelated text;
- `length`: a completion cut off at the token cap: half the answer, with finish_reason "length".

At most `max_faults` attempts of one body are faulted, so bounded client retries always get through.
The server counts attempts and delivered completions per body, which is how tests prove that no
finished call was paid for twice, and that no call went past its retry budget. Only 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from covip.core.schemas import NONE_OPTION

FAULT_KINDS = ("429", "500", "stall", "body_truncated", "body_garbage", "body_not_completion", "truncated", "garbage",
               "length")


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "big")


def _first_user_text(body: dict) -> str:
    for message in body.get("messages", []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return ""


def _facts(prompt: str) -> list[str]:
    return [match[1].strip() for match in re.finditer(r"^- \(\w+\) (.+)$", prompt, re.MULTILINE)]


def respond(prompt: str) -> str:
    """The answer to a stage's prompt, a pure function of its text."""
    if "Write a short chat" in prompt:
        name = re.search(r'calls "(.+?)"', prompt)[1]
        turns = int(re.search(r"Exactly (\d+) turns", prompt)[1])
        facts = _facts(prompt)
        lines = []
        for index in range(turns):
            if index % 2 == 0:
                fact = facts[(index // 2) % len(facts)] if facts else "nothing"
                lines.append(f"User: About {name}: {fact}.")
            else:
                lines.append(f"Model: Thank you for telling me that about {name}.")
        return "\n".join(lines)
    if "multiple-choice questions" in prompt:
        name = re.search(r'about "(.+?)"', prompt)[1]
        n = int(re.search(r"Write exactly (\d+) multiple-choice", prompt)[1])
        facts = _facts(prompt) or ["nothing happened"]
        questions = []
        for index in range(n):
            correct = facts[index % len(facts)]
            wrong = [f"{name} went sailing in winter number {index}{k}" for k in (1, 2)]
            letter = "ABC"[_digest(prompt, index) % 3]
            others = iter(wrong)
            options = {key: correct if key == letter else next(others) for key in "ABC"}
            options["D"] = NONE_OPTION
            questions.append({"question": f"Question {index + 1}: what is true about {name}?", "options": options,
                              "answer": letter})
        return json.dumps({"questions": questions})
    if "Answer: \\boxed{X}" in prompt:  # the CapEval-QA judge: a short reason or none, then the boxed letter
        letter = "ABCD"[_digest(prompt) % 4]
        return f"Answer: \\boxed{{{letter}}}" if _digest(prompt, "form") % 2 else \
            f"The description supports it.\nAnswer: \\boxed{{{letter}}}"
    return "OK"


class FaultServer:
    """Start with `with FaultServer(rates={...}) as server:`; `server.base_url` is the /v1 URL."""

    def __init__(self, rates: dict[str, float] | None = None, *, seed: int = 0, stall_s: float = 2.0,
                 max_faults: int = 2, retry_after_ms: int = 20, only_if=None):
        self.rates = dict(rates or {})
        unknown = set(self.rates) - set(FAULT_KINDS)
        if unknown or sum(self.rates.values()) > 1.0:
            raise ValueError(f"fault rates must be kinds of {FAULT_KINDS} summing to <= 1, got {self.rates}")
        self.seed, self.stall_s, self.max_faults, self.retry_after_ms = seed, stall_s, max_faults, retry_after_ms
        self.only_if = only_if  # a predicate on the request body: fault only the requests it accepts
        self.attempts: Counter[str] = Counter()  # HTTP requests per body
        self.completions: Counter[str] = Counter()  # well-formed completions delivered per body
        self.faults: Counter[str] = Counter()  # faults injected, per kind
        self.authorizations: set[str] = set()
        self.last_user_texts: list[str] = []  # each request's last user message (repair turns show here)
        self.bodies: list[dict] = []  # every request body as it arrived
        self.paths: Counter[str] = Counter()  # request paths of every POST
        self.hold_after: int | None = None  # after this many completions, hold every new request
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- control ---------------------------------------------------------------------------------
    def __enter__(self) -> "FaultServer":
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def release(self) -> None:
        """Stop holding requests (see `hold_after`)."""
        self.hold_after = None
        self._released.set()

    @property
    def total_completions(self) -> int:
        with self._lock:
            return sum(self.completions.values())

    # -- decisions -------------------------------------------------------------------------------
    def fault_for(self, key: str, attempt: int) -> str | None:
        if attempt > self.max_faults:
            return None
        draw = (_digest(self.seed, key, attempt) % 1_000_000) / 1_000_000
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += self.rates.get(kind, 0.0)
            if draw < edge:
                return kind
        return None


class _Handler(BaseHTTPRequestHandler):
    owner: FaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # /v1/models, for readiness checks
        self._send(200, json.dumps({"object": "list", "data": [{"id": "fault-model", "object": "model"}]}).encode())

    def do_POST(self) -> None:
        server = self.owner
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw)
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with server._lock:
            server.attempts[key] += 1
            attempt = server.attempts[key]
            server.authorizations.add(self.headers.get("Authorization", ""))
            server.bodies.append(body)
            server.paths[self.path] += 1
            users = [m for m in body.get("messages", []) if m.get("role") == "user"]
            if users:
                server.last_user_texts.append(_first_user_text({"messages": users[-1:]}))
            held = server.hold_after is not None and sum(server.completions.values()) >= server.hold_after
        if held:  # the crash test kills the client while these wait; they never complete
            server._released.wait(timeout=60)
            self._send(503, b'{"error": {"message": "held"}}')
            return
        fault = server.fault_for(key, attempt) if server.only_if is None or server.only_if(body) else None
        if fault is not None:
            with server._lock:
                server.faults[fault] += 1
        retry = {"retry-after-ms": str(server.retry_after_ms)}
        if fault == "429":
            return self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}', retry)
        if fault == "500":
            return self._send(500, b'{"error": {"message": "internal error"}}', retry)
        if fault == "stall":
            time.sleep(server.stall_s)
            self.close_connection = True
            return
        if fault == "body_garbage":
            return self._send(200, b"<html>502 Bad Gateway</html> \x00\x01 not json")
        if fault == "body_not_completion":
            return self._send(200, json.dumps({"object": "error", "message": "upstream overloaded"}).encode())
        prompt = _first_user_text(body)
        text = respond(prompt)
        if fault == "body_truncated":
            whole = json.dumps({"id": "x", "object": "chat.completion", "choices": [{"message": {"content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(whole)))
            self.end_headers()
            self.wfile.write(whole[: len(whole) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if fault in ("truncated", "length"):
            text = text[: len(text) // 2]
        elif fault == "garbage":
            text = "lorem ipsum %%% }{ ][ " + hashlib.md5(key.encode()).hexdigest()
        completion = {
            "id": f"chatcmpl-{key[:16]}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "fault-model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length" if fault == "length" else "stop"}],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                      "total_tokens": len(prompt) // 4 + len(text) // 4},
        }
        self._send(200, json.dumps(completion).encode())
        with server._lock:
            server.completions[key] += 1


class _SlowHandler(_Handler):
    def do_POST(self) -> None:
        time.sleep(self.owner.latency_s)  # a model's time to answer: lets jobs overlap in flight
        super().do_POST()


class SlowServer(FaultServer):
    """A fault-free FaultServer that answers each request after `latency_s` seconds (cross-job tests)."""

    def __init__(self, latency_s: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.latency_s = latency_s

    def __enter__(self) -> "SlowServer":
        handler = type("Handler", (_SlowHandler,), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self


def delivered_usage(server: FaultServer) -> dict[str, int]:
    """Completions the server delivered and their tokens (as its answers' usage said), fault-free runs."""
    seen: dict[str, dict] = {}
    for body in server.bodies:
        seen.setdefault(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest(), body)
    calls = prompt = completion = 0
    for key, count in server.completions.items():
        text = _first_user_text(seen[key])
        calls += count
        prompt += count * (len(text) // 4)
        completion += count * (len(respond(text)) // 4)
    return {"calls": calls, "input_tokens": prompt, "output_tokens": completion}
