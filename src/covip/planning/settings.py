"""Assumptions of `covip plan` (config section `plan`): what a run's cost estimate cannot read from the
config, stated once and printed with every plan."""

from __future__ import annotations

from dataclasses import dataclass, field


def _output_tokens() -> dict[str, int]:
    # Expected reply lengths in tokens, each capped by the max_tokens the request carries: a 6-turn
    # dialogue, 3 questions as JSON, a verifier's "yes"/"no: ...", a paragraph caption, a judge letter
    # after a short reasoning, a diagnostic answer, a LAR verdict, a GSPO rollout.
    return {"dialogue": 250, "mcqa": 330, "verifier": 10, "caption": 180, "judge": 40, "answer": 80,
            "lar_verdict": 4, "rollout": 200}


def _throughput() -> dict[str, dict[str, float]]:
    # Tokens per second of ONE GPU for an ~8B VLM in bf16: prefill and decode of batched inference on
    # vLLM's engine (many requests in flight), and forward+backward of a GSPO step (LoRA, gradient
    # checkpointing). Rough public figures; set your own measured numbers under plan.throughput.
    return {
        "H200": {"prefill": 24000.0, "decode": 3000.0, "train": 3500.0},
        "H100": {"prefill": 20000.0, "decode": 2500.0, "train": 3000.0},
        "A100": {"prefill": 10000.0, "decode": 1500.0, "train": 1500.0},
        "L40S": {"prefill": 7000.0, "decode": 1000.0, "train": 1000.0},
        "CPU": {"prefill": 200.0, "decode": 20.0, "train": 50.0},
    }


def _backend_speed() -> dict[str, float]:
    # Throughput of an in-process backend relative to vLLM's batched engine: transformers' generate
    # has no continuous batching.
    return {"vllm": 1.0, "transformers": 0.2}


def _load_seconds() -> dict[str, float]:
    # Seconds one engine or server start holds its GPUs before the first request, from local disk
    # (weights already in HF_HOME; rule download_models fetched them). Keys: an in-process backend,
    # "serve" (a `serve:` entry's server), or a model name (wins over both). Public grounds: an 8B VLM
    # in bf16 is ~17 GB of safetensors (~10 s at ~2 GB/s from NVMe); vLLM's V1 engine then runs
    # torch.compile (cached under ~/.cache/vllm/torch_compile_cache after the first start,
    # docs.vllm.ai design/torch_compile), profiles memory and captures CUDA graphs, and "Breaking the
    # Ice: Analyzing Cold Start Latency in vLLM" (arXiv 2606.07362) finds that startup mostly CPU-bound,
    # about a minute or more for 8B models; `vllm serve` adds the API server and the health wait;
    # config/paper.yaml measures 1-3 minutes per served judge start. The 30B-A3B FP8 judge reads ~31 GB
    # and compiles a MoE graph. transformers has no compile or graph capture; open_clip ViT-L/14 is
    # ~1.7 GB.
    return {"vllm": 90.0, "transformers": 45.0, "open_clip": 15.0, "serve": 120.0,
            "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8": 150.0}


@dataclass
class PlanSettings:
    """Assumptions of `covip plan` (config section `plan`)."""

    kept_fraction: float = field(default=0.8, metadata={"help": "Share of the synthesized samples the filter keeps (the paper: ~4.1K of 5.2K, 0.79).", "minimum": 0, "maximum": 1})
    chars_per_token: float = field(default=4.0, metadata={"help": "Characters of prompt or reply text per token: the plan counts text tokens as characters / chars_per_token (benchmarks/plan_tokens.py measures it with a real tokenizer on rendered requests; BENCHMARKS.md)."})
    output_tokens: dict[str, int] = field(default_factory=_output_tokens, metadata={"help": "Expected reply length in tokens per kind of call (dialogue, mcqa, verifier, caption, judge, answer, lar_verdict, rollout), each capped by the max_tokens the request carries."})
    image_output_tokens: int = field(default=1290, metadata={"help": "Tokens an image-generation API bills per generated image (Gemini image models: 1290).", "minimum": 0})
    gpu: str = field(default="H100", metadata={"help": "The GPU in-process models and training run on: a key of `throughput`."})
    throughput: dict[str, dict[str, float]] = field(default_factory=_throughput, metadata={"help": "Per GPU name: tokens per second of one GPU for prefill and decode (batched vLLM inference of an ~8B VLM) and for GSPO training (forward+backward per token per pass)."})
    backend_speed: dict[str, float] = field(default_factory=_backend_speed, metadata={"help": "Throughput of an in-process backend relative to vLLM (transformers: no continuous batching)."})
    embed_images_per_s: float = field(default=300.0, metadata={"help": "Images per second one GPU embeds with open_clip (CLIP ViT-L/14).", "minimum": 0})
    load_seconds: dict[str, float] = field(default_factory=_load_seconds, metadata={"help": "Seconds one start holds its GPUs loading a model from local disk, per in-process backend, 'serve' (a served entry's server), or model name (wins); added to GPU-hours once per start."})

    def __post_init__(self):
        if not self.chars_per_token > 0:
            raise ValueError(f"plan.chars_per_token must be > 0, got {self.chars_per_token}")
        if not 0.0 < self.kept_fraction <= 1.0:
            raise ValueError(f"plan.kept_fraction must be in (0, 1], got {self.kept_fraction}")
        if self.gpu not in self.throughput:
            raise ValueError(f"plan.gpu: no throughput for '{self.gpu}' (have {sorted(self.throughput)}); add it under "
                             "plan.throughput")
        for name, rates in self.throughput.items():
            missing = sorted({"prefill", "decode", "train"} - set(rates))
            if missing or any(float(v) <= 0 for v in rates.values()):
                raise ValueError(f"plan.throughput.{name} needs positive prefill, decode and train tokens/s (missing "
                                 f"{missing})")
        unknown = sorted(set(self.output_tokens) - set(_output_tokens()))
        if unknown:
            raise ValueError(f"plan.output_tokens: unknown kind(s) {unknown}; known: {sorted(_output_tokens())}")
        self.output_tokens = {**_output_tokens(), **self.output_tokens}
        if any(float(v) < 0 for v in self.load_seconds.values()):
            raise ValueError(f"plan.load_seconds: seconds must be >= 0, got {self.load_seconds}")
        self.load_seconds = {**_load_seconds(), **self.load_seconds}
