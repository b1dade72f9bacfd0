"""API dialects of the openai backend: which keys each server gets, where and under which name, tested
as a pure function and against a loopback server as strict as the OpenAI API (HTTP 400 on a key it
does not know, and on what its reasoning models refuse)."""

from __future__ import annotations

import io
import logging

import pytest

from covip.clients.base import ChatRequest, Message
from covip.clients.dialects import DialectError, adapt_body, is_reasoning_model, resolve_dialect
from covip.clients.registry import ModelRegistry
from support.fault_server import FaultServer
from support.strict_openai import CHAT_FIELDS, StrictOpenAIServer, check_body

# What diagnostics send every policy (SPEC §4: the authors' answer sampling) and the paper's judge sampling.
ANSWER = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5, "max_tokens": 512}
JUDGE = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0, "max_tokens": 16}


@pytest.mark.parametrize("model, reasoning", [
    ("gpt-5", True), ("gpt-5-mini", True), ("gpt-5.1", True), ("o1", True), ("o3-mini", True), ("o4-mini", True),
    ("openai/o3", True), ("gpt-4o", False), ("gpt-4.1-mini", False), ("o10", False), ("Qwen/Qwen3-VL-8B", False),
])
def test_reasoning_family(model, reasoning):
    assert is_reasoning_model(model) is reasoning


@pytest.mark.parametrize("api_dialect, base_url, expected", [
    (None, None, "openai"), (None, "http://h:8000/v1", "vllm"), ("llama_cpp", "http://h/v1", "llama_cpp"),
    ("openai", "https://gateway/v1", "openai"),
])
def test_dialect_defaults(api_dialect, base_url, expected):
    assert resolve_dialect(api_dialect, base_url) == expected


@pytest.mark.parametrize("dialect, model, sampling, sent, not_sent", [
    ("openai", "gpt-4o", ANSWER, {"temperature": 0.7, "top_p": 0.8, "presence_penalty": 1.5, "max_tokens": 512},
     ["top_k"]),
    ("vllm", "Qwen", JUDGE, {"top_k": 20, "min_p": 0.0, "temperature": 0.7, "top_p": 0.8, "max_tokens": 16}, []),
    ("llama_cpp", "gemma", {"repetition_penalty": 1.1, "top_k": 5, "min_p": 0.05},
     {"repeat_penalty": 1.1, "top_k": 5, "min_p": 0.05}, []),
    ("openai", "gpt-5-mini", {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "presence_penalty": 1.5, "stop": ["x"]},
     {"top_p": 1.0, "max_completion_tokens": 64}, ["temperature", "presence_penalty", "stop"]),
    ("openai", "o3", {"temperature": 1.0, "max_tokens": 32}, {"temperature": 1.0, "max_completion_tokens": 32}, []),
    ("vllm", "o3", {"temperature": 0.0, "max_tokens": 32}, {"temperature": 0.0, "max_tokens": 32}, []),  # a served o3 clone
])
def test_adapt_body(dialect, model, sampling, sent, not_sent):
    body, notes = adapt_body({"model": model, "messages": []}, sampling, dialect, model)
    assert {k: v for k, v in body.items() if k not in ("model", "messages")} == sent
    assert [note.split(":")[0] for note in notes] == not_sent
    assert "repetition_penalty" not in body or dialect == "vllm"


def test_unknown_sampling_key_is_an_error_not_a_400():
    with pytest.raises(DialectError, match=r"unknown sampling key\(s\) \['temprature'\]"):
        adapt_body({}, {"temprature": 0.2}, "vllm", "m")


