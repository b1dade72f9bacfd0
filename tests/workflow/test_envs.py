"""The conda envs of envs/: their pip pins agree with pyproject.toml (except where vLLM forbids it, as
written in the env), the package goes in without dependencies, and every env resolves.

Conda cannot solve here, so the resolver test checks what decides whether an env installs: pip
resolves each env's pins against the package index (`pip install --dry-run --report`, no install).
It needs the network (CI has it; locally, without it, the test is skipped) and runs the four
resolutions at once, about two minutes.
"""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# vLLM wheels pin their own torch/CUDA build, and DeepSpeed only matters for multi-GPU training.
NOT_IN_PYPROJECT = {"vllm", "deepspeed"}
# Pins that deliberately differ from pyproject.toml, because the env's vLLM requires it: vLLM 0.33.0
# pins torch 2.14.0 / torchvision 0.29.0 and needs transformers < 5.21; vLLM 0.31.0 (the newest TRL
# 1.16 accepts) pins torch 2.13.0 / torchvision 0.28.0 and needs transformers < 5.18; both depend on
# mistral-common, which needs numpy < 2.4 on Python 3.11.
OVERRIDES = {
    "vllm": {"torch": "2.14.0", "torchvision": "0.29.0", "transformers": "5.20.2", "numpy": "2.3.5"},
    "rollout": {"torch": "2.13.0", "torchvision": "0.28.0", "transformers": "5.17.0", "numpy": "2.3.5"},
}


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


def env_pins(env_file: Path) -> list[str]:
    env = yaml.safe_load(env_file.read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [requirement.split("#")[0].strip() for requirement in pip_section]


ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


def test_there_is_an_env_per_rule_family():
    assert {p.stem for p in ENV_FILES} >= {"data", "train", "vllm", "rollout"}


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_match_pyproject(env_file):
    pins = pyproject_pins()
    env = yaml.safe_load(env_file.read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"
    overrides = OVERRIDES.get(env_file.stem, {})
    checked = 0
    for requirement in env_pins(env_file):
        name = _name(requirement)
        version = requirement.partition("==")[2]
        assert version, f"{env_file.name}: '{requirement}' is not pinned with =="
        if name in NOT_IN_PYPROJECT:
            continue
        assert name in pins, f"{env_file.name}: {name} is not a pinned dependency in pyproject.toml"
        expected = overrides.get(name, pins[name])
        assert version == expected, f"{env_file.name}: {name}=={version} but expected {expected}"
        checked += 1
    assert checked >= 5
    assert set(overrides) <= {_name(r) for r in env_pins(env_file)}, "an override names a package the env lacks"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_the_package_goes_in_without_its_dependencies(env_file):
    # pyproject.toml pins torch and transformers that vLLM's envs cannot have, so the package is
    # installed by the env's post-deploy script (Snakemake runs it in the new env) with --no-deps.
    assert not any(r.startswith("-e") for r in env_pins(env_file))
    script = env_file.with_name(env_file.stem + ".post-deploy.sh")
    assert script.is_file() and os.access(script, os.X_OK), f"{script.name} is missing or not executable"
    assert "pip install --no-deps --editable ." in script.read_text()


def test_every_rule_declares_its_env_and_every_backend_has_one():
    # Each rule's `conda:` is `conda_of("<its own name>")`, which picks the env of the heaviest backend
    # the job runs (covip.config.prepare.Prepared.conda_env); every backend names an env that exists.
    from covip.clients.backends import BACKENDS, ENV_ORDER
    from covip.clients.spec import SERVER_COMMANDS

    for smk in (ROOT / "rules").glob("*.smk"):
        text = smk.read_text()
        for name, body in re.findall(r"^\s*rule (\w+):\n(.*?)(?=^\s*rule |\Z)", text, flags=re.S | re.M):
            if name == "all":
                continue
            assert "conda:" in body, f"{smk.name}: rule {name} declares no conda env"
    envs = {p.stem for p in ENV_FILES}
    assert set(ENV_ORDER) <= envs
    assert {backend.env for backend in BACKENDS.values()} <= envs
    assert {command.env for command in SERVER_COMMANDS.values()} <= envs


# -- resolution against the package index -------------------------------------------------------------
@pytest.fixture(scope="module")
def resolutions(tmp_path_factory):
    """env name -> (exit status, pip's report or None, output tail), all four resolved at once with a
    recent pip (lazy wheels: pip reads each wheel's metadata by HTTP range requests)."""
    work = tmp_path_factory.mktemp("resolve")
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_CONSTRAINT", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")  # this machine's pip config aside
    subprocess.run([sys.executable, "-m", "venv", str(work / "pip")], check=True, timeout=120)
    pip = [str(work / "pip" / "bin" / "python"), "-m", "pip"]
    upgrade = subprocess.run([*pip, "install", "-q", "pip>=25"], env=env, capture_output=True, text=True, timeout=180)
    if upgrade.returncode != 0:
        reason = f"cannot reach the package index: {upgrade.stderr.strip()[-500:]}"
        pytest.fail(reason) if IN_CI else pytest.skip(reason)
    running = {}
    for env_file in ENV_FILES:
        requirements = work / f"{env_file.stem}.txt"
        requirements.write_text("\n".join(env_pins(env_file)) + "\n")
        command = [*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--use-feature=fast-deps",
                   "--report", str(work / f"{env_file.stem}.json"), "-r", str(requirements)]
        running[env_file.stem] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                  text=True)
    results = {}
    for name, process in running.items():
        output, _ = process.communicate(timeout=600)
        report = work / f"{name}.json"
        results[name] = (process.returncode, json.loads(report.read_text()) if report.exists() else None, output[-3000:])
    return results


@pytest.mark.network
@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_resolves_against_the_package_index(resolutions, env_file):
    from packaging.version import Version

    status, report, output = resolutions[env_file.stem]
    assert status == 0 and report is not None, f"{env_file.name} does not resolve:\n{output}"
    resolved = {_name(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
    for requirement in env_pins(env_file):
        name, version = _name(requirement), requirement.partition("==")[2]
        assert Version(resolved[name]).base_version == Version(version).base_version, (name, resolved[name])
    if "vllm" in resolved:  # vLLM got the torch it pins, not another one
        requires = next(item["metadata"]["requires_dist"] for item in report["install"] if _name(item["metadata"]["name"]) == "vllm")
        torch_pin = next(r for r in requires if r.replace(" ", "").startswith("torch=="))
        assert Version(resolved["torch"]).base_version == torch_pin.split("==")[1].split(";")[0].strip()
    if "trl" in resolved and "vllm" in resolved:  # TRL's vLLM range is honoured
        assert Version(resolved["vllm"]) <= Version("0.31.0")
    if env_file.stem in ("data", "train"):
        assert "vllm" not in resolved
