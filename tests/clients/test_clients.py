"""The client layer: request keys, the response cache, credentials, registry and payload building."""

from __future__ import annotations

import io
import threading

import pytest

from covip.clients.base import ChatRequest, ChatResponse, ImagePart, Message, MissingCredentialsError, Usage
from covip.clients.cache import ResponseCache, request_key
from covip.clients.openai_backend import build_openai_payload
from covip.clients.backends import backend_module
from covip.clients.cached import CachedChatModel
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec, check_credentials


def _request(text="hello", image=b"\x89PNG-a", seed=None):
    return ChatRequest((Message.user(text, ImagePart(image)),), {"temperature": 0.0}, seed=seed)


class CountingModel:
    identity = "fake"

    def __init__(self, fail=False):
        self.calls = 0
        self.fail = fail
        self.lock = threading.Lock()

    def complete(self, request):
        with self.lock:
            self.calls += 1
        if self.fail:
            raise TimeoutError("server took too long")
        return ChatResponse(f"answer to {request.messages[0].text}", "m", Usage(10, 3))


def test_request_key_depends_on_image_content_text_sampling_and_seed():
    base = request_key("openai", "m", _request())
    assert base == request_key("openai", "m", _request())
    assert base != request_key("openai", "m", _request(image=b"\x89PNG-b"))
    assert base != request_key("openai", "m", _request(text="hello!"))
    assert base != request_key("openai", "m2", _request())
    assert base != request_key("openai", "m", _request(seed=3))


def test_cached_model_never_repeats_a_finished_call_even_across_instances(tmp_path):
    spec = ModelSpec(name="judge", backend="openai", model="m", base_url="http://127.0.0.1:1/v1")
    inner = CountingModel()
    first = CachedChatModel(spec, inner, ResponseCache(tmp_path / "c.sqlite"))
    assert first.complete(_request()).text == "answer to hello"
    # A new process after a crash: a fresh cache object on the same file.
    second = CachedChatModel(spec, inner, ResponseCache(tmp_path / "c.sqlite"))
    response = second.complete(_request())
    assert response.cached and response.text == "answer to hello"
    assert inner.calls == 1
    assert second.usage.summary()["cache_hits"] == 1


def test_failed_call_is_recorded_not_cached_and_not_raised(tmp_path):
    spec = ModelSpec(name="judge", backend="openai", model="m", base_url="http://127.0.0.1:1/v1")
    inner = CountingModel(fail=True)
    model = CachedChatModel(spec, inner, ResponseCache(tmp_path / "c.sqlite"))
    response = model.complete(_request())
    assert not response.ok and "TimeoutError" in response.error
    model.complete(_request())
    assert inner.calls == 2  # a failure is retried on the next run, never served from cache
    assert model.usage.failures == 2


