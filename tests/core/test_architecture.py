"""The package's layers, checked on its import graph (read from the source, nothing imported).

One direction only: core <- content, clients <- local, protocol <- stages, training <- config,
clients <- serving <- workflow <- cli (planning, like the CLI, sits on top of config and protocol). No stage
imports another stage; stages and training import no stand-in; training
imports no stage; nothing imports the command line; and there is no import cycle.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from covip.core.fingerprint import _imports_of

SRC = Path(__file__).resolve().parents[2] / "src" / "covip"

# What each layer may import besides itself ('*' for any covip module). A stage package is one stage.
ALLOWED = {
    "core": {"core"},
    "prompts": {"prompts"},
    "content": {"content", "core"},
    "clients": {"clients", "core"},
    "local": {"local", "clients", "core", "content"},
    # The lmms-eval adapter: benchmark catalog, model routing, task definitions, runner, downloads. Like
    # clients for models, the one place that knows an external harness; stages and config use it.
    "harness": {"harness", "clients", "core"},
    "protocol": {"protocol", "clients", "core", "prompts", "content"},
    "stages": {"clients", "core", "prompts", "content", "protocol", "harness"},
    "training": {"training", "clients", "core", "prompts", "content", "protocol"},
    # The model servers a job starts: built from registry entries (clients), nothing above.
    "serving": {"serving", "clients", "core"},
    "workflow": {"workflow", "serving", "clients", "core", "prompts"},
    "config": {"config", "clients", "core", "prompts", "content", "workflow", "training", "harness"},
    "human_eval": {"human_eval", "core"},
    # `covip plan`: reads the checked config and renders the stages' prompts; nothing imports it but the CLI
    "planning": {"planning", "config", "protocol", "clients", "core", "prompts", "content"},
    "cli": {"*"},
    "__main__": {"cli"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("covip", *parts))] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The covip modules `name` imports (names imported from a module count as that module)."""
    found = set()
    for target in _imports_of(name, path):
        while target not in MODULES and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in MODULES and target != name:
            found.add(target)
    return found


MODULES = modules()


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "covip"


def stage_of(name: str) -> str:
    return name.split(".")[2] if name.startswith("covip.stages.") and len(name.split(".")) > 2 else ""


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for name, targets in sorted(graph.items()):
        own = layer(name)
        for target in sorted(targets):
            other = layer(target)
            if other == "covip":
                continue  # the package initialiser
            allowed = ALLOWED.get(own, set())
            if "*" not in allowed and other not in allowed and not (own == "stages" and other == "stages"):
                problems.append(f"{name} imports {target} ({own} may import {sorted(allowed)})")
            if own == "stages" and other == "stages" and stage_of(name) != stage_of(target):
                problems.append(f"{name} imports another stage: {target}")
            if target == "covip.cli" and own not in ("cli", "__main__"):
                problems.append(f"{name} imports the command line")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle (as a path), by depth-first search."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return {name: imports(name, path) for name, path in MODULES.items()}


def test_every_import_follows_the_layers(graph):
    assert layer_violations(graph) == []


def test_there_is_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_checks_catch_what_they_claim():
    planted = {
        "covip.stages.capeval": {"covip.stages.mcqa"},
        "covip.training.rewards": {"covip.local.lexical_judge"},
        "covip.core.io": {"covip.clients.base"},
        "covip.workflow.run": {"covip.cli"},
    }
    problems = "\n".join(layer_violations(planted))
    assert "imports another stage: covip.stages.mcqa" in problems
    assert "covip.training.rewards imports covip.local.lexical_judge" in problems
    assert "covip.core.io imports covip.clients.base" in problems
    assert "covip.workflow.run imports the command line" in problems
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_a_stage_package_is_one_stage():
    assert stage_of("covip.stages.diagnostics.scoring") == stage_of("covip.stages.diagnostics.settings") == "diagnostics"
    assert stage_of("covip.stages.capeval") == "capeval"


def test_no_module_is_over_500_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}
