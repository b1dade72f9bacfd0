"""The vLLM offline backend: conversion and sampling parameters as pure functions, and the engine
wiring (one batched `LLM.chat` call, output parsing, token counts) against a fake `vllm` module."""

from __future__ import annotations

import base64
import io
import sys
import types

import pytest
from PIL import Image

from covip.clients.base import BackendUnavailableError, ChatRequest, ImagePart, Message
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.clients.vllm_backend import (
    VLLMChatModel,
    sampling_params_kwargs,
    structured_output_params,
    to_vllm_conversation,
)
from covip.core.io import BadImageError


def _png(colour, size=(16, 12)) -> ImagePart:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return ImagePart(buffer.getvalue())


# -- pure parts ------------------------------------------------------------------------------------

def test_conversation_with_data_urls_keeps_order():
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    request = ChatRequest((Message.system("sys"), Message.user("this is <a>:", red, "scene:", blue, "where?"),
                           Message.assistant("left"), Message.user("sure?")))
    conversation = to_vllm_conversation(request)
    assert conversation[0] == {"role": "system", "content": "sys"}
    assert conversation[2] == {"role": "assistant", "content": "left"}
    assert conversation[3] == {"role": "user", "content": "sure?"}
    parts = conversation[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert [p["text"] for p in parts if p["type"] == "text"] == ["this is <a>:", "scene:", "where?"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert all(url.startswith("data:image/png;base64,") for url in urls)
    assert [base64.b64decode(url.split(",", 1)[1]) for url in urls] == [red.data, blue.data]


def test_conversation_with_pil_images_and_bad_inputs():
    conversation = to_vllm_conversation(ChatRequest((Message.user(_png((1, 2, 3), (7, 5)), "hi"),)), "pil")
    part = conversation[0]["content"][0]
    assert part["type"] == "image_pil" and part["image_pil"].size == (7, 5) and part["image_pil"].mode == "RGB"
    with pytest.raises(BadImageError, match="req 4 message 0 part 0"):
        to_vllm_conversation(ChatRequest((Message.user(ImagePart(b"junk")),)), "pil", "req 4")
    with pytest.raises(ValueError, match="image_format must be one of"):
        to_vllm_conversation(ChatRequest((Message.user(_png((0, 0, 0))),)), "jpeg_bytes")
    with pytest.raises(ValueError, match="unknown role 'tool'"):
        to_vllm_conversation(ChatRequest((Message("tool", ()),)))


@pytest.mark.parametrize("sampling,seed,expected", [
    ({}, None, {"temperature": 0.0, "max_tokens": 64}),
    ({}, 5, {"temperature": 0.0, "max_tokens": 64, "seed": 5}),
    ({"seed": 9}, 5, {"temperature": 0.0, "max_tokens": 64, "seed": 9}),
    ({"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5, "max_tokens": 16384}, 1,
     {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5, "max_tokens": 16384, "seed": 1}),
    ({"temperature": 1.0, "top_k": 0, "stop": "###", "n": 1, "min_p": None}, None,
     {"temperature": 1.0, "top_k": -1, "stop": ["###"], "max_tokens": 64}),
    ({"frequency_penalty": 0.2, "repetition_penalty": 1.05, "min_p": 0.05}, None,
     {"frequency_penalty": 0.2, "repetition_penalty": 1.05, "min_p": 0.05, "temperature": 0.0, "max_tokens": 64}),
])
def test_sampling_params_kwargs(sampling, seed, expected):
    assert sampling_params_kwargs(sampling, seed=seed, default_max_tokens=64) == expected


@pytest.mark.parametrize("sampling,message", [
    ({"temprature": 0.1}, r"models.p sampling: unknown sampling key\(s\) \['temprature'\]"),
    ({"n": 4}, "n must be 1"),
    ({"max_tokens": -3}, "max_tokens must be >= 1"),
    ({"temperature": -0.5}, "temperature must be >= 0"),
])
def test_sampling_params_kwargs_rejects(sampling, message):
    with pytest.raises(ValueError, match=message):
        sampling_params_kwargs(sampling, seed=None, default_max_tokens=8, where="models.p sampling")


def test_structured_output_params_for_new_and_old_vllm():
    class Params:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    schema = {"type": "object"}
    new = types.SimpleNamespace(StructuredOutputsParams=Params)
    old = types.SimpleNamespace(GuidedDecodingParams=Params)
    assert structured_output_params(new, schema)["structured_outputs"].kwargs == {"json": schema}
    assert structured_output_params(old, schema)["guided_decoding"].kwargs == {"json": schema}
    with pytest.raises(BackendUnavailableError, match="no structured output"):
        structured_output_params(types.SimpleNamespace(), schema)


# -- the engine wiring, with a fake vllm ------------------------------------------------------------

class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeStructuredOutputsParams:
    def __init__(self, json):
        self.json = json


class FakeLLM:
    instances: list["FakeLLM"] = []

    def __init__(self, model, **kwargs):
        if model == "broken":
            raise RuntimeError("CUDA out of memory")
        self.model, self.kwargs, self.calls = model, kwargs, []
        FakeLLM.instances.append(self)

    def chat(self, messages, sampling_params=None, use_tqdm=True, **kwargs):
        self.calls.append({"messages": messages, "sampling_params": sampling_params, "use_tqdm": use_tqdm, **kwargs})
        outputs = []
        for conversation, params in zip(messages, sampling_params):
            last = conversation[-1]["content"]
            last_text = last if isinstance(last, str) else " ".join(p["text"] for p in last if p["type"] == "text")
            images = sum(1 for m in conversation if not isinstance(m["content"], str)
                         for p in m["content"] if p["type"] != "text")
            text = f"{images} image(s); {last_text}"
            completion = types.SimpleNamespace(text=text, token_ids=list(range(len(text.split()))), finish_reason="stop")
            outputs.append(types.SimpleNamespace(outputs=[completion], prompt_token_ids=[0] * (10 + 100 * images)))
        return outputs


class FakeLoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.instances = []
    sampling_module = types.ModuleType("vllm.sampling_params")
    sampling_module.StructuredOutputsParams = FakeStructuredOutputsParams
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.sampling_params = FakeLLM, FakeSamplingParams, sampling_module
    lora_module, request_module = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request_module.LoRARequest = FakeLoRARequest
    lora_module.request = request_module
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling_module)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora_module)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request_module)
    return module


