"""The one list of model backends. The registry's class table, the config schema's backend enum,
the set of stand-ins and the default API-key variables are all derived from it.

A backend is one way to serve a registry entry; `serves` maps each capability it implements
('chat', 'image', 'embed') to 'module:Class', imported by name on first use, so an optional
dependency is needed only when its backend is selected, and a stage's code fingerprint includes just
the backend modules its config selects. `kind` says what runs: 'api' (a remote endpoint, a key may
be needed), 'in_process' (a real model in the job's process: worth caching, may need GPUs) or
'stand_in' (offline code standing in for a model; the report marks its numbers).

`options` declares every key of a registry entry's `options:` the backend reads, with its default:
the backend takes its options from `ModelSpec.resolved_options()`, which merges the entry's over
these, and `covip.config.prepare` refuses an unknown key while the workflow is parsed, naming the
entry, the key and the known keys. A default of None means "not set" (`max_images` of vLLM: derived
from the config by `covip.config.prepare`). `modules` names the top-level Python modules the backend
imports, so `covip preflight` can tell, before a run, whether this environment can build it.
"""

from __future__ import annotations

import copy

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = ("api", "in_process", "stand_in")


@dataclass(frozen=True)
class Backend:
    name: str
    kind: str
    serves: dict[str, str] = field(default_factory=dict)
    key_env: str | None = None  # the API key's default environment variable ('api' backends)
    summary: str = ""
    env: str = "data"  # the conda env (envs/<env>.yaml) a job running this backend needs
    options: Mapping[str, Any] = field(default_factory=dict)  # every option key it reads -> its default
    modules: tuple[str, ...] = ()  # top-level modules it imports (covip preflight: importable here?)


# -- the options each backend reads (defaults) --------------------------------------------------------
# `image_mode` 'inline': images go as base64 data URLs (VLM endpoints); 'placeholder': each image becomes
# the text "[image]" and the content a plain string, for text-only endpoints (llama.cpp without a vision
# projector silently drops list-form content, text parts included). `reasoning_effort`: sent to
# reasoning-family models (gpt-5*, o1/o3/o4*) and to servers of the vllm dialect; null: not sent.
OPENAI_OPTIONS = {"image_mode": "inline", "reasoning_effort": None}
TRANSFORMERS_OPTIONS = {"dtype": "auto", "batch_size": 8, "max_new_tokens": 512, "attn_implementation": None,
                        "adapter": None, "merge_adapter": True}  # adapter: a peft LoRA folder or hub id
VLLM_OPTIONS = {
    "batch_size": None,  # None: every request of one complete_many call in one LLM.chat (vLLM schedules)
    "max_images": None,  # None: the most images a request of this config can carry (covip.config.prepare)
    "dtype": "auto",
    "max_model_len": None,
    "gpu_memory_utilization": 0.9,
    "tensor_parallel_size": 1,
    "enforce_eager": False,
    "trust_remote_code": False,
    "seed": 0,
    "max_new_tokens": 512,
    "image_format": "data_url",
    "chat_template": None,
    "mm_processor_kwargs": None,
    "adapter": None,  # a peft LoRA folder or hub id, served with enable_lora and a LoRARequest
    "max_lora_rank": None,
}
OPEN_CLIP_OPTIONS = {"batch_size": 32, "model_config": None, "cache_dir": None, "precision": "fp32",
                     "background": (255, 255, 255)}
# The compositor's options are those of covip.content.scenes.SceneComposer (a test pins them equal).
COMPOSITOR_OPTIONS = {
    "defect_rate": 0.15,
    "defect_kinds": {"occluded": 1.0, "out_of_frame": 1.0, "omitted": 1.0},
    "scale_range": [0.24, 0.42],
    "brightness": 0.2,
    "contrast": 0.2,
    "colour_cast": 0.08,
    "noise": 2.0,
    "image_size": 320,
}
PIXEL_VERIFIER_OPTIONS = {
    "threshold": 0.68,
    "work_size": 160,
    "coarse_size": 128,
    "min_template_side": 56,
    "scale_range": [0.14, 0.56],
    "scale_step": 1.08,
    "gain_tolerance": 0.4,
    "cast_tolerance": 0.12,
    "contrast_tolerance": 0.5,
}
COLOR_TEXTURE_OPTIONS = {"size": 64, "weights": {}, "mask_threshold": 0.5}
FACTS_WRITER_OPTIONS = {"malformed_rate": 0.0, "error_rate": 0.0, "format_variety": True}
LEXICAL_JUDGE_OPTIONS = {"support_threshold": 0.6, "answer_style": "boxed", "garble_rate": 0.0, "error_rate": 0.0}
NGRAM_JUDGE_OPTIONS = {"threshold": 0.3, "margin": 0.05}


