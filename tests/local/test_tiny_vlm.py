"""The tiny random Qwen-VL builder: both architectures build, reload through the Auto classes, agree
on special token ids, render multi-image chats, and generate from a two-image prompt."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from covip.local.tiny_vlm import SPECIAL_TOKENS, TinyVLMSettings, build_tiny_vlm


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One model per architecture (the `covip build-tiny-vlm` command is tested in tests/core/test_cli.py)."""
    root = tmp_path_factory.mktemp("tiny_vlm")
    return {arch: build_tiny_vlm(root / arch, architecture=arch, seed=0) for arch in ("qwen2_5_vl", "qwen3_vl")}


@pytest.fixture(scope="module")
def loaded(built):
    return {
        arch: (AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path))
        for arch, path in built.items()
    }


def _two_image_chat():
    return [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [
            {"type": "text", "text": "This is <bo>:"}, {"type": "image"},
            {"type": "text", "text": "And this is the scene:"}, {"type": "image"},
            {"type": "text", "text": "Where is <bo>?"},
        ]},
    ]


def _images(second_colour=(0, 0, 255)):
    return [Image.new("RGB", (64, 48), (255, 0, 0)), Image.new("RGB", (90, 120), second_colour)]


EXPECTED_TWO_IMAGE_PROMPT = (
    "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
    "<|im_start|>user\nThis is <bo>:<|vision_start|><|image_pad|><|vision_end|>And this is the scene:"
    "<|vision_start|><|image_pad|><|vision_end|>Where is <bo>?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.mark.parametrize("arch,model_class", [
    ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
    ("qwen3_vl", "Qwen3VLForConditionalGeneration"),
])
def test_reloads_through_auto_classes_with_consistent_token_ids(built, loaded, arch, model_class):
    model, processor = loaded[arch]
    assert type(model).__name__ == model_class
    tokenizer = processor.tokenizer
    assert tokenizer.padding_side == "left"
    config = json.loads((built[arch] / "config.json").read_text())
    assert config["image_token_id"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config["video_token_id"] == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config["vision_start_token_id"] == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config["vision_end_token_id"] == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert config["text_config"]["vocab_size"] == len(tokenizer)
    assert model.generation_config.eos_token_id == [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id]
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"
    # Special tokens are single, unsplittable ids at the front of the vocabulary.
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == expected_id
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [expected_id]
    # The tokenizer alone (as TRL loads it) also reloads with left padding and the chat template.
    alone = AutoTokenizer.from_pretrained(built[arch])
    assert alone.padding_side == "left" and alone.chat_template


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_chat_template_renders_multi_image_and_assistant_turns(loaded, arch):
    _, processor = loaded[arch]
    assert processor.apply_chat_template(_two_image_chat(), tokenize=False, add_generation_prompt=True) == EXPECTED_TWO_IMAGE_PROMPT
    history = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A mug."},
        {"role": "user", "content": "Whose?"},
    ]
    assert processor.apply_chat_template(history, tokenize=False, add_generation_prompt=False) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
        "<|im_start|>assistant\nA mug.<|im_end|>\n<|im_start|>user\nWhose?<|im_end|>\n"
    )


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_generates_from_a_two_image_prompt(loaded, arch):
    model, processor = loaded[arch]
    text = processor.apply_chat_template(_two_image_chat(), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=_images(), return_tensors="pt")
    # Each image became a handful of tokens (small pixel budget), and every placeholder was expanded.
    merged = (inputs["image_grid_thw"].prod(dim=1) // 4).tolist()
    assert len(merged) == 2 and all(4 <= n <= 16 for n in merged)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == sum(merged)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    assert 1 <= len(new_tokens) <= 5
    assert isinstance(processor.decode(new_tokens, skip_special_tokens=True), str)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_output_depends_on_the_images(loaded, arch):
    """The vision tower is wired in: changing one image changes the next-token distribution."""
    model, processor = loaded[arch]
    text = processor.apply_chat_template(_two_image_chat(), tokenize=False, add_generation_prompt=True)
    logits = []
    for colour in [(0, 0, 255), (0, 200, 0)]:
        inputs = processor(text=[text], images=_images(colour), return_tensors="pt")
        with torch.inference_mode():
            logits.append(model(**inputs).logits[0, -1])
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)


def test_weights_are_a_function_of_the_seed(built, tmp_path):
    again = build_tiny_vlm(tmp_path / "again", architecture="qwen2_5_vl", seed=0)
    other = build_tiny_vlm(tmp_path / "other", architecture="qwen2_5_vl", seed=1)
    reference, same, different = (load_file(p / "model.safetensors") for p in (built["qwen2_5_vl"], again, other))
    assert reference.keys() == same.keys()
    assert all(torch.equal(reference[k], same[k]) for k in reference)
    assert not all(torch.equal(reference[k], different[k]) for k in reference)
    assert (again / "tokenizer.json").read_text() == (built["qwen2_5_vl"] / "tokenizer.json").read_text()


def test_builder_leaves_the_global_torch_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_vlm(tmp_path / "m", architecture="qwen3_vl", seed=5, num_hidden_layers=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kwargs,message", [
    ({"architecture": "llava"}, "architecture"),
    ({"hidden_size": 66}, "divisible by num_attention_heads"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"min_image_tokens": 20, "max_image_tokens": 10}, "min_image_tokens"),
    ({"vocab_size": 100}, "vocab_size"),
    ({"initializer_range": 0}, "initializer_range"),
])
def test_settings_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TinyVLMSettings(**kwargs)


def test_unknown_size_keyword_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown setting.*hiden_size"):
        build_tiny_vlm(tmp_path / "x", hiden_size=32)