def _spec(**kwargs) -> ModelSpec:
    # The workflow sets max_images from the config (covip.config.prepare); a backend built by hand names it.
    kwargs["options"] = {"max_images": 8, **kwargs.get("options", {})}
    return ModelSpec("policy", "vllm", kwargs.pop("model", "Qwen/Qwen3-VL-8B-Instruct"), **kwargs)


def test_engine_is_built_from_options(fake_vllm):
    VLLMChatModel(_spec(options={"max_images": 5, "max_model_len": 8192, "dtype": "bfloat16",
                                 "mm_processor_kwargs": {"max_pixels": 1003520}}))
    llm = FakeLLM.instances[-1]
    assert llm.model == "Qwen/Qwen3-VL-8B-Instruct"
    assert llm.kwargs == {
        "dtype": "bfloat16", "max_model_len": 8192, "gpu_memory_utilization": 0.9, "tensor_parallel_size": 1,
        "enforce_eager": False, "trust_remote_code": False, "seed": 0,
        "limit_mm_per_prompt": {"image": 5}, "mm_processor_kwargs": {"max_pixels": 1003520},
    }


def test_complete_batch_is_one_chat_call_with_per_request_params(fake_vllm):
    backend = VLLMChatModel(_spec(options={"max_new_tokens": 32}))
    requests = [
        ChatRequest((Message.user("a", _png((255, 0, 0)), "b", _png((0, 255, 0)), "where is it"),), seed=1),
        ChatRequest((Message.user("just text"),), {"temperature": 0.7, "top_k": 20}, seed=2),
        ChatRequest((Message.user(_png((0, 0, 255)), "colour?"),), {"max_tokens": 4}),
    ]
    responses = backend.complete_batch(requests)
    llm = FakeLLM.instances[-1]
    assert len(llm.calls) == 1 and llm.calls[0]["use_tqdm"] is False
    assert len(llm.calls[0]["messages"]) == 3
    params = [p.kwargs for p in llm.calls[0]["sampling_params"]]
    assert params == [
        {"temperature": 0.0, "max_tokens": 32, "seed": 1},
        {"temperature": 0.7, "top_k": 20, "max_tokens": 32, "seed": 2},
        {"temperature": 0.0, "max_tokens": 4},
    ]
    assert [r.text for r in responses] == ["2 image(s); a b where is it", "0 image(s); just text", "1 image(s); colour?"]
    assert [(r.usage.prompt_tokens, r.usage.completion_tokens) for r in responses] == [(210, 7), (10, 4), (110, 3)]
    assert all(r.ok and r.model == "Qwen/Qwen3-VL-8B-Instruct" for r in responses)
    assert backend.identity == "policy:vllm:Qwen/Qwen3-VL-8B-Instruct"


