"""The transformers chat backend on the tiny random Qwen-VL models: message conversion, sampling
settings, batched generation equal to one-by-one greedy decoding, token accounting, seeded sampling."""

from __future__ import annotations

import io
import sys
import warnings

import pytest
from PIL import Image

from covip.clients.base import BackendUnavailableError, ChatRequest, ImagePart, Message
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.clients.transformers_backend import TransformersChatModel, generation_kwargs, to_processor_messages
from covip.core.io import BadImageError
from covip.local.tiny_vlm import build_tiny_vlm


def _png(colour, size=(64, 64), mode="RGB") -> ImagePart:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return ImagePart(buffer.getvalue())


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {arch: build_tiny_vlm(root / arch, architecture=arch, seed=0) for arch in ("qwen2_5_vl", "qwen3_vl")}


@pytest.fixture(scope="module")
def backends(model_dirs):
    return {
        arch: TransformersChatModel(ModelSpec("policy", "transformers", str(path), options={"max_new_tokens": 6, "batch_size": 4}))
        for arch, path in model_dirs.items()
    }


def _requests() -> list[ChatRequest]:
    """Multi-image prompts of different lengths, a text-only one and a multi-turn one."""
    return [
        ChatRequest((Message.system("Be brief."),
                     Message.user("This is <mug>:", _png((255, 0, 0)), "and the scene:", _png((0, 0, 255), (40, 90)),
                                  "Where is <mug> in the scene? Answer in one short sentence."))),
        ChatRequest((Message.user("A text-only question?"),)),
        ChatRequest((Message.user(_png((0, 255, 0), (120, 80)), _png((9, 9, 9), (30, 30)), _png((200, 200, 0))),
                     Message.assistant("Three things."), Message.user("Name them."))),
    ]


# -- pure parts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampling,expected", [
    ({}, {"max_new_tokens": 50, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}),
    ({"temperature": 0, "top_p": 0.9}, {"max_new_tokens": 50, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}),
    ({"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 7},
     {"max_new_tokens": 7, "do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}),
    ({"temperature": 1.0, "top_k": -1}, {"max_new_tokens": 50, "do_sample": True, "temperature": 1.0, "top_p": None, "top_k": None}),
    ({"temperature": 0.5, "min_p": 0.1, "repetition_penalty": 1.1},
     {"max_new_tokens": 50, "do_sample": True, "temperature": 0.5, "top_p": None, "top_k": None, "min_p": 0.1,
      "repetition_penalty": 1.1}),
    ({"seed": 3}, {"max_new_tokens": 50, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}),
])
def test_generation_kwargs(sampling, expected):
    assert generation_kwargs(sampling, 50) == expected


def test_generation_kwargs_rejects_unknown_and_warns_on_unsupported_keys():
    with pytest.raises(ValueError, match=r"models.x sampling: unknown sampling key\(s\) \['temprature'\]"):
        generation_kwargs({"temprature": 0.5}, 10, where="models.x sampling")
    with pytest.warns(UserWarning, match="presence_penalty"):
        generation_kwargs({"presence_penalty": 1.5}, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generation_kwargs({"presence_penalty": 0.0}, 10)  # a neutral value is not worth a warning
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generation_kwargs({"temperature": -1}, 10)


def test_to_processor_messages_keeps_part_order_and_flattens_transparency():
    request = ChatRequest((
        Message.system("sys"),
        Message.user("before", _png((255, 0, 0, 0), (20, 10), mode="RGBA"), "between", _png((0, 255, 0), (8, 8)), "after"),
        Message.assistant("ok"),
    ))
    conversation, images = to_processor_messages(request)
    assert conversation == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [
            {"type": "text", "text": "before"}, {"type": "image"}, {"type": "text", "text": "between"},
            {"type": "image"}, {"type": "text", "text": "after"},
        ]},
        {"role": "assistant", "content": "ok"},
    ]
    assert [image.size for image in images] == [(20, 10), (8, 8)]
    assert all(image.mode == "RGB" for image in images)
    assert images[0].getpixel((0, 0)) == (255, 255, 255)  # fully transparent red shows the white backdrop


def test_to_processor_messages_names_a_bad_image():
    request = ChatRequest((Message.user("look", ImagePart(b"not a png")),))
    with pytest.raises(BadImageError, match="req 7 message 0 part 1"):
        to_processor_messages(request, "req 7")


# -- the backend on real (tiny) models ---------------------------------------------------------------