def test_cache_is_safe_under_concurrent_writers(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")

    def work(offset):
        for i in range(50):
            cache.put(f"k{offset}-{i}", "b", "m", {"i": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 200
    assert cache.get("k3-49")[0] == {"i": 49}


def test_missing_key_fails_naming_the_variable_and_not_the_key(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(MissingCredentialsError, match="GEMINI_API_KEY"):
        check_credentials(ModelSpec(name="image_generator", backend="gemini", model="gemini-2.5-flash-image"))
    monkeypatch.setenv("MY_KEY", "sk-sentinel-123")
    check_credentials(ModelSpec(name="j", backend="openai", model="gpt-5", api_key_env="MY_KEY"))


def test_self_hosted_openai_server_needs_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    check_credentials(ModelSpec(name="j", backend="openai", model="q", base_url="http://127.0.0.1:8000/v1"))
    with pytest.raises(MissingCredentialsError, match="OPENAI_API_KEY"):
        check_credentials(ModelSpec(name="j", backend="openai", model="gpt-5"))


def test_registry_checks_credentials_before_building(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    registry = ModelRegistry({"verifier": {"backend": "gemini", "model": "gemini-2.5-flash"}})
    with pytest.raises(MissingCredentialsError):
        registry.chat("verifier")


def test_registry_rejects_unknown_keys_and_wrong_capabilities():
    with pytest.raises(ValueError, match="temprature"):
        ModelRegistry({"judge": {"backend": "openai", "temprature": 0.7}})
    registry = ModelRegistry({"embedder": {"backend": "local_color_texture"}})
    with pytest.raises(ValueError, match="cannot serve 'chat'"):
        registry.chat("embedder")
    with pytest.raises(KeyError, match="no model named 'judge'"):
        registry.chat("judge")


def test_openai_backend_sends_server_extensions_in_the_body(tmp_path):
    """On the wire, non-standard sampling (top_k) sits at the top of the JSON body, as the SDK's typed
    `create(extra_body=...)` would send it; no `extra_body` field reaches the server."""
    from support.fault_server import FaultServer

    request = ChatRequest((Message.user("Say hello."),), {"temperature": 0.7, "top_k": 20, "max_tokens": 8}, seed=3)
    with FaultServer() as server:
        entry = {"backend": "openai", "model": "m", "base_url": server.base_url, "concurrency": 2}
        model = ModelRegistry({"m": entry}, cache_path=str(tmp_path / "c.sqlite")).chat("m")
        assert model.complete(request).ok  # threads: the sync client
        other = ChatRequest(request.messages, {**request.sampling, "top_k": 5}, seed=4)
        assert all(r.ok for r in model.complete_many([other], desc="x", progress_file=io.StringIO()))  # asyncio
    assert len(server.bodies) == 2
    for body, top_k in zip(server.bodies, (20, 5)):
        assert "extra_body" not in body
        assert body["top_k"] == top_k and body["temperature"] == 0.7 and body["max_tokens"] == 8
        assert body["model"] == "m" and body["messages"] == [{"role": "user", "content": "Say hello."}]

def test_backend_module_names_the_implementation():
    assert backend_module("chat", "openai") == "covip.clients.openai_backend"
    assert backend_module("image", "local_compositor") == "covip.local.compositor"


def test_openai_payload_images_sampling_and_structured_output():
    request = ChatRequest(
        (Message.system("be brief"), Message.user("look", ImagePart(b"abc"))),
        {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 64},
        response_schema={"type": "object"},
        seed=5,
    )
    payload = build_openai_payload(request, "Qwen/Qwen3-VL-8B-Instruct", "json_schema", dialect="vllm")
    assert payload["messages"][0] == {"role": "system", "content": "be brief"}
    parts = payload["messages"][1]["content"]
    assert parts[0] == {"type": "text", "text": "look"}
    assert parts[1]["image_url"]["url"] == "data:image/png;base64,YWJj"
    assert payload["temperature"] == 0.7 and payload["max_tokens"] == 64 and payload["seed"] == 5
    assert payload["top_k"] == 20 and "extra_body" not in payload  # vLLM reads its extensions at the top level
    assert payload["response_format"]["type"] == "json_schema"
    llama = build_openai_payload(request, "gemma", "json_object")
    assert llama["response_format"] == {"type": "json_object", "schema": {"type": "object"}}
    assert "response_format" not in build_openai_payload(request, "gemma", "none")
    text_only = build_openai_payload(request, "gemma", "none", image_mode="placeholder")
    assert text_only["messages"][1]["content"] == "look\n[image]"


def test_api_key_never_appears_in_errors_identity_or_usage(monkeypatch, tmp_path):
    sentinel = "sk-SENTINEL-never-print-me-4242"
    monkeypatch.setenv("COVIP_TEST_KEY", sentinel)
    # A loopback port nobody listens on: the call fails fast and the failure is recorded.
    registry = ModelRegistry(
        {"judge": {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                   "api_key_env": "COVIP_TEST_KEY", "max_retries": 0, "timeout_s": 2}},
        cache_path=str(tmp_path / "c.sqlite"),
    )
    judge = registry.chat("judge")
    response = judge.complete(_request())
    assert not response.ok
    seen = " ".join([response.error, judge.identity, repr(judge.usage.summary()), repr(registry.spec("judge"))])
    assert sentinel not in seen
    written = [path for path in tmp_path.rglob("*") if path.is_file()]  # the cache's store and journals
    assert all(sentinel.encode() not in path.read_bytes() for path in written)
