"""Conda cannot solve here, so check instead that envs/*.yaml agree with pyproject.toml's pins."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# vLLM wheels pin their own torch/CUDA build, so the vLLM env deliberately leaves torch to vLLM.
# DeepSpeed compiles CUDA ops and only matters for multi-GPU training, so only the training env has it.
NOT_IN_PYPROJECT = {"vllm", "deepspeed"}


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition("==")
        assert version, f"pyproject dependency '{requirement}' is not pinned with =="
        pins[_name(name)] = version
    return pins


ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


def test_there_is_an_env_per_rule_family():
    assert {p.stem for p in ENV_FILES} >= {"data", "train", "vllm"}


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_match_pyproject(env_file):
    pins = pyproject_pins()
    env = yaml.safe_load(env_file.read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"
    checked = 0
    for requirement in pip_section:
        if requirement.startswith("-e "):
            continue
        name = _name(requirement)
        if name in NOT_IN_PYPROJECT:
            continue
        assert name in pins, f"{env_file.name}: {name} is not a pinned dependency in pyproject.toml"
        version = requirement.partition("==")[2]
        assert version == pins[name], f"{env_file.name}: {name}=={version} but pyproject pins {pins[name]}"
        checked += 1
    assert checked >= 5
    # The package itself is installed into every env, so rules import the same code.
    assert any(r.startswith("-e ") for r in pip_section)


def test_every_rule_declares_its_env_and_every_backend_has_one():
    # Each rule's `conda:` is `conda_of("<its own name>")`, which picks the env of the heaviest backend
    # the job runs (covip.config.prepare.Prepared.conda_env); every backend names an env that exists.
    from covip.clients.backends import BACKENDS, ENV_ORDER

    for smk in (ROOT / "rules").glob("*.smk"):
        text = smk.read_text()
        for name, body in re.findall(r"^\s*rule (\w+):\n(.*?)(?=^\s*rule |\Z)", text, flags=re.S | re.M):
            if name == "all":
                continue
            assert "conda:" in body, f"{smk.name}: rule {name} declares no conda env"
    envs = {p.stem for p in ENV_FILES}
    assert set(ENV_ORDER) <= envs
    assert {backend.env for backend in BACKENDS.values()} <= envs
