"""A model server the workflow starts through `serve.command`, for the tests of covip.serving.

    python tests/support/served_responder.py --host H --port P --model NAME --ledger FILE
        [--hold-file FILE --hold-after N] [--child] [--ignore-term]

An OpenAI-compatible server on loopback: `GET /v1/models`, and `POST /v1/chat/completions` answered
by `support.fault_server.respond` (valid dialogues, question sets and judge letters; "yes" to the
visual-fidelity question), so the workflow's stages get usable answers. Every completion it sends is
first appended to the ledger (one line per request body's hash, shared by every server process of a
test), which is how a test counts requests across jobs, kills and reruns.

`--hold-file`/`--hold-after`: while the hold file exists and the ledger has at least N lines, new
requests are held unanswered (and `<hold-file>.held` is written), so a test can kill the run at a
moment it can reason about. `--child` starts a sleeping child in the server's process group (the
supervisor must end it too); `--ignore-term` ignores SIGTERM (the supervisor must SIGKILL).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder, for support.*

from support.fault_server import _first_user_text, respond  # noqa: E402

FIDELITY = "Begin your reply with the single word yes or no"


def answer(prompt: str) -> str:
    return "yes" if FIDELITY in prompt else respond(prompt)


def make_handler(args):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_) -> None:
            pass

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            while args.hold_file and os.path.exists(args.hold_file) and _lines(args.ledger) >= args.hold_after:
                Path(args.hold_file + ".held").touch()
                time.sleep(0.2)
            prompt = _first_user_text(body)
            text = answer(prompt)
            with open(args.ledger, "a", encoding="utf-8") as ledger:  # before the answer leaves
                ledger.write(json.dumps({"key": key, "model": body.get("model"), "pid": os.getpid()}) + "\n")
            self._send(200, {
                "id": f"chatcmpl-{key[:16]}", "object": "chat.completion", "created": 0, "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                          "total_tokens": len(prompt) // 4 + len(text) // 4},
            })

    return Handler


def _lines(path: str) -> int:
    try:
        with open(path, "rb") as ledger:
            return ledger.read().count(b"\n")
    except OSError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="responder")
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--hold-file")
    parser.add_argument("--hold-after", type=int, default=0)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.child:  # a worker in the server's process group, as vLLM's engine core is
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # responder-child"])
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args))
    server.daemon_threads = True
    print(f"responder {os.getpid()} on {args.host}:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