def test_bad_requests_fail_alone_and_stay_out_of_the_engine_call(fake_vllm):
    backend = VLLMChatModel(_spec(options={"max_images": 1, "image_format": "pil"}))
    requests = [
        ChatRequest((Message.user(_png((1, 1, 1)), _png((2, 2, 2)), "two images"),)),
        ChatRequest((Message.user("fine"),)),
        ChatRequest((Message.user(ImagePart(b"junk"), "bad image"),)),
        ChatRequest((Message.user("bad sampling"),), {"temprature": 1}),
    ]
    responses = backend.complete_batch(requests)
    assert len(FakeLLM.instances[-1].calls[0]["messages"]) == 1
    assert responses[1].ok and responses[1].text == "0 image(s); fine"
    assert "request 0 has 2 images; options.max_images allows 1" in responses[0].error
    assert "BadImageError" in responses[2].error and "request 2 message 0 part 0" in responses[2].error
    assert "temprature" in responses[3].error
    assert all(r.text is None for i, r in enumerate(responses) if i != 1)


def test_complete_structured_output_and_chat_template(fake_vllm, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text("{{ messages }}")
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    backend = VLLMChatModel(_spec(options={"chat_template": str(template)}))
    response = backend.complete(ChatRequest((Message.user("q"),), response_schema=schema))
    call = FakeLLM.instances[-1].calls[-1]
    assert response.text == "0 image(s); q"
    assert call["chat_template"] == "{{ messages }}"
    assert call["sampling_params"][0].kwargs["structured_outputs"].json == schema
    # An entry that turned structured output off sends the schema nowhere.
    plain = VLLMChatModel(_spec(structured_output="none"))
    plain.complete(ChatRequest((Message.user("q"),), response_schema=schema))
    assert "structured_outputs" not in FakeLLM.instances[-1].calls[-1]["sampling_params"][0].kwargs
    assert "chat_template" not in FakeLLM.instances[-1].calls[-1]


def test_registry_complete_many_uses_batches(fake_vllm):
    registry = ModelRegistry({"policy": {"backend": "vllm", "model": "m", "options": {"batch_size": 2, "max_images": 1}}})
    chat = registry.chat("policy")
    requests = [ChatRequest((Message.user(f"question {i}"),)) for i in range(5)]
    responses = chat.complete_many(requests, progress_file=io.StringIO())
    assert [len(call["messages"]) for call in FakeLLM.instances[-1].calls] == [2, 2, 1]
    assert [r.text for r in responses] == [f"0 image(s); question {i}" for i in range(5)]
    assert chat.usage.prompt_tokens == 50 and chat.usage.failures == 0
    # Without a batch_size, the whole list goes to the engine in one call.
    whole = ModelRegistry({"policy": {"backend": "vllm", "model": "m", "options": {"max_images": 1}}}).chat("policy")
    whole.complete_many([ChatRequest((Message.user(f"other {i}"),)) for i in range(5)], progress_file=io.StringIO())
    assert [len(call["messages"]) for call in FakeLLM.instances[-1].calls] == [5]


def test_bad_options_and_unloadable_model(fake_vllm, tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_image'\]"):
        VLLMChatModel(_spec(options={"max_image": 2}))
    with pytest.raises(ValueError, match="image_format must be one of"):
        VLLMChatModel(_spec(options={"image_format": "png"}))
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        VLLMChatModel(_spec(options={"max_images": 0}))
    with pytest.raises(BackendUnavailableError, match="chat_template"):
        VLLMChatModel(_spec(options={"chat_template": str(tmp_path / "missing.jinja")}))
    with pytest.raises(BackendUnavailableError, match="vLLM cannot load 'broken': RuntimeError: CUDA out of memory"):
        VLLMChatModel(_spec(model="broken"))


def test_missing_vllm_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(BackendUnavailableError, match="needs the package vllm"):
        VLLMChatModel(_spec())


# -- a LoRA adapter on the base model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """A real peft LoRA adapter (rank 4, lm_head included, as the authors target it) on the tiny VLM."""
    from support.adapters import build_tiny_adapter

    return build_tiny_adapter(tmp_path_factory.mktemp("vllm_adapter"))


def test_an_adapter_reaches_every_generate_call_as_a_lora_request(fake_vllm, tiny_adapter):
    backend = VLLMChatModel(_spec(model=str(tiny_adapter["base"]), options={"adapter": str(tiny_adapter["adapter"])}))
    llm = FakeLLM.instances[-1]
    assert llm.model == str(tiny_adapter["base"])  # the engine holds the base; the adapter rides on each call
    assert (llm.kwargs["enable_lora"], llm.kwargs["max_lora_rank"], llm.kwargs["max_loras"]) == (True, 8, 1)  # r=4 -> 8
    requests = [ChatRequest((Message.user(f"q{i}"),), seed=i) for i in range(3)]
    backend.complete_batch(requests)
    backend.complete(requests[0])
    assert len(llm.calls) == 2
    for call in llm.calls:
        lora = call["lora_request"]
        assert isinstance(lora, FakeLoRARequest)
        assert (lora.lora_name, lora.lora_int_id, lora.lora_path) == ("policy-adapter", 1, str(tiny_adapter["adapter"]))
    assert backend.identity == f"policy:vllm:{tiny_adapter['base']}+lora:{tiny_adapter['adapter']}"
    # Without an adapter, no LoRA anywhere.
    VLLMChatModel(_spec()).complete(requests[0])
    assert "enable_lora" not in FakeLLM.instances[-1].kwargs and "lora_request" not in FakeLLM.instances[-1].calls[0]
    VLLMChatModel(_spec(options={"adapter": str(tiny_adapter["adapter"]), "max_lora_rank": 64}))
    assert FakeLLM.instances[-1].kwargs["max_lora_rank"] == 64


def test_adapters_vllm_cannot_serve_fail_when_built(fake_vllm, tiny_adapter, tmp_path):
    with pytest.raises(BackendUnavailableError, match="neither a local folder nor a hub id in the local cache"):
        VLLMChatModel(_spec(options={"adapter": "org/not-downloaded-adapter"}))
    with pytest.raises(BackendUnavailableError, match="not a peft LoRA adapter"):
        VLLMChatModel(_spec(options={"adapter": str(tmp_path)}))
    with pytest.raises(BackendUnavailableError, match=r"trains \['lm_head'\] in full \(modules_to_save\)"):
        VLLMChatModel(_spec(options={"adapter": str(tiny_adapter["adapter_modules_to_save"])}))


def test_parse_output_carries_finish_reason():
    from covip.clients.vllm_backend import parse_output

    for reason in ("stop", "length"):
        completion = types.SimpleNamespace(text="a cap", token_ids=[1, 2], finish_reason=reason)
        response = parse_output(types.SimpleNamespace(outputs=[completion], prompt_token_ids=[0] * 3), "m")
        assert (response.finish_reason, response.truncated, response.usage.completion_tokens) == (reason, reason == "length", 2)
