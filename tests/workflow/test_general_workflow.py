"""The general_benchmark rule with a policy the workflow serves: its job starts llama.cpp's server on
Gemma 3 270M (text-only, `serve: {command: llama_cpp}`), and lmms-eval's OpenAI-compatible model
answers the tiny benchmark's text variant through it, offline."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml

from support.workflow import copy_workflow, snakemake

pytestmark = pytest.mark.integration


def test_general_benchmark_of_a_served_policy(tmp_path, gemma_gguf):
    workdir = copy_workflow(tmp_path)
    serve = {"command": "llama_cpp", "gpus": 0, "startup_timeout_s": 180, "grace_s": 5,
             "args": ["--n_ctx", "4096", "--n_threads", "2", "--chat_format", "gemma"]}
    overlay = {
        "models": {"gemma": {"backend": "openai", "model": "gemma-3-270m", "weights": f"local://{gemma_gguf}",
                             "serve": serve, "sampling": {"temperature": 0.0, "max_tokens": 8}, "concurrency": 2}},
        "evaluation": {"general_benchmarks": ["tiny_multi_image_text"], "general_policies": ["gemma"]},
    }
    (workdir / "gemma.yaml").write_text(yaml.safe_dump(overlay))
    target = "results/general/gemma/tiny_multi_image_text.parquet"
    snakemake(workdir, "--configfile", "tiny.yaml", "gemma.yaml", "--", target)
    scores = pq.read_table(workdir / target).to_pylist()
    assert len(scores) == 1
    row = scores[0]
    assert (row["harness_model"], row["route"], row["task"], row["n"]) == ("openai", "served", "covip_tiny_multi_image_text", 6)
    assert row["harness"] == "lmms-eval 0.7.3" and row["stand_in"] and 0.0 <= row["value"] <= 100.0
    samples = pq.read_table(workdir / "results/general/gemma/tiny_multi_image_text.samples.parquet").to_pylist()
    assert len(samples) == 6 and all(s["score"] in (0.0, 1.0) for s in samples)
    assert all(s["response"] and "LMMS_EVAL_REQUEST_FAILED" not in s["response"] for s in samples)  # the server answered
    assert abs(100.0 * sum(s["score"] for s in samples) / 6 - row["value"]) < 1e-9
    assert list((workdir / "results" / "logs" / "servers").glob("*.gemma.log"))  # the job started its own server
