"""In-process chat/VLM completions with vLLM's offline engine (`backend: vllm`).

This is the fast path for evaluating a local policy on a GPU: one `vllm.LLM` engine is built per
registry entry and `complete_batch` hands a whole chunk of conversations to one `LLM.chat` call, with
one `SamplingParams` per conversation (so every request keeps its own seed). For a model served
separately by `vllm serve`, use `backend: openai` with a `base_url` instead.

The registry entry's `model` is a local folder or a hub id in the local cache. `options` (all
optional):

- `batch_size` (int, default none): conversations per `LLM.chat` call when the registry's
  `complete_many` batches. Unset, one call takes every request of a `complete_many` (a job's chunk
  of captions, a whole diagnostic set, every question of a caption table): vLLM schedules inside a
  call, so the engine is never under-fed between calls; a number shows progress and checkpoints into
  the response cache more often, at the cost of idle GPU time at each call's tail;
- `max_images` (int): the most images one prompt may carry (`limit_mm_per_prompt`). Left unset, the
  workflow sets it when it parses the config to the most images a request of that config can carry
  (the largest context plus the query: `covip.config.prepare`), and a smaller value fails `snakemake -n`;
  outside the workflow, set it;
- `dtype` (default 'auto'), `max_model_len` (default: the model's), `gpu_memory_utilization`
  (default 0.9), `tensor_parallel_size` (default 1), `enforce_eager` (default false),
  `trust_remote_code` (default false), `seed` (engine seed, default 0): passed to `vllm.LLM`;
- `max_new_tokens` (int, default 512): the length limit when a request's sampling has no `max_tokens`;
- `image_format` ('data_url' default | 'pil'): how images are handed over, as base64 data URLs in
  `image_url` parts or as decoded PIL images in `image_pil` parts;
- `chat_template` (path, default: the model's own): a Jinja chat template file;
- `mm_processor_kwargs` (dict, default none): e.g. `{"max_pixels": 1003520}` for Qwen-VL;
- `adapter` (default none): a peft LoRA adapter (local folder, or hub id in the local cache) applied
  on `model`, the base: the engine is built with `enable_lora` and every generate call carries its
  `LoRARequest` (covip.clients.lora). An adapter that trains modules in full (`modules_to_save`) is
  refused: vLLM serves LoRA layers only (merge it, or use backend 'transformers');
- `max_lora_rank` (default: the adapter's rank, rounded up to one vLLM accepts).

Sampling: our sampling dicts use OpenAI/vLLM names, which map one to one onto `SamplingParams`;
temperature absent means 0 (greedy), so evaluations are deterministic unless a config asks otherwise.
A request's `response_schema` becomes vLLM structured output (JSON schema) when the entry's
`structured_output` is 'json_schema'.
"""

from __future__ import annotations

import base64
from typing import Any

from covip.clients.base import BackendUnavailableError, ChatRequest, ChatResponse, ImagePart, TextPart, Usage
from covip.clients.lora import require_adapter, vllm_rank

IMAGE_FORMATS = ("data_url", "pil")
# Our sampling keys that are SamplingParams fields of the same name.
SAMPLING_KEYS = {
    "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "max_tokens", "seed", "stop", "n",
}
# The `vllm.LLM` constructor arguments that options pass straight through (when set).
_ENGINE_OPTIONS = ("dtype", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "enforce_eager",
                   "trust_remote_code", "seed")


def image_content_part(part: ImagePart, image_format: str, where: str = "image") -> dict[str, Any]:
    """One image as an OpenAI-style content part vLLM's chat understands."""
    if image_format == "data_url":
        url = f"data:{part.mime};base64,{base64.b64encode(part.data).decode('ascii')}"
        return {"type": "image_url", "image_url": {"url": url}}
    if image_format == "pil":
        from covip.core.io import decode_image

        return {"type": "image_pil", "image_pil": decode_image(part.data, where).convert("RGB")}
    raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")


def to_vllm_conversation(request: ChatRequest, image_format: str = "data_url", where: str = "request") -> list[dict[str, Any]]:
    """Our messages as one vLLM/OpenAI chat conversation (pure, unit-tested).

    Text-only messages keep string content; messages with images become ordered lists of `text`
    and image parts, so interleaved prompts ("this is <mug>: [image]") keep their order.
    """
    conversation: list[dict[str, Any]] = []
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
                parts.append(image_content_part(part, image_format, f"{where} message {m_index} part {p_index} (image)"))
        conversation.append({"role": message.role, "content": parts})
    return conversation