_ALL = (
    Backend("openai", "api", {"chat": "covip.clients.openai_backend:OpenAIChatModel"}, "OPENAI_API_KEY",
            "any OpenAI-compatible endpoint (OpenAI, `vllm serve`, a llama.cpp server; see api_dialect)",
            options=OPENAI_OPTIONS, modules=("openai",)),
    Backend("gemini", "api", {"chat": "covip.clients.genai_backend:GeminiChatModel",
                              "image": "covip.clients.genai_backend:GeminiImageGenerator"}, "GEMINI_API_KEY",
            "Google's Gemini models through google-genai", modules=("google.genai",)),
    Backend("transformers", "in_process", {"chat": "covip.clients.transformers_backend:TransformersChatModel"},
            summary="a VLM run in the job's process with transformers (local folder or cached hub id)", env="train",
            options=TRANSFORMERS_OPTIONS, modules=("torch", "transformers")),
    Backend("vllm", "in_process", {"chat": "covip.clients.vllm_backend:VLLMChatModel"},
            summary="a VLM run in the job's process on vLLM's offline engine", env="vllm",
            options=VLLM_OPTIONS, modules=("vllm",)),
    Backend("open_clip", "in_process", {"embed": "covip.clients.openclip_backend:OpenClipEmbedder"},
            summary="CLIP image embeddings with open_clip", options=OPEN_CLIP_OPTIONS, modules=("torch", "open_clip")),
    Backend("local_compositor", "stand_in", {"image": "covip.local.compositor:Compositor"},
            summary="pastes concept cut-outs onto real texture scenes, with deliberate defects",
            options=COMPOSITOR_OPTIONS, modules=("skimage",)),
    Backend("local_pixel_verifier", "stand_in", {"chat": "covip.local.pixel_verifier:PixelVerifier"},
            summary="answers the visual-fidelity question by template matching on the pixels",
            options=PIXEL_VERIFIER_OPTIONS, modules=("scipy",)),
    Backend("local_color_texture", "stand_in", {"embed": "covip.local.embedder:ColorTextureEmbedder"},
            summary="colour histograms, edge orientations and mask shape as an image embedding",
            options=COLOR_TEXTURE_OPTIONS),
    Backend("local_facts_writer", "stand_in", {"chat": "covip.local.facts_writer:FactsFirstWriter"},
            summary="verbalizes stored facts into dialogues and questions", options=FACTS_WRITER_OPTIONS),
    Backend("local_lexical_judge", "stand_in", {"chat": "covip.local.lexical_judge:LexicalJudge"},
            summary="picks the option whose words the caption supports, else D; also judges LAR",
            options=LEXICAL_JUDGE_OPTIONS),
    Backend("local_ngram_judge", "stand_in", {"chat": "covip.local.ngram_judge:NgramJudge"},
            summary="a second judge: character n-gram TF-IDF similarity, else D", options=NGRAM_JUDGE_OPTIONS,
            modules=("sklearn",)),
    Backend("reference_oracle", "stand_in", {"chat": "covip.local.reference_policies:OraclePolicy"},
            summary="captions from the true positives' stored facts"),
    Backend("reference_context_dump", "stand_in", {"chat": "covip.local.reference_policies:ContextDumpPolicy"},
            summary="pastes every context dialogue: the text shortcut"),
    Backend("reference_blind", "stand_in", {"chat": "covip.local.reference_policies:BlindPolicy"},
            summary="describes the scene with no names or memories"),
    Backend("reference_looking", "stand_in", {"chat": "covip.local.looking_policy:LookingPolicy"},
            summary="finds the concepts in the pixels, then captions like the oracle",
            options=PIXEL_VERIFIER_OPTIONS, modules=("scipy",)),
)
BACKENDS: dict[str, Backend] = {backend.name: backend for backend in _ALL}
STAND_IN_BACKENDS = frozenset(name for name, backend in BACKENDS.items() if backend.kind == "stand_in")
IN_PROCESS_BACKENDS = frozenset(name for name, backend in BACKENDS.items() if backend.kind == "in_process")
API_BACKENDS = frozenset(name for name, backend in BACKENDS.items() if backend.kind == "api")
CAPABILITIES = ("chat", "image", "embed")
# A job running several backends takes the env of the heaviest: the vLLM env also serves transformers,
# and every env has the API clients.
ENV_ORDER = ("data", "train", "vllm")


class UnknownBackendError(ValueError):
    """A registry entry names a backend that does not exist or cannot serve what a stage asks of it."""


class UnknownOptionError(ValueError):
    """A registry entry's `options:` has a key its backend does not read."""


def resolved_options(backend: str, given: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """`given` over the backend's declared defaults (deep copies); a key the backend does not declare
    is an UnknownOptionError naming `where` (e.g. 'models.qwen3_vl_8b'), the key and the known keys.
    A backend outside the list (a test double wrapped by `covip.clients.cached.wrap`) takes `given` as is."""
    given = dict(given or {})
    if backend not in BACKENDS:
        return copy.deepcopy(given)
    declared = BACKENDS[backend].options
    unknown = sorted(set(given) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) if declared else "none (this backend reads no options)"
        raise UnknownOptionError(f"{where}.options: unknown key(s) {unknown} for backend '{backend}'; known: {known}")
    return copy.deepcopy({**declared, **given})


def backend_target(capability: str, backend: str, where: str) -> str:
    """'module:Class' serving `capability` for `backend`; the error names `where` and the choices."""
    if backend not in BACKENDS:
        raise UnknownBackendError(f"{where}: unknown backend '{backend}' (choose from {sorted(BACKENDS)})")
    target = BACKENDS[backend].serves.get(capability)
    if target is None:
        able = sorted(name for name, b in BACKENDS.items() if capability in b.serves)
        raise UnknownBackendError(f"{where}: backend '{backend}' cannot serve '{capability}' (choose from {able})")
    return target


def backend_module(capability: str, backend: str) -> str:
    """The module implementing `backend` for `capability` (for code fingerprints)."""
    return backend_target(capability, backend, where=backend).split(":")[0]


def backend_modules(backend: str) -> list[str]:
    """Every module implementing `backend`, whatever capability it serves."""
    return sorted({target.split(":")[0] for target in BACKENDS[backend].serves.values()})
