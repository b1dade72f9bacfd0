"""Parse-time checks of the models registry against what the config asks of it (DESIGN §8).

`prepare` runs these while Snakemake parses the workflow, so `snakemake -n` fails, naming the entry
and the key, where a job would otherwise die at its start or fail every request:

- every entry's options are ones its backend declares (`ModelSpec.check`, run when the entry is read);
- every role the config names is an entry of the registry and its backend serves what the role asks
  (chat, image, embed);
- an in-process vLLM entry can take the largest request the config builds for it: its `max_images`
  (vLLM's `limit_mm_per_prompt`) is at least the most context images plus the query, computed from the
  stage settings (synthesis.positives_weights, the negatives settings, diagnostics.dialogues_per_item).
  Left unset, it is set to exactly that. A served vLLM entry (`serve: {command: vllm}`) whose args set
  `--limit-mm-per-prompt` is held to the same bound (left out, vLLM's own default applies).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from covip.clients.backends import UnknownBackendError, backend_target
from covip.clients.spec import ModelSpec
from covip.core.settings import settings_from


# Fixed roles of stages 2-6 and the capability each asks of its model (for backend fingerprints).
STAGE_ROLES = {
    "synthesize_queries": [("image", "image_generator")],
    "filter_queries": [("chat", "verifier")],
    "embed_concepts": [("embed", "embedder")],
    "write_dialogues": [("chat", "dialogue_writer")],
    "write_mcqas": [("chat", "mcqa_writer")],
}


class RegistryCheckError(ValueError):
    """A registry entry that cannot do what the config asks of it; the message names entry and key."""


def _settings(config: Mapping, section: str):
    from covip.config.schema import settings_class

    return settings_from(settings_class(section), config.get(section), f"config '{section}'")


def role_uses(config: Mapping) -> dict[str, set[tuple[str, str]]]:
    """registry entry -> {(capability, where the config names it)} for every role the config uses."""
    uses: dict[str, set[tuple[str, str]]] = {}

    def add(role: str | None, capability: str, where: str) -> None:
        if role:
            uses.setdefault(role, set()).add((capability, where))

    for rule, roles in STAGE_ROLES.items():
        for capability, role in roles:
            add(role, capability, f"rule {rule}")
    evaluation = config["evaluation"]
    for role in evaluation["policies"]:
        add(role, "chat", "evaluation.policies")
    for role in evaluation["judges"]:
        add(role, "chat", "evaluation.judges")
    add(evaluation["diagnostic_judge"], "chat", "evaluation.diagnostic_judge")
    add((config.get("training") or {}).get("judge"), "chat", "training.judge")
    human = config.get("human_eval") or {}
    for role in human.get("policies") or []:
        add(role, "chat", "human_eval.policies")
    for role in human.get("judges") or []:
        add(role, "chat", "human_eval.judges")
    return uses


def check_roles(config: Mapping, models: Mapping[str, ModelSpec]) -> None:
    """Every role the config names is an entry, and its backend serves the capability the role needs."""
    for role, uses in sorted(role_uses(config).items()):
        for capability, where in sorted(uses):
            if role not in models:
                raise RegistryCheckError(f"{where}: '{role}' is not an entry of the models registry (have: {sorted(models)})")
            try:
                backend_target(capability, models[role].backend, f"models.{role} (used by {where})")
            except UnknownBackendError as error:
                raise RegistryCheckError(str(error)) from None


def images_per_request(config: Mapping) -> dict[str, tuple[int, str]]:
    """registry entry -> (the most images one request of this config sends it, how that comes about)."""
    synthesis, negatives = _settings(config, "synthesis"), _settings(config, "negatives")
    most: dict[str, tuple[int, str]] = {}

    def need(role: str, count: int, why: str) -> None:
        if role and count > most.get(role, (0, ""))[0]:
            most[role] = (count, why)

    weights = synthesis.positives_weights
    caption = max((k + 1 + negatives.most_negatives(k + 1) + 1, k + 1) for k, w in enumerate(weights) if w > 0)
    positives = caption[1]
    caption_why = (f"{positives} positives + {caption[0] - positives - 1} negatives + the query "
                   "(synthesis.positives_weights, negatives.per_positive or negatives.max_negatives)")
    need("verifier", synthesis.most_positives + 1, f"{synthesis.most_positives} positives + the query (filtering)")
    need("dialogue_writer", 1, "one concept image per dialogue")
    evaluation = config["evaluation"]
    diagnostics = _settings(config, "diagnostics")
    generated = [task for task in evaluation["diagnostic_tasks"] if not (config.get("diagnostic_sources") or {}).get(task)]
    for policy in evaluation["policies"]:
        need(policy, caption[0], caption_why)
        if generated:
            need(policy, diagnostics.dialogues_per_item + 1,
                 f"{diagnostics.dialogues_per_item} dialogues + the query (diagnostics.dialogues_per_item)")
    return most


def settle_image_limits(config: dict, models: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
    """Check (or, unset, set) `options.max_images` of every in-process vLLM entry against the largest
    request of this config; returns the registry with the settled entries. The value is written into
    the config's entry, so the jobs (which build their registry from the config) and the entry's part
    of every rule's params see the same number."""
    needed = images_per_request(config)
    settled = dict(models)
    for name, spec in models.items():
        if spec.serve is not None and spec.serve.command == "vllm":
            _check_served_image_limit(name, spec, needed)
        if spec.backend != "vllm":
            continue
        # An entry no request sends images to (a judge) still needs a limit of at least 1 for vLLM.
        count, why = needed.get(name, (1, "no request of this config sends it images"))
        count = max(count, 1)
        given = spec.resolved_options()["max_images"]
        if given is None:
            entry: dict[str, Any] = config["models"][name]
            entry["options"] = {**(entry.get("options") or {}), "max_images": count}
            settled[name] = ModelSpec.from_config(name, entry)
        elif int(given) < count:
            raise RegistryCheckError(
                f"models.{name}.options.max_images is {given}, but a request of this config sends it {count} images "
                f"({why}); set it to at least {count}, or leave it out and the workflow sets it")
    return settled


def _check_served_image_limit(name: str, spec: ModelSpec, needed: Mapping[str, tuple[int, str]]) -> None:
    """`vllm serve ... --limit-mm-per-prompt '{"image": N}'` of a served entry against its largest request."""
    args = [str(arg) for arg in spec.serve.args]
    for k, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--limit-mm-per-prompt=") else (
            args[k + 1] if arg == "--limit-mm-per-prompt" and k + 1 < len(args) else None)
        if value is None:
            continue
        try:
            limit = int(json.loads(value).get("image", 0))
        except (ValueError, AttributeError, TypeError):
            raise RegistryCheckError(f"models.{name}.serve.args: --limit-mm-per-prompt {value!r} is not a JSON "
                                     "mapping such as '{\"image\": 8}'") from None
        count, why = needed.get(name, (0, ""))
        if limit < count:
            raise RegistryCheckError(f"models.{name}.serve.args: --limit-mm-per-prompt allows {limit} image(s), but a "
                                     f"request of this config sends it {count} ({why}); raise the limit")
