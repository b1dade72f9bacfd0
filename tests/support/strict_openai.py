"""A loopback chat server as strict as the OpenAI API about request bodies, for dialect tests.

Like the real API it answers HTTP 400 with an `invalid_request_error` to a body key that is not a
field of Chat Completions, and to what a reasoning-family model (gpt-5*, o1*, o3*, o4*) refuses:
`max_tokens` ("use max_completion_tokens"), a `temperature` or `top_p` other than the default 1, the
penalties and `stop`, and `reasoning_effort` for a model that does not reason. The known fields are
read from the openai SDK's own request type (`CompletionCreateParamsBase`, plus `stream`), so the
server stays as strict as the SDK version installed. Error bodies have OpenAI's shape (message,
type, param, code), and the messages are the API's wording as users report it (openai-python #2104,
and the o-series 'max_completion_tokens' error).

A valid request gets a completion whose text is `support.fault_server.respond` of its first user
message, so a stage runs against it as against the fault server. `GET /v1/models` lists one model
(`owned_by: openai`), for reachability checks. Only 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai.types.chat import completion_create_params

from support.fault_server import _first_user_text, respond

CHAT_FIELDS = frozenset(typing.get_type_hints(completion_create_params.CompletionCreateParamsBase)) | {"stream"}
_REASONING = re.compile(r"^(?:gpt-5|o1|o3|o4)(?:$|[-.])")


def _error(message: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def check_body(body: dict) -> dict | None:
    """The error the OpenAI API would answer this body with, or None when it would take it."""
    for key in body:
        if key not in CHAT_FIELDS:
            return _error(f"Unrecognized request argument supplied: {key}", None, None)
    model = str(body.get("model") or "")
    if _REASONING.match(model):
        if "max_tokens" in body:
            return _error("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                          "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
        for key in ("temperature", "top_p"):
            if key in body and float(body[key]) != 1.0:
                return _error(f"Unsupported value: '{key}' does not support {body[key]} with this model. Only the "
                              "default (1) value is supported.", key, "unsupported_value")
        for key in ("presence_penalty", "frequency_penalty", "stop"):
            if key in body:
                return _error(f"Unsupported parameter: '{key}' is not supported with this model.", key,
                              "unsupported_parameter")
    elif "reasoning_effort" in body:
        return _error("Unrecognized request argument supplied: reasoning_effort", "reasoning_effort",
                      "unsupported_parameter")
    return None


class StrictOpenAIServer:
    """`with StrictOpenAIServer() as server:`; `server.base_url` is the /v1 URL; `server.bodies` every
    body received, `server.rejected` the (body, error) pairs answered with 400."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.rejected: list[tuple[dict, dict]] = []
        self.model_list_calls = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> "StrictOpenAIServer":
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    owner: StrictOpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            with self.owner._lock:
                self.owner.model_list_calls += 1
            self._send(200, {"object": "list", "data": [{"id": "gpt-4o", "object": "model", "owned_by": "openai"}]})
        else:
            self._send(404, _error(f"Invalid URL (GET {self.path})", None, None))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw)
        with self.owner._lock:
            self.owner.bodies.append(body)
        error = check_body(body)
        if error is not None:
            with self.owner._lock:
                self.owner.rejected.append((body, error))
            return self._send(400, error)
        prompt = _first_user_text(body)
        text = respond(prompt)
        self._send(200, {
            "id": "chatcmpl-strict", "object": "chat.completion", "created": 0, "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                      "total_tokens": len(prompt) // 4 + len(text) // 4},
        })
