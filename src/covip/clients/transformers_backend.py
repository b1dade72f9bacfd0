"""In-process chat/VLM completions with Hugging Face transformers (`backend: transformers`).

The registry entry's `model` is a local model folder (or a hub id already in the local cache; runs
never download). Any image-text-to-text model whose processor has a chat template works, e.g.
Qwen2.5-VL, Qwen3-VL, or the tiny random model of `covip.local.tiny_vlm`; a text-only causal LM works for
requests without images. `device: auto` means the first GPU when torch sees one, else the CPU.

`options` (all optional):

- `dtype` ('auto' | 'bfloat16' | 'float16' | 'float32', default 'auto': bfloat16 on a GPU, float32
  on the CPU);
- `batch_size` (int, default 8): prompts per `generate` call in `complete_batch` (the registry's
  `complete_many` also chunks by it);
- `max_new_tokens` (int, default 512): the length limit when a request's sampling has no
  `max_tokens`;
- `attn_implementation` (e.g. 'sdpa', 'eager', 'flash_attention_2'; default: transformers' choice);
- `adapter` (default none): a peft LoRA adapter (local folder, or hub id in the local cache) applied
  with peft on `model`, the base (covip.clients.lora); the processor comes from the base;
- `merge_adapter` (bool, default true): merge the adapter into the weights once loaded (faster
  generation; false keeps the LoRA layers separate).

Sampling: temperature 0 or absent is greedy decoding; otherwise `temperature`, `top_p`, `top_k`,
`min_p` and `repetition_penalty` are applied. OpenAI/vLLM-only keys (`presence_penalty`,
`frequency_penalty`) have no transformers equivalent: they are ignored with a warning; an unknown key
is an error. A request's `seed` seeds torch's generator for its `generate` call, so sampled answers
reproduce; in a batch the seed is derived from all seeds of the batch, so a sampled answer
reproduces for the same batch (which a rerun of the same stage is). Structured output
(`response_schema`) is not enforced by this backend; stages parse and validate answers themselves.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any

from covip.clients.base import BackendUnavailableError, ChatRequest, ChatResponse, ImagePart, TextPart, Usage
from covip.clients.lora import require_adapter
from covip.core.io import decode_image
from covip.core.seeding import derive_seed

DTYPES = ("auto", "bfloat16", "float16", "float32")

# Sampling keys this backend applies, and those it knows but cannot apply (OpenAI/vLLM extensions).
SUPPORTED_SAMPLING = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens", "seed"}
IGNORED_SAMPLING = {"presence_penalty", "frequency_penalty", "n", "stop"}
_WHITE = (255, 255, 255)

# torch's default generator is process-global: seeding it and generating must not interleave
# between threads, and one model must not run two generate calls at once anyway.
_GENERATE_LOCK = threading.Lock()


def resolve_device(device: str) -> str:
    """'auto' means the first GPU when torch sees one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(name: str, device: str):
    """The torch dtype for the `dtype` option ('auto': bfloat16 on a GPU, float32 on the CPU)."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"options.dtype must be one of {DTYPES}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def generation_kwargs(sampling: dict[str, Any], default_max_new_tokens: int, *, where: str = "sampling") -> dict[str, Any]:
    """Keyword arguments of `model.generate` for one of our sampling dicts (pure, unit-tested).

    Temperature 0 or absent is greedy. Keys the backend cannot apply are ignored with a warning;
    unknown keys raise ValueError naming `where`.
    """
    unknown = set(sampling) - SUPPORTED_SAMPLING - IGNORED_SAMPLING
    if unknown:
        raise ValueError(f"{where}: unknown sampling key(s) {sorted(unknown)} for backend 'transformers'; "
                         f"known: {sorted(SUPPORTED_SAMPLING | IGNORED_SAMPLING)}")
    ignored = sorted(k for k in set(sampling) & IGNORED_SAMPLING if sampling[k] not in (None, 0, 0.0, 1))
    if ignored:
        warnings.warn(f"{where}: backend 'transformers' cannot apply sampling key(s) {ignored}; they are ignored",
                      stacklevel=2)
    max_new = sampling.get("max_tokens") or default_max_new_tokens
    if int(max_new) < 1:
        raise ValueError(f"{where}.max_tokens must be >= 1, got {max_new}")
    kwargs: dict[str, Any] = {"max_new_tokens": int(max_new)}
    temperature = sampling.get("temperature")
    if not temperature:
        # Greedy. Explicit None for the sampling knobs stops the model's generation_config (Qwen ships
        # top_k/top_p there) from triggering "flags ignored" warnings.
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        if float(temperature) < 0:
            raise ValueError(f"{where}.temperature must be >= 0, got {temperature}")
        kwargs.update(do_sample=True, temperature=float(temperature))
        kwargs["top_p"] = float(sampling["top_p"]) if sampling.get("top_p") is not None else None
        # vLLM and OpenAI-style configs write top_k -1 for "off"; transformers wants None (or 0).
        top_k = sampling.get("top_k")
        kwargs["top_k"] = int(top_k) if top_k is not None and int(top_k) > 0 else None
        if sampling.get("min_p"):
            kwargs["min_p"] = float(sampling["min_p"])
    if sampling.get("repetition_penalty") not in (None, 1, 1.0):
        kwargs["repetition_penalty"] = float(sampling["repetition_penalty"])
    return kwargs


def to_pil(part: ImagePart, where: str):
    """Decode an image part to an RGB PIL image; transparency is flattened onto white."""
    from PIL import Image

    image = decode_image(part.data, where)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def to_processor_messages(request: ChatRequest, where: str = "request") -> tuple[list[dict[str, Any]], list[Any]]:
    """Our messages as a processor chat conversation, plus the decoded images in prompt order.

    Text-only messages get string content (every chat template takes that); messages with images
    get a list of `{"type": "text"}` / `{"type": "image"}` parts in their original order. The images
    themselves are passed to the processor separately, in the same order as their parts.
    """
    conversation: list[dict[str, Any]] = []
    images: list[Any] = []
    for m_index, message in enumerate(request.messages):
        if message.role not in ("system", "user", "assistant"):
            raise ValueError(f"{where} message {m_index}: unknown role {message.role!r}")
        if not message.images:
            conversation.append({"role": message.role, "content": message.text})
            continue
        parts: list[dict[str, Any]] = []
        for p_index, part in enumerate(message.parts):
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                images.append(to_pil(part, f"{where} message {m_index} part {p_index} (image)"))
                parts.append({"type": "image"})
        conversation.append({"role": message.role, "content": parts})
    return conversation, images


@dataclass
class _Prepared:
    text: str
    images: list[Any]
    kwargs: dict[str, Any]
    seed: int | None


class TransformersChatModel:
    """A transformers model generating in this process; implements `complete` and `complete_batch`."""

    def __init__(self, spec):
        options = spec.resolved_options()
        try:
            import torch
            import transformers
        except ImportError as error:  # optional heavy dependency: checked when built, not at import
            raise BackendUnavailableError(
                f"models.{spec.name} uses backend 'transformers', which needs the packages torch and transformers "
                f"({error}); install them or choose another backend"
            ) from error
        if not spec.model:
            raise ValueError(f"models.{spec.name}: backend 'transformers' needs `model` (a local model folder or hub id)")
        self.spec = spec
        self.identity = spec.identity
        self._torch = torch
        self.batch_size = int(options["batch_size"])
        self.max_new_tokens = int(options["max_new_tokens"])
        if self.batch_size < 1:
            raise ValueError(f"models.{spec.name}.options.batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"models.{spec.name}.options.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self.device = resolve_device(spec.device)
        try:
            dtype = resolve_dtype(options["dtype"], self.device)
        except ValueError as error:
            raise ValueError(f"models.{spec.name}.{error}") from None

        load: dict[str, Any] = {"dtype": dtype}
        if options["attn_implementation"]:
            load["attn_implementation"] = options["attn_implementation"]
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(spec.model)
            try:
                model = transformers.AutoModelForImageTextToText.from_pretrained(spec.model, **load)
            except ValueError:  # not a vision-language architecture: a text-only causal LM
                model = transformers.AutoModelForCausalLM.from_pretrained(spec.model, **load)
        except (OSError, ValueError, ImportError) as error:
            raise BackendUnavailableError(
                f"models.{spec.name}: cannot load '{spec.model}' with transformers: {error}. `model` must be a local "
                "folder (e.g. one made by `python -m covip.local.tiny_vlm DIR`) or a hub id already in the local cache"
            ) from error
        if options["adapter"]:
            model = self._with_adapter(model, options)
        self.model = model.to(self.device).eval()
        # The tokenizer is the processor itself for text-only models.
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Batched decoder-only generation needs left padding (Qwen's rotary positions assume it too).
        self.tokenizer.padding_side = "left"
        self._has_images = hasattr(self.processor, "image_processor")

    def _with_adapter(self, model, options):
        """The base model with the entry's LoRA adapter applied (and merged, unless merge_adapter is false)."""
        where = f"models.{self.spec.name}.options.adapter"
        path, _ = require_adapter(options["adapter"], where)
        try:
            from peft import PeftModel
        except ImportError as error:
            raise BackendUnavailableError(f"{where}: a LoRA adapter needs the package peft ({error})") from error
        try:
            model = PeftModel.from_pretrained(model, path)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise BackendUnavailableError(f"{where}: cannot apply {path} to '{self.spec.model}': {error}") from error
        return model.merge_and_unload() if options["merge_adapter"] else model

    # -- preparation -------------------------------------------------------------------------------

    def _prepare(self, request: ChatRequest, where: str) -> _Prepared:
        conversation, images = to_processor_messages(request, where)
        if images and not self._has_images:
            raise ValueError(f"{where}: model '{self.spec.model}' is text-only but the request has {len(images)} image(s)")
        text = self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        kwargs = generation_kwargs(request.sampling, self.max_new_tokens, where=f"{where} sampling")
        seed = request.seed if request.seed is not None else request.sampling.get("seed")
        return _Prepared(text, images, kwargs, seed)

    def _encode(self, prepared: list[_Prepared]):
        texts = [p.text for p in prepared]
        images = [image for p in prepared for image in p.images]
        if self._has_images:
            inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        else:
            inputs = self.processor(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        return inputs.to(self.device)

    # -- generation --------------------------------------------------------------------------------

    def _generate(self, prepared: list[_Prepared]) -> list[ChatResponse]:
        """One `generate` call over prompts that share their generation kwargs."""
        torch = self._torch
        inputs = self._encode(prepared)
        kwargs = dict(prepared[0].kwargs)
        seeds = [p.seed for p in prepared if p.seed is not None]
        prompt_width = inputs["input_ids"].shape[1]
        with _GENERATE_LOCK:
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.device.startswith("cuda") else []):
                if kwargs.get("do_sample") and seeds:
                    torch.manual_seed(seeds[0] if len(prepared) == 1 else derive_seed(0, "batch", *sorted(seeds)))
                with torch.inference_mode():
                    output = self.model.generate(**inputs, **kwargs, pad_token_id=self.tokenizer.pad_token_id)
        generated = output[:, prompt_width:].cpu()
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        stop_ids = set(self._eos_ids())
        responses = []
        cap = int(kwargs["max_new_tokens"])
        for row, prompt_tokens in zip(generated.tolist(), prompt_lengths):
            n, stopped = len(row), False
            for index, token in enumerate(row):
                if token in stop_ids:
                    n, stopped = index + 1, True  # the end-of-turn token counts as generated; what follows is padding
                    break
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            # No end-of-turn token within the cap: cut off, as vLLM and the APIs say with "length".
            finish = "stop" if stopped or n < cap else "length"
            responses.append(ChatResponse(text, self.spec.model, Usage(int(prompt_tokens), n), finish_reason=finish))
        return responses

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer one request."""
        return self._generate([self._prepare(request, f"models.{self.spec.name} request")])[0]

    def complete_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """Answer many requests with batched, left-padded generation; results in input order.

        Requests are grouped by their generation settings (one `generate` call takes one set) and
        each group runs in chunks of `batch_size`. A request that cannot be prepared (a bad image, an
        unknown sampling key) gets an error response; the others still run.
        """
        results: list[ChatResponse | None] = [None] * len(requests)
        groups: dict[str, list[tuple[int, _Prepared]]] = {}
        for index, request in enumerate(requests):
            try:
                prepared = self._prepare(request, f"models.{self.spec.name} batch request {index}")
            except Exception as error:  # noqa: BLE001 - recorded on this request's response
                results[index] = ChatResponse(None, self.spec.model, error=f"{type(error).__name__}: {error}")
                continue
            groups.setdefault(repr(sorted(prepared.kwargs.items())), []).append((index, prepared))
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                for (index, _), response in zip(chunk, self._generate([p for _, p in chunk])):
                    results[index] = response
        return results  # type: ignore[return-value]