def test_the_strict_server_knows_the_sdk_fields_and_the_reasoning_rules():
    assert {"model", "messages", "max_completion_tokens", "reasoning_effort", "seed", "stream"} <= CHAT_FIELDS
    assert "top_k" not in CHAT_FIELDS and "extra_body" not in CHAT_FIELDS
    assert "top_k" in check_body({"model": "gpt-4o", "messages": [], "top_k": 20})["error"]["message"]
    assert check_body({"model": "gpt-5", "messages": [], "max_tokens": 5})["error"]["param"] == "max_tokens"
    assert check_body({"model": "o3", "messages": [], "temperature": 0.0})["error"]["code"] == "unsupported_value"
    assert check_body({"model": "gpt-4o", "messages": [], "reasoning_effort": "low"}) is not None
    assert check_body({"model": "gpt-4o", "messages": [], "temperature": 0.0, "max_tokens": 5, "seed": 1}) is None


def _request(sampling, seed=3):
    return ChatRequest((Message.user("Say hello."),), dict(sampling), seed=seed)


def _model(base_url, tmp_path, **entry):
    spec = {"backend": "openai", "model": "gpt-4o", "base_url": base_url, "max_retries": 0, "concurrency": 2, **entry}
    return ModelRegistry({"m": spec}, cache_path=str(tmp_path / "c.sqlite")).chat("m")


def test_the_old_behaviour_meets_a_400_from_a_strict_server(tmp_path):
    """Extensions at the top level (what the vllm dialect, and every entry before dialects, sends)
    are what the OpenAI API refuses: this is the bug diagnostics met with GPT-4o."""
    with StrictOpenAIServer() as server:
        response = _model(server.base_url, tmp_path, api_dialect="vllm").complete(_request(ANSWER))
    assert not response.ok and "400" in response.error and "top_k" in response.error


def test_openai_dialect_passes_a_strict_server_sync_and_async(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="covip.clients")
    with StrictOpenAIServer() as server:
        model = _model(server.base_url, tmp_path, api_dialect="openai")
        assert model.complete(_request(ANSWER)).ok  # threads: the sync client
        answers = model.complete_many([_request(ANSWER, seed=s) for s in (4, 5)], desc="x", progress_file=io.StringIO())
        assert all(r.ok for r in answers)  # asyncio
    assert server.rejected == [] and len(server.bodies) == 3
    for body in server.bodies:
        assert set(body) <= CHAT_FIELDS and "top_k" not in body
        assert body["temperature"] == 0.7 and body["max_tokens"] == 512 and body["presence_penalty"] == 1.5
    notes = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
    assert notes == ["models.m: not sent: top_k: the 'openai' dialect takes no top_k"]  # once, not per request


def test_reasoning_models_get_their_parameter_names(tmp_path):
    with StrictOpenAIServer() as server:
        plain = _model(server.base_url, tmp_path, model="gpt-5-mini", api_dialect="openai")
        assert plain.complete(_request({"temperature": 0.0, "max_tokens": 64, "top_k": 20})).ok
        effort = _model(server.base_url, tmp_path, model="o4-mini", api_dialect="openai",
                        options={"reasoning_effort": "low"})
        assert effort.complete(_request({"temperature": 1.0, "top_p": 1.0, "max_tokens": 64})).ok
    assert server.rejected == []
    first, second = server.bodies
    assert first["max_completion_tokens"] == 64 and "max_tokens" not in first and "temperature" not in first
    assert second["reasoning_effort"] == "low" and second["temperature"] == 1.0 and second["top_p"] == 1.0


def test_self_hosted_dialects_still_send_their_extensions(tmp_path):
    with FaultServer() as server:  # records bodies, refuses nothing
        assert _model(server.base_url, tmp_path, model="Qwen").complete(_request(JUDGE)).ok  # default: vllm
        llama = _model(server.base_url, tmp_path, model="gemma", api_dialect="llama_cpp")
        assert llama.complete(_request({"top_k": 20, "min_p": 0.0, "repetition_penalty": 1.1, "max_tokens": 8})).ok
    vllm_body, llama_body = server.bodies
    assert (vllm_body["top_k"], vllm_body["min_p"]) == (20, 0.0)
    assert (llama_body["top_k"], llama_body["min_p"], llama_body["repeat_penalty"]) == (20, 0.0, 1.1)
    assert "repetition_penalty" not in llama_body
