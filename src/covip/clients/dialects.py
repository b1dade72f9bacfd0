"""API dialects of OpenAI-compatible endpoints: which request keys each server takes, and where.

A registry entry of backend 'openai' says which server it talks to with `api_dialect`:

- `openai`: the OpenAI API. It answers HTTP 400 to any body key it does not know, so only the
  Chat Completions fields go out; our server extensions (`top_k`, `min_p`, `repetition_penalty`)
  are not sent (logged once per entry and key). Reasoning-family models (gpt-5*, o1*, o3*, o4*)
  take `max_completion_tokens` instead of `max_tokens` and reject sampling controls other than the
  default: `temperature` and `top_p` go out only when they are 1, and the penalties and `stop` are
  not sent; `reasoning_effort` (backend option) goes out when configured.
- `vllm`: `vllm serve`. It reads the extensions at the top level of the body, by our names.
- `llama_cpp`: llama.cpp's server (and llama-cpp-python's). It reads `top_k` and `min_p` at the top
  level and calls the repetition penalty `repeat_penalty`.

Without `api_dialect` an entry with no `base_url` speaks `openai` (it can only be the OpenAI API)
and an entry with a `base_url` speaks `vllm`: every self-hosted server this workflow documents or
starts is a vLLM server, it takes both the standard keys and the extensions the paper's sampling
needs (the judge's top-k 20), and it is what the openai backend sent before dialects existed.

`adapt_body` is pure and unit-tested; `check_sampling` is what the config check runs on an entry's own
`sampling:` at parse time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

DIALECTS = ("openai", "vllm", "llama_cpp")

# The sampling keys our configs use (the vocabulary of `sampling:` dicts, shared with the vLLM and
# transformers backends).
STANDARD_SAMPLING = frozenset({"temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty", "seed",
                               "stop", "n"})
EXTENSION_SAMPLING = frozenset({"top_k", "min_p", "repetition_penalty"})
SAMPLING_KEYS = STANDARD_SAMPLING | EXTENSION_SAMPLING

# Extensions per dialect: our key -> the body key that server reads (at the top level of the body).
EXTENSIONS: dict[str, dict[str, str]] = {
    "openai": {},
    "vllm": {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty"},
    "llama_cpp": {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repeat_penalty"},
}

# OpenAI's reasoning family: gpt-5 and its point releases, the o1 / o3 / o4 series (an organisation
# prefix such as 'openai/' is ignored).
_REASONING = re.compile(r"^(?:[\w.-]+/)?(?:gpt-5|o1|o3|o4)(?:$|[-.])")
# What a reasoning-family model refuses, beyond max_tokens (renamed to max_completion_tokens).
REASONING_DEFAULT_ONLY = ("temperature", "top_p")  # accepted only at their default, 1
REASONING_UNSUPPORTED = ("presence_penalty", "frequency_penalty", "stop")


class DialectError(ValueError):
    """A sampling key or option an endpoint's dialect cannot take; the message names entry and key."""


def is_reasoning_model(model: str) -> bool:
    """True for OpenAI's reasoning-family model ids (gpt-5*, o1*, o3*, o4*)."""
    return bool(_REASONING.match(model or ""))


def resolve_dialect(api_dialect: str | None, base_url: str | None) -> str:
    """The entry's dialect: its `api_dialect`, else 'openai' without a base_url and 'vllm' with one."""
    if api_dialect is not None:
        if api_dialect not in DIALECTS:
            raise DialectError(f"api_dialect must be one of {list(DIALECTS)}, got {api_dialect!r}")
        return api_dialect
    return "vllm" if base_url else "openai"


def adapt_body(body: Mapping[str, Any], sampling: Mapping[str, Any], dialect: str, model: str,
               reasoning_effort: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The request body for `dialect`: `body` (model, messages, response_format, seed) plus the sampling
    keys, named and placed as that server reads them. Returns (body, notes): one note per sampling key
    not sent, saying why. An unknown sampling key is a DialectError (it would be a 400 or be ignored)."""
    unknown = sorted(set(sampling) - SAMPLING_KEYS)
    if unknown:
        raise DialectError(f"unknown sampling key(s) {unknown}; known: {sorted(SAMPLING_KEYS)}")
    out = dict(body)
    notes: list[str] = []
    reasoning = dialect == "openai" and is_reasoning_model(model)
    for key, value in sampling.items():
        if value is None:
            continue
        if key in EXTENSION_SAMPLING:
            target = EXTENSIONS[dialect].get(key)
            if target is None:
                notes.append(f"{key}: the '{dialect}' dialect takes no {key}")
            else:
                out[target] = value
            continue
        if reasoning:
            if key == "max_tokens":
                out.setdefault("max_completion_tokens", value)
                continue
            if key in REASONING_DEFAULT_ONLY and float(value) != 1.0:
                notes.append(f"{key}: reasoning model '{model}' accepts only the default {key} (1), not {value}")
                continue
            if key in REASONING_UNSUPPORTED:
                notes.append(f"{key}: reasoning model '{model}' does not take {key}")
                continue
        out[key] = value
    if reasoning_effort is not None:
        out["reasoning_effort"] = reasoning_effort
    return out, notes


def check_sampling(sampling: Mapping[str, Any], dialect: str, model: str, where: str) -> None:
    """An entry's own `sampling:` against its dialect, at parse time: a key the dialect would not send
    is a mistake in that entry (a stage-wide setting such as diagnostics' top-k is instead left out at
    request time, with a note in the job's log)."""
    unknown = sorted(set(sampling) - SAMPLING_KEYS)
    if unknown:
        raise DialectError(f"{where}.sampling: unknown key(s) {unknown}; known: {sorted(SAMPLING_KEYS)}")
    _, notes = adapt_body({}, sampling, dialect, model)
    if notes:
        hint = ("set api_dialect to the server's ('vllm' or 'llama_cpp') if it is not the OpenAI API"
                if dialect == "openai" else "remove it")
        raise DialectError(f"{where}.sampling: " + "; ".join(notes) + f" ({hint})")


def check_reasoning_effort(effort: str | None, dialect: str, model: str, where: str) -> None:
    """`options.reasoning_effort` only where the server takes it: an OpenAI reasoning model, or vLLM."""
    if effort is None:
        return
    if dialect == "llama_cpp" or (dialect == "openai" and not is_reasoning_model(model)):
        raise DialectError(f"{where}.options.reasoning_effort: model '{model}' on the '{dialect}' dialect takes no "
                           "reasoning_effort (OpenAI: gpt-5*, o1*, o3*, o4* only); remove it")
