"""A LoRA adapter built on the tiny random VLM with peft, and the same adapter merged into a model folder:
the two forms in which a post-trained policy (ours, or the authors' checkpoint) can be registered."""

from __future__ import annotations

from pathlib import Path

from covip.local.tiny_vlm import build_tiny_vlm

# Every language linear layer and lm_head, as the authors' trainer targets them.
TARGETS = r"(.*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head)$"


def _adapter(base: Path, out: Path, seed: int, **lora) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(base)
    # init_lora_weights=False: random A and B, so the adapter really changes the outputs.
    config = LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM", **lora)
    get_peft_model(model, config).save_pretrained(out)
    return out


def build_tiny_adapter(root: Path, seed: int = 1) -> dict[str, Path]:
    """{"base": the tiny VLM, "adapter": a LoRA adapter on it, "merged": base + adapter merged into a
    model folder with the base's processor, "adapter_modules_to_save": an adapter that also trains
    lm_head in full}."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = build_tiny_vlm(root / "base", architecture="qwen2_5_vl", seed=0)
    adapter = _adapter(base, root / "adapter", seed)
    merged = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), adapter).merge_and_unload()
    merged.save_pretrained(root / "merged")
    AutoProcessor.from_pretrained(base).save_pretrained(root / "merged")
    saved = _adapter(base, root / "adapter_mts", seed, modules_to_save=["lm_head"])
    return {"base": Path(base), "adapter": adapter, "merged": root / "merged", "adapter_modules_to_save": saved}


def rebuild_adapter(base: Path, out: Path, seed: int) -> Path:
    """Overwrite the adapter at `out` with another one (a retrained adapter at the same path)."""
    return _adapter(base, out, seed)