def sampling_params_kwargs(
    sampling: dict[str, Any], *, seed: int | None, default_max_tokens: int, where: str = "sampling"
) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one request (pure, unit-tested).

    Missing temperature means greedy (0). The request's seed is used when the sampling dict names
    none. `n` must be 1: a backend answer is one text. Unknown keys raise ValueError naming `where`.
    """
    unknown = set(sampling) - SAMPLING_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown sampling key(s) {sorted(unknown)} for backend 'vllm'; known: {sorted(SAMPLING_KEYS)}")
    if sampling.get("n", 1) != 1:
        raise ValueError(f"{where}.n must be 1 (one answer per request), got {sampling['n']}")
    kwargs: dict[str, Any] = {k: v for k, v in sampling.items() if k != "n" and v is not None}
    kwargs.setdefault("temperature", 0.0)
    kwargs["max_tokens"] = int(kwargs.get("max_tokens") or default_max_tokens)
    if kwargs["max_tokens"] < 1:
        raise ValueError(f"{where}.max_tokens must be >= 1, got {kwargs['max_tokens']}")
    if float(kwargs["temperature"]) < 0:
        raise ValueError(f"{where}.temperature must be >= 0, got {kwargs['temperature']}")
    if "seed" not in kwargs and seed is not None:
        kwargs["seed"] = int(seed)
    if "top_k" in kwargs and int(kwargs["top_k"]) <= 0:
        kwargs["top_k"] = -1  # vLLM's "off"; configs written for transformers may say 0
    if isinstance(kwargs.get("stop"), str):
        kwargs["stop"] = [kwargs["stop"]]
    return kwargs


def structured_output_params(vllm_sampling_module, schema: dict[str, Any]) -> dict[str, Any]:
    """The SamplingParams keyword that constrains output to a JSON schema, for old and new vLLM."""
    if hasattr(vllm_sampling_module, "StructuredOutputsParams"):  # vLLM >= 0.11
        return {"structured_outputs": vllm_sampling_module.StructuredOutputsParams(json=schema)}
    if hasattr(vllm_sampling_module, "GuidedDecodingParams"):  # older releases
        return {"guided_decoding": vllm_sampling_module.GuidedDecodingParams(json=schema)}
    raise BackendUnavailableError("this vLLM version offers no structured output parameters")


class VLLMChatModel:
    """A vLLM offline engine in this process; implements `complete` and `complete_batch`."""

    def __init__(self, spec):
        options = spec.resolved_options()
        try:
            import vllm
            import vllm.sampling_params as vllm_sampling
        except ImportError as error:  # optional heavy dependency: checked when built, not at import
            raise BackendUnavailableError(
                f"models.{spec.name} uses backend 'vllm', which needs the package vllm (a CUDA machine; `pip install vllm`) "
                f"({error}); or serve the model with `vllm serve` and use backend 'openai' with a base_url, "
                "or use backend 'transformers'"
            ) from error
        if not spec.model:
            raise ValueError(f"models.{spec.name}: backend 'vllm' needs `model` (a local model folder or hub id)")
        if options["image_format"] not in IMAGE_FORMATS:
            raise ValueError(f"models.{spec.name}.options.image_format must be one of {IMAGE_FORMATS}, got {options['image_format']!r}")
        if options["max_images"] is None:
            raise ValueError(f"models.{spec.name}.options.max_images is not set: the workflow derives it from the config "
                             "when it parses it; outside the workflow, set it to the most images one request carries")
        for name in ("batch_size", "max_images", "max_new_tokens", "tensor_parallel_size"):
            if options[name] is not None and int(options[name]) < 1:
                raise ValueError(f"models.{spec.name}.options.{name} must be >= 1, got {options[name]}")
        self.spec = spec
        self.identity = spec.identity
        self.options = options
        self._vllm = vllm
        self._sampling_module = vllm_sampling
        self.chat_template = None
        if options["chat_template"]:
            try:
                with open(options["chat_template"], encoding="utf-8") as handle:
                    self.chat_template = handle.read()
            except OSError as error:
                raise BackendUnavailableError(f"models.{spec.name}.options.chat_template: {error}") from error
        engine: dict[str, Any] = {k: options[k] for k in _ENGINE_OPTIONS if options[k] is not None}
        engine["limit_mm_per_prompt"] = {"image": int(options["max_images"])}
        if options["mm_processor_kwargs"]:
            engine["mm_processor_kwargs"] = dict(options["mm_processor_kwargs"])
        self.lora_request = None
        if options["adapter"]:
            engine.update(self._lora(spec, options))
        try:
            self.llm = vllm.LLM(model=spec.model, **engine)
        except Exception as error:  # noqa: BLE001 - vLLM raises many types for a model it cannot load
            raise BackendUnavailableError(f"models.{spec.name}: vLLM cannot load '{spec.model}': {type(error).__name__}: {error}") from error

    def _lora(self, spec, options) -> dict[str, Any]:
        """Engine arguments for the entry's LoRA adapter; sets the LoRARequest every call carries."""
        where = f"models.{spec.name}.options.adapter"
        path, config = require_adapter(options["adapter"], where)
        if config.get("modules_to_save"):
            raise BackendUnavailableError(
                f"{where}: the adapter trains {config['modules_to_save']} in full (modules_to_save), which vLLM "
                "cannot serve; merge it into the base model, or use backend 'transformers'"
            )
        try:
            from vllm.lora.request import LoRARequest
        except ImportError as error:
            raise BackendUnavailableError(f"{where}: this vLLM has no LoRA support ({error})") from error
        self.lora_request = LoRARequest(f"{spec.name}-adapter", 1, path)
        rank = int(options["max_lora_rank"] or vllm_rank(config, where))
        return {"enable_lora": True, "max_lora_rank": rank, "max_loras": 1}

    def _sampling_params(self, request: ChatRequest, where: str):
        kwargs = sampling_params_kwargs(request.sampling, seed=request.seed,
                                        default_max_tokens=int(self.options["max_new_tokens"]), where=f"{where} sampling")
        if request.response_schema is not None and self.spec.structured_output == "json_schema":
            kwargs.update(structured_output_params(self._sampling_module, request.response_schema))
        return self._vllm.SamplingParams(**kwargs)

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer one request (a request that cannot be prepared comes back with `error` set)."""
        return self.complete_batch([request])[0]

    def complete_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """Answer many requests with one `LLM.chat` call; results in input order.

        A request that cannot be prepared (a bad image, an unknown sampling key, too many images)
        gets an error response and is left out of the engine call; the others still run.
        """
        results: list[ChatResponse | None] = [None] * len(requests)
        conversations, params, indices = [], [], []
        limit = int(self.options["max_images"])
        for index, request in enumerate(requests):
            where = f"models.{self.spec.name} request {index}"
            try:
                if len(request.images) > limit:
                    raise ValueError(f"{where} has {len(request.images)} images; options.max_images allows {limit}")
                conversation = to_vllm_conversation(request, self.options["image_format"], where)
                sampling_params = self._sampling_params(request, where)
            except Exception as error:  # noqa: BLE001 - recorded on this request's response
                results[index] = ChatResponse(None, self.spec.model, error=f"{type(error).__name__}: {error}")
                continue
            conversations.append(conversation)
            params.append(sampling_params)
            indices.append(index)
        if conversations:
            chat_kwargs: dict[str, Any] = {"sampling_params": params, "use_tqdm": False}
            if self.chat_template is not None:
                chat_kwargs["chat_template"] = self.chat_template
            if self.lora_request is not None:
                chat_kwargs["lora_request"] = self.lora_request
            outputs = self.llm.chat(conversations, **chat_kwargs)
            if len(outputs) != len(conversations):
                raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(conversations)} conversations")
            for index, output in zip(indices, outputs):
                results[index] = parse_output(output, self.spec.model)
        return results  # type: ignore[return-value]


def parse_output(output, model: str) -> ChatResponse:
    """A vLLM `RequestOutput` as our ChatResponse: the first completion's text, the token counts and
    why it stopped (`CompletionOutput.finish_reason`: "stop", or "length" at the token cap)."""
    completion = output.outputs[0]
    prompt_tokens = len(output.prompt_token_ids or [])
    usage = Usage(prompt_tokens, len(completion.token_ids or []))
    finish = getattr(completion, "finish_reason", None)
    return ChatResponse(completion.text, model, usage, finish_reason=None if finish is None else str(finish))
