"""What the async fan-out does to save CPU per request (issue 17) changes nothing a caller sees: the
endpoint URL is joined once, yet every attempt and retry reaches the same endpoint; the collector runs
less often while requests are in flight, and its threshold comes back afterwards."""

from __future__ import annotations

import asyncio
import gc
import io
import threading

import pytest

from covip.clients import cached
from covip.clients.base import ChatRequest, ChatResponse, Message, Usage
from covip.clients.cached import CachedChatModel
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from support.fault_server import FaultServer

QUIET = io.StringIO()


def requests(n: int, tag: str) -> list[ChatRequest]:
    return [ChatRequest((Message.user(f"{tag} question {i}"),)) for i in range(n)]


@pytest.mark.parametrize("slash", ["", "/"])
def test_every_attempt_goes_to_the_completions_endpoint_under_the_base_url(tmp_path, slash):
    # A path prefix and an optional trailing slash, as a proxy's base URL may have; every first attempt
    # answers 500, so each call's retry is sent too.
    with FaultServer({"500": 1.0}, max_faults=1, retry_after_ms=1) as server:
        base = server.base_url.replace("/v1", "/proxy/v1") + slash
        entry = {"backend": "openai", "model": "fault-model", "base_url": base, "max_retries": 2, "timeout_s": 30.0,
                 "concurrency": 4}
        chat = ModelRegistry({"m": entry}, cache_path=str(tmp_path / "cache.sqlite")).chat("m")
        answers = chat.complete_many(requests(6, f"async{slash}"), progress_file=QUIET)
        answers.append(chat.complete(requests(1, f"sync{slash}")[0]))
        assert all(answer.ok for answer in answers)
        assert server.faults["500"] == 7 and set(server.attempts.values()) == {2}
        assert dict(server.paths) == {"/proxy/v1/chat/completions": 14}


class _RecordingBackend:
    """An async backend that notes the collector's young-generation threshold during each call.
    `hold`: the first call waits at this barrier (another thread's fan-out is then in flight too);
    `after`: later calls wait for this event first."""

    def __init__(self, hold: threading.Barrier | None = None, after: threading.Event | None = None):
        self.seen: list[int] = []
        self.hold, self.after = hold, after

    def complete(self, request):  # pragma: no cover - the fan-out uses acomplete
        raise AssertionError("the async path was expected")

    def async_client(self, concurrency=None):
        class Client:
            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc):
                return None

        return Client()

    async def acomplete(self, client, request):
        if self.hold is not None and not self.seen:
            self.hold.wait(timeout=30)
        elif self.after is not None:
            await asyncio.to_thread(self.after.wait, 30)
        self.seen.append(gc.get_threshold()[0])
        return ChatResponse("A", "stub", Usage(1, 1))


def _model(backend) -> CachedChatModel:
    return CachedChatModel(ModelSpec("stub", "stub", "stub", concurrency=1), backend, None)


@pytest.fixture
def threshold():
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_a_fan_out_collects_less_often_and_restores_the_threshold(threshold):
    backend = _RecordingBackend()
    assert all(answer.ok for answer in _model(backend).complete_many(requests(3, "gc"), progress_file=QUIET))
    assert backend.seen == [cached.FAN_OUT_GC_THRESHOLD] * 3
    assert gc.get_threshold() == (700, 10, 10)


def test_collection_switched_off_stays_off(threshold):
    gc.set_threshold(0, 10, 10)
    backend = _RecordingBackend()
    _model(backend).complete_many(requests(2, "off"), progress_file=QUIET)
    assert backend.seen == [0, 0] and gc.get_threshold() == (0, 10, 10)


def test_overlapping_fan_outs_restore_the_threshold_when_the_last_ends(threshold):
    # Two threads fan out at once; the first to finish must not restore the threshold under the other.
    both_in = threading.Barrier(2)
    first_done = threading.Event()
    first, second = _RecordingBackend(hold=both_in), _RecordingBackend(hold=both_in, after=first_done)

    def run_first():
        _model(first).complete_many(requests(1, "first"), progress_file=QUIET)
        first_done.set()

    threads = [threading.Thread(target=run_first),
               threading.Thread(target=_model(second).complete_many, args=(requests(3, "second"),),
                                kwargs={"progress_file": QUIET})]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert first.seen == [cached.FAN_OUT_GC_THRESHOLD]
    assert second.seen == [cached.FAN_OUT_GC_THRESHOLD] * 3  # its last two ran after the first had ended
    assert gc.get_threshold() == (700, 10, 10)
