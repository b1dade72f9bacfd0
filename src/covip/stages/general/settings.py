"""Settings of the general multi-image benchmarks (config section `general_benchmarks`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from covip.core.settings import IntervalSettings


@dataclass
class GeneralSettings(IntervalSettings):
    section: ClassVar[str] = "general_benchmarks"

    limit: int | None = field(
        default=None,
        metadata={"help": "Samples per benchmark (lmms-eval's --limit, the first N); null: all. For a quick check "
                          "only: the paper's numbers use every sample."})
    batch_size: int = field(default=1, metadata={"help": "Prompts per generate call of an in-process model."})
    model_types: dict = field(
        default_factory=dict,
        metadata={"help": "policy -> checkpoint model_type (qwen2_5_vl | qwen3_vl) for a transformers policy "
                          "whose checkpoint is not on disk when the workflow is parsed and whose name does not tell."})
    model_args: dict = field(
        default_factory=dict,
        metadata={"help": "policy -> extra constructor arguments of its lmms-eval model class, passed verbatim "
                          "(e.g. {max_pixels: 1605632} for lmms-eval's Qwen-VL classes)."})
    base_of: dict = field(
        default_factory=dict,
        metadata={"help": "trained policy -> the policy it is compared with. By default a GSPO-trained policy "
                          "(model {outdir}/training/<run>/model) is compared with the listed policy whose model is "
                          "the run's base_model."})
    tiny_items: int = field(default=12, metadata={"help": "Items of the tiny offline benchmark (tiny_multi_image)."})

    def __post_init__(self):
        super().__post_init__()
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"{self.section}.limit must be >= 1 or null, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"{self.section}.batch_size must be >= 1, got {self.batch_size}")
        if not 1 <= self.tiny_items <= 1000:
            raise ValueError(f"{self.section}.tiny_items must be in [1, 1000], got {self.tiny_items}")
        bad = {k: v for k, v in self.model_types.items() if v not in ("qwen2_5_vl", "qwen3_vl")}
        if bad:
            raise ValueError(f"{self.section}.model_types: {bad} (choose qwen2_5_vl or qwen3_vl)")
