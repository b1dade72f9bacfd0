"""A policy registered as a LoRA adapter on its base (option `adapter`) with the transformers backend, for
real, on the tiny VLM: it answers as the same adapter merged into a model folder does, it is not the
base, and the adapter's files key the response cache, so a changed adapter is never answered from it.
(The vLLM path is tested against the fake vllm module in test_vllm_backend.py.)"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from covip.clients.base import BackendUnavailableError, ChatRequest, ImagePart, Message
from covip.clients.cache import model_fingerprint, path_fingerprint
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.clients.transformers_backend import TransformersChatModel
from support.adapters import build_tiny_adapter, rebuild_adapter


def _png(colour) -> ImagePart:
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), colour).save(buffer, "PNG")
    return ImagePart(buffer.getvalue())


REQUESTS = [
    ChatRequest((Message.user("Memory 1:", _png((200, 30, 30)), "Who is this?", _png((30, 30, 200)), "Describe it."),),
                {"max_tokens": 8}),
    ChatRequest((Message.user("A text-only question about the photo?"),), {"max_tokens": 8}),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_adapter(tmp_path_factory.mktemp("adapters"))


def _backend(model, **options) -> TransformersChatModel:
    return TransformersChatModel(ModelSpec("policy", "transformers", str(model), device="cpu", options=options))


def test_base_plus_adapter_answers_as_the_merged_model(tiny):
    adapted = _backend(tiny["base"], adapter=str(tiny["adapter"]))
    merged = _backend(tiny["merged"])
    base = _backend(tiny["base"])
    for name, weight in merged.model.state_dict().items():  # the adapter really is in the weights
        assert torch.allclose(adapted.model.state_dict()[name], weight, atol=1e-6), name
    assert not torch.allclose(adapted.model.lm_head.weight, base.model.lm_head.weight)  # lm_head's LoRA counts
    assert [r.text for r in adapted.complete_batch(REQUESTS)] == [r.text for r in merged.complete_batch(REQUESTS)]
    logits = [b.model(**b._encode([b._prepare(REQUESTS[0], "r")])).logits for b in (adapted, base)]
    assert not torch.allclose(*logits)  # and the policy is not the base
    assert adapted.identity == f"policy:transformers:{tiny['base']}+lora:{tiny['adapter']}"


def test_an_unmerged_adapter_gives_the_same_logits(tiny):
    kept = _backend(tiny["base"], adapter=str(tiny["adapter"]), merge_adapter=False)
    merged = _backend(tiny["merged"])
    assert any("lora_" in name for name, _ in kept.model.named_parameters())
    inputs = merged._encode([merged._prepare(REQUESTS[0], "r")])
    with torch.no_grad():
        assert torch.allclose(kept.model(**inputs).logits, merged.model(**inputs).logits, atol=1e-4)


def test_a_missing_or_wrong_adapter_is_backend_unavailable(tiny, tmp_path):
    with pytest.raises(BackendUnavailableError, match="neither a local folder nor a hub id in the local cache"):
        _backend(tiny["base"], adapter="org/not-downloaded")
    with pytest.raises(BackendUnavailableError, match="not a peft LoRA adapter"):
        _backend(tiny["base"], adapter=str(tmp_path))


def test_the_adapter_files_key_the_response_cache(tiny, tmp_path):
    adapter = tmp_path / "adapter"
    rebuild_adapter(tiny["base"], adapter, seed=1)
    spec = ModelSpec("policy", "transformers", str(tiny["base"]), device="cpu", options={"adapter": str(adapter)})
    plain = ModelSpec("policy", "transformers", str(tiny["base"]), device="cpu")
    first = model_fingerprint(spec)
    assert first.startswith(model_fingerprint(plain) + "+adapter-files:")

    entry = {"backend": "transformers", "model": str(tiny["base"]), "device": "cpu", "options": {"adapter": str(adapter)}}
    cache = str(tmp_path / "cache.sqlite")
    request = REQUESTS[0]
    answer = ModelRegistry({"policy": entry}, cache_path=cache).chat("policy").complete(request)
    assert answer.ok and not answer.cached
    again = ModelRegistry({"policy": entry}, cache_path=cache).chat("policy").complete(request)
    assert again.cached and again.text == answer.text  # same adapter files: from the cache

    rebuild_adapter(tiny["base"], adapter, seed=2)  # retrained, same path, same config
    path_fingerprint.cache_clear()  # a new job would fingerprint afresh
    assert model_fingerprint(spec) != first
    fresh = ModelRegistry({"policy": entry}, cache_path=cache).chat("policy").complete(request)
    assert not fresh.cached  # the changed adapter is asked, not answered from the cache
    assert model_fingerprint(ModelSpec("p", "vllm", "m", options={"adapter": "org/not-cached"})) == "id:m+adapter-id:org/not-cached"