@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_batch_equals_one_by_one_greedy(backends, arch):
    backend = backends[arch]
    requests = _requests()
    single = [backend.complete(r) for r in requests]
    batched = backend.complete_batch(requests)
    assert [r.error for r in batched] == [None] * 3
    assert [r.text for r in batched] == [r.text for r in single]
    assert [(r.usage.prompt_tokens, r.usage.completion_tokens) for r in batched] == \
           [(r.usage.prompt_tokens, r.usage.completion_tokens) for r in single]
    # Prompts really differ in length (so the batch was padded) and the answers differ by prompt.
    assert len({r.usage.prompt_tokens for r in single}) == 3
    assert len({r.text for r in single}) == 3
    assert all(1 <= r.usage.completion_tokens <= 6 for r in single)
    assert all(r.model == backend.spec.model for r in single)


def test_prompt_tokens_count_the_real_prompt(backends):
    backend = backends["qwen2_5_vl"]
    request = _requests()[0]
    conversation, images = to_processor_messages(request)
    text = backend.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    encoded = backend.processor(text=[text], images=images, return_tensors="pt")
    response = backend.complete(request)
    assert response.usage.prompt_tokens == encoded["input_ids"].shape[1]


def test_max_tokens_in_sampling_overrides_the_default(backends):
    backend = backends["qwen2_5_vl"]
    messages = _requests()[1].messages
    short = backend.complete(ChatRequest(messages, {"max_tokens": 2}))
    assert short.usage.completion_tokens <= 2
    longer = backend.complete(ChatRequest(messages))
    assert longer.text.startswith(short.text)  # greedy: the short answer is a prefix of the longer one
    # A tiny random model never says end-of-turn within 2 tokens: the answer is marked as cut off.
    assert short.usage.completion_tokens == 2 and short.finish_reason == "length" and short.truncated
    assert longer.finish_reason == ("length" if longer.usage.completion_tokens == backend.max_new_tokens else "stop")


def test_seeded_sampling_reproduces_and_seeds_differ(backends):
    backend = backends["qwen2_5_vl"]
    messages = _requests()[0].messages
    sampling = {"temperature": 1.5, "max_tokens": 8}
    texts = [backend.complete(ChatRequest(messages, sampling, seed=seed)).text for seed in (11, 11, 12, 13)]
    assert texts[0] == texts[1]
    assert len(set(texts[1:])) > 1
    batch = backend.complete_batch([ChatRequest(messages, sampling, seed=11)] * 2)
    again = backend.complete_batch([ChatRequest(messages, sampling, seed=11)] * 2)
    assert [r.text for r in batch] == [r.text for r in again]


def test_a_bad_request_in_a_batch_fails_alone(backends):
    backend = backends["qwen2_5_vl"]
    good = _requests()[1]
    bad_image = ChatRequest((Message.user("look", ImagePart(b"junk")),))
    bad_sampling = ChatRequest(good.messages, {"temprature": 0.2})
    results = backend.complete_batch([bad_image, good, bad_sampling])
    assert results[0].error and "batch request 0" in results[0].error and "BadImageError" in results[0].error
    assert results[2].error and "temprature" in results[2].error
    assert results[1].ok and results[1].text == backend.complete(good).text


def test_registry_complete_many_batches_and_matches_single(model_dirs):
    registry = ModelRegistry({"policy": {"backend": "transformers", "model": str(model_dirs["qwen3_vl"]),
                                         "options": {"batch_size": 2, "max_new_tokens": 4}}})
    chat = registry.chat("policy")
    requests = _requests()
    calls = []
    original = chat.inner.complete_batch
    chat.inner.complete_batch = lambda chunk: calls.append(len(chunk)) or original(chunk)
    many = chat.complete_many(requests, progress_file=io.StringIO())
    assert calls == [2, 1]
    assert [r.text for r in many] == [chat.inner.complete(r).text for r in requests]
    assert chat.usage.requests == 3 and chat.usage.failures == 0
    assert chat.usage.completion_tokens == sum(r.usage.completion_tokens for r in many) > 0
    assert chat.identity == f"policy:transformers:{model_dirs['qwen3_vl']}"


def test_missing_model_folder_is_backend_unavailable(tmp_path):
    with pytest.raises(BackendUnavailableError, match="cannot load .*covip.local.tiny_vlm"):
        TransformersChatModel(ModelSpec("policy", "transformers", str(tmp_path / "nowhere")))


def test_unknown_option_and_bad_values_are_errors(model_dirs):
    path = str(model_dirs["qwen2_5_vl"])
    with pytest.raises(ValueError, match=r"models.policy.options: unknown key\(s\) \['batchsize'\]"):
        TransformersChatModel(ModelSpec("policy", "transformers", path, options={"batchsize": 2}))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TransformersChatModel(ModelSpec("policy", "transformers", path, options={"batch_size": 0}))
    with pytest.raises(ValueError, match="dtype must be one of"):
        TransformersChatModel(ModelSpec("policy", "transformers", path, options={"dtype": "fp8"}))


def test_missing_transformers_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(BackendUnavailableError, match="needs the packages torch and transformers"):
        TransformersChatModel(ModelSpec("policy", "transformers", "whatever"))
