"""A loopback OpenAI-compatible chat server that answers every request after a fixed latency.

    python -m benchmarks.latency_server --latency 0.2 [--port 0] [--lifetime 900]

Plain asyncio HTTP/1.1 with keep-alive and no concurrency limit: a request is parsed, and its reply
is scheduled `latency` seconds later on the event loop, so thousands can wait at once at almost no
cost. The answer letter is a hash of the request body (deterministic, spread over A-D). `GET
/v1/bodies` returns (and forgets) the digests of the request bodies received so far, canonical JSON,
sorted, so a benchmark can check that two clients sent the very same requests. It prints
`PORT <n>` on stdout once listening and exits after `--lifetime` seconds at the latest, so a crashed
benchmark never leaves it behind. Binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time

LETTERS = "ABCD"


def completion_body(request_body: bytes) -> bytes:
    """An OpenAI chat.completion JSON answering with one letter chosen from the request body."""
    digest = hashlib.blake2b(request_body, digest_size=8).digest()
    letter = LETTERS[digest[0] % 4]
    try:
        model = json.loads(request_body).get("model", "latency-server")
    except (ValueError, AttributeError):
        model = "latency-server"
    payload = {
        "id": "chatcmpl-" + digest.hex(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": letter}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {"prompt_tokens": len(request_body) // 4, "completion_tokens": 1, "total_tokens": len(request_body) // 4 + 1},
    }
    return json.dumps(payload).encode()


BODIES: list[str] = []  # canonical-JSON digests of every request body since the last GET /v1/bodies


def body_digest(request_body: bytes) -> str:
    """The same digest for the same JSON whatever its key order or spacing (clients serialise differently)."""
    try:
        canonical = json.dumps(json.loads(request_body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = request_body
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


class _Protocol(asyncio.Protocol):
    """One keep-alive connection; requests may be pipelined, replies go out in order."""

    def __init__(self, latency: float):
        self.latency = latency
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.pending: list[list] = []  # [ready bytes | None] in request order

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data: bytes):
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            body, self.buffer = self.buffer[head_end + 4 : end], self.buffer[end:]
            slot = [None]
            self.pending.append(slot)
            asyncio.get_running_loop().call_later(self.latency, self._ready, slot, self._reply(head, body))

    @staticmethod
    def _reply(head: str, body: bytes) -> bytes:
        first = head.split("\r\n", 1)[0]
        if head.startswith("POST") and "/chat/completions" in first:
            BODIES.append(body_digest(body))
            content, status = completion_body(body), "200 OK"
        elif head.startswith("GET") and "/bodies" in first:
            content, status = json.dumps(sorted(BODIES)).encode(), "200 OK"
            BODIES.clear()
        else:
            content, status = b'{"error": {"message": "not found"}}', "404 Not Found"
        return (
            f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(content)}\r\n"
            "connection: keep-alive\r\n\r\n"
        ).encode() + content

    def _ready(self, slot: list, reply: bytes):
        slot[0] = reply
        while self.pending and self.pending[0][0] is not None:
            ready = self.pending.pop(0)[0]
            if self.transport is not None:
                self.transport.write(ready)


async def serve(latency: float, port: int, lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(latency), "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    async with server:
        await asyncio.sleep(lifetime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds before each reply")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--lifetime", type=float, default=900.0, help="exit after this many seconds")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.latency, args.port, args.lifetime))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
