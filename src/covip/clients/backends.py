"""The one list of model backends. The registry's class table, the config schema's backend enum,
the set of stand-ins and the default API-key variables are all derived from it.

A backend is one way to serve a registry entry; `serves` maps each capability it implements
('chat', 'image', 'embed') to 'module:Class', imported by name on first use, so an optional
dependency is needed only when its backend is selected, and a stage's code fingerprint includes just
the backend modules its config selects. `kind` says what runs: 'api' (a remote endpoint, a key may
be needed), 'in_process' (a real model in the job's process: worth caching, may need GPUs) or
'stand_in' (offline code standing in for a model; the report marks its numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("api", "in_process", "stand_in")


@dataclass(frozen=True)
class Backend:
    name: str
    kind: str
    serves: dict[str, str] = field(default_factory=dict)
    key_env: str | None = None  # the API key's default environment variable ('api' backends)
    summary: str = ""
    env: str = "data"  # the conda env (envs/<env>.yaml) a job running this backend needs


_ALL = (
    Backend("openai", "api", {"chat": "covip.clients.openai_backend:OpenAIChatModel"}, "OPENAI_API_KEY",
            "any OpenAI-compatible endpoint (OpenAI, `vllm serve`, a llama.cpp server)"),
    Backend("gemini", "api", {"chat": "covip.clients.genai_backend:GeminiChatModel",
                              "image": "covip.clients.genai_backend:GeminiImageGenerator"}, "GEMINI_API_KEY",
            "Google's Gemini models through google-genai"),
    Backend("transformers", "in_process", {"chat": "covip.clients.transformers_backend:TransformersChatModel"},
            summary="a VLM run in the job's process with transformers (local folder or cached hub id)", env="train"),
    Backend("vllm", "in_process", {"chat": "covip.clients.vllm_backend:VLLMChatModel"},
            summary="a VLM run in the job's process on vLLM's offline engine", env="vllm"),
    Backend("open_clip", "in_process", {"embed": "covip.clients.openclip_backend:OpenClipEmbedder"},
            summary="CLIP image embeddings with open_clip"),
    Backend("local_compositor", "stand_in", {"image": "covip.local.compositor:Compositor"},
            summary="pastes concept cut-outs onto real texture scenes, with deliberate defects"),
    Backend("local_pixel_verifier", "stand_in", {"chat": "covip.local.pixel_verifier:PixelVerifier"},
            summary="answers the visual-fidelity question by template matching on the pixels"),
    Backend("local_color_texture", "stand_in", {"embed": "covip.local.embedder:ColorTextureEmbedder"},
            summary="colour histograms, edge orientations and mask shape as an image embedding"),
    Backend("local_facts_writer", "stand_in", {"chat": "covip.local.facts_writer:FactsFirstWriter"},
            summary="verbalizes stored facts into dialogues and questions"),
    Backend("local_lexical_judge", "stand_in", {"chat": "covip.local.lexical_judge:LexicalJudge"},
            summary="picks the option whose words the caption supports, else D; also judges LAR"),
    Backend("local_ngram_judge", "stand_in", {"chat": "covip.local.ngram_judge:NgramJudge"},
            summary="a second judge: character n-gram TF-IDF similarity, else D"),
    Backend("reference_oracle", "stand_in", {"chat": "covip.local.reference_policies:OraclePolicy"},
            summary="captions from the true positives' stored facts"),
    Backend("reference_context_dump", "stand_in", {"chat": "covip.local.reference_policies:ContextDumpPolicy"},
            summary="pastes every context dialogue: the text shortcut"),
    Backend("reference_blind", "stand_in", {"chat": "covip.local.reference_policies:BlindPolicy"},
            summary="describes the scene with no names or memories"),
    Backend("reference_looking", "stand_in", {"chat": "covip.local.looking_policy:LookingPolicy"},
            summary="finds the concepts in the pixels, then captions like the oracle"),
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
