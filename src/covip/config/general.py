"""The general multi-image benchmarks as the rules see them: parse-time checks (known benchmark names,
policies lmms-eval can drive) and the per-rule helpers of rules/general.smk.

Mixed into `covip.config.prepare.Prepared`; every method is a pure function of the config.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from covip.clients.spec import ModelSpec
from covip.harness.catalog import Benchmark, benchmark, benchmark_names
from covip.harness.models import check_drivable, model_type_of

HUB_MANIFESTS = "resources/benchmarks"  # download_benchmark_data writes <name>.json here


class ConfigError(ValueError):
    """A config that cannot run; the message names the section, entry and key, and the choices."""


class GeneralLayout:
    config: dict
    models: dict[str, ModelSpec]
    trained_models: dict[str, str]

    def out(self, path: str) -> str:  # pragma: no cover - provided by Prepared
        raise NotImplementedError

    # -- what is configured -----------------------------------------------------------------------
    @property
    def general_benchmarks(self) -> list[str]:
        return list(self.config["evaluation"].get("general_benchmarks") or [])

    @property
    def general_policies(self) -> list[str]:
        return list(self.config["evaluation"].get("general_policies") or [])

    @property
    def general_enabled(self) -> bool:
        return bool(self.general_benchmarks and self.general_policies)

    # -- models ----------------------------------------------------------------------------------------
    def general_model_type(self, policy: str) -> str | None:
        """The checkpoint type of a transformers policy as far as known now: config override, the
        checkpoint's config.json, the tiny VLM's architecture, a trained run's base model, the hub id."""
        override = (self.config.get("general_benchmarks") or {}).get("model_types", {}).get(policy)
        return override or self._model_type(self.models[policy].model)

    def _model_type(self, model: str, depth: int = 0) -> str | None:
        if model == self.config["tiny_vlm"]["path"]:
            return self.config["tiny_vlm"].get("architecture", "qwen2_5_vl")
        run = self.trained_models.get(os.path.normpath(model))
        if run is not None and depth < 3:
            base = self.config["training"]["runs"][run].get("base_model") or self.config["training"].get("base_model", "")
            return self._model_type(base, depth + 1)
        return model_type_of(model)

    def general_base_of(self) -> dict[str, str]:
        """trained policy -> base policy: config `base_of`, else the policy whose model is the run's base."""
        policies = self.general_policies
        pairs = dict((self.config.get("general_benchmarks") or {}).get("base_of") or {})
        for policy in policies:
            run = self.trained_models.get(os.path.normpath(self.models[policy].model))
            if policy in pairs or run is None:
                continue
            base = self.config["training"]["runs"][run].get("base_model") or self.config["training"].get("base_model")
            match = [p for p in policies if p != policy and self.models[p].model == base]
            if match:
                pairs[policy] = match[0]
        return pairs

    # -- per-rule helpers --------------------------------------------------------------------------------
    def general_data_manifest(self, name: str) -> str:
        """The manifest a general_benchmark job reads its data folder from (built here or downloaded)."""
        entry = benchmark(name)
        if entry.from_hub:
            return f"{HUB_MANIFESTS}/{entry.data_name}.json"
        return self.out(f"general/data/{entry.data_name}.json")

    def general_task_params(self, name: str) -> dict:
        """The catalog entry and a hash of its task files (ours) or the harness version (lmms-eval's own):
        params, so an edit to the task definition reruns its jobs."""
        entry = benchmark(name)
        return {"entry": {k: v for k, v in entry.__dict__.items()}, "task_files": _task_hash(entry)}

    def general_outputs(self, kind: str) -> list[str]:
        """Every job's scores ('scores') or per-sample table ('samples')."""
        suffix = ".parquet" if kind == "scores" else ".samples.parquet"
        return [self.out(f"general/{p}/{b}{suffix}") for p in self.general_policies for b in self.general_benchmarks]


def _task_hash(entry: Benchmark) -> str:
    if entry.source != "covip":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"lmms-eval {version('lmms_eval')}"
        except PackageNotFoundError:
            return "lmms-eval (not installed)"
    digest = hashlib.sha256()
    folder = entry.task_folder()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def check_general(config: Mapping, models: Mapping[str, ModelSpec], layout: GeneralLayout) -> None:
    """Unknown benchmark names and policies lmms-eval cannot drive fail the dry run, naming the choices."""
    evaluation = config["evaluation"]
    for name in evaluation.get("general_benchmarks") or []:
        if name not in benchmark_names():
            raise ConfigError(f"evaluation.general_benchmarks: unknown benchmark '{name}'; the harness knows "
                              f"{benchmark_names()} (covip/harness/catalog.yaml)")
    for policy in evaluation.get("general_policies") or []:
        if policy not in models:
            raise ConfigError(f"evaluation.general_policies: '{policy}' is not an entry of the models registry "
                              f"(have: {sorted(models)})")
        try:
            check_drivable(models[policy], layout.general_model_type(policy), "evaluation.general_policies")
        except ValueError as error:
            raise ConfigError(str(error)) from None
    for trained, base in ((config.get("general_benchmarks") or {}).get("base_of") or {}).items():
        for role in (trained, base):
            if role not in (evaluation.get("general_policies") or []):
                raise ConfigError(f"general_benchmarks.base_of: '{role}' is not one of evaluation.general_policies")


def hub_manifest_path(root: str | Path, data: str) -> Path:
    return Path(root) / HUB_MANIFESTS / f"{data}.json"


def hub_data_names() -> list[str]:
    """Datasets a download rule fetches (the hub entries of the catalog, by data name)."""
    from covip.harness.catalog import catalog

    return sorted({entry.data_name for entry in catalog().values() if entry.from_hub})


def download_entry(data: str) -> Benchmark:
    """The catalog entry that says how to fetch dataset `data`."""
    from covip.harness.catalog import catalog

    return next(entry for entry in catalog().values() if entry.from_hub and entry.data_name == data)
