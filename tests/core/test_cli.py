"""`covip <subcommand>` (covip.cli): each subcommand end to end through `main([...])`, with its exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from covip.cli import main
from covip.core import schemas
from covip.core.io import read_rows, write_artifact
from covip.prompts import PromptBook, available_prompts
from support.released import ACC_NEG, CAPTIONS, N_QUESTIONS, QAS_GT

# ---------------------------------------------------------------------------------------------------
# prompts, schema, check, config-schema


def test_prompts_lists_the_templates_and_prints_one(capsys):
    assert main(["prompts"]) == 0
    assert capsys.readouterr().out.split() == available_prompts()
    assert main(["prompts", "lar_judge"]) == 0
    assert capsys.readouterr().out == PromptBook().source("lar_judge")  # to copy and override, as it is
    assert main(["prompts", "lar_judgee"]) == 2
    err = capsys.readouterr().err
    assert "no prompt named 'lar_judgee'" in err and "lar_judge" in err


def test_schema_prints_one_artifact_or_all(capsys):
    assert main(["schema", "split"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# split:") and "  positive_indices: list<" in out and "(required)" in out
    assert main(["schema"]) == 0
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# ")]
    assert [h[2:].split(":")[0] for h in headers] == sorted(schemas.ALL)
    assert main(["schema", "splits"]) == 2
    assert "no artifact named 'splits'" in capsys.readouterr().err


def test_check_validates_a_file_against_an_artifact_schema(tmp_path, capsys):
    path = tmp_path / "d.parquet"
    write_artifact([{"sample_id": "s0001", "kept": True, "reason": "", "detail": "", "verifier": "v"}], path,
                   schemas.FILTER_DECISIONS)
    assert main(["check", "filter_decisions", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: 1 rows, valid 'filter_decisions' artifact"
    assert main(["check", "concepts", str(path)]) == 1  # the wrong schema: the reason goes to stderr
    assert str(path) in capsys.readouterr().err
    assert main(["check", "nonsense", str(path)]) == 2
    assert "no artifact named 'nonsense'" in capsys.readouterr().err


def test_config_schema_check_and_rewrite(tmp_path, monkeypatch, capsys):
    from covip.config import schema as config_schema

    assert main(["config-schema", "--check"]) == 0  # the committed schema is in step with the settings
    assert "is up to date" in capsys.readouterr().out
    stale = tmp_path / "config.schema.yaml"
    text = config_schema.SCHEMA_PATH.read_text()
    assert "  concept_pool:\n    type: object\n" in text
    stale.write_text(text.replace("  concept_pool:\n    type: object\n", "  concept_pool:\n    type: string\n", 1))
    monkeypatch.setattr(config_schema, "SCHEMA_PATH", stale)
    assert main(["config-schema", "--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert main(["config-schema"]) == 0  # rewrites the generated sections
    assert main(["config-schema", "--check"]) == 0
    assert stale.read_text() == text


# ---------------------------------------------------------------------------------------------------
# score-released


def score(tmp_path, captions_path, *extra):
    return main(["score-released", "--qas-gt", str(QAS_GT), "--captions", str(captions_path),
                 "--out-dir", str(tmp_path / "out"), *extra])


@pytest.fixture()
def captions_file(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(CAPTIONS))
    return path


def test_score_released_end_to_end_with_the_lexical_judge(tmp_path, captions_file, capsys):
    assert score(tmp_path, captions_file, "--n-bootstrap", "50", "--policy", "mine") == 0
    answers = read_rows(tmp_path / "out" / "capeval_answers.parquet", schemas.CAPEVAL_ANSWERS)
    summary = read_rows(tmp_path / "out" / "capeval_summary.parquet", schemas.CAPEVAL_SUMMARY)
    assert len(answers) == 27 == N_QUESTIONS and summary[-1]["acc_neg"] == pytest.approx(100.0 * 16 / 18)
    assert summary[-1]["acc_neg"] == pytest.approx(ACC_NEG)
    assert {r["policy"] for r in answers} == {"mine"} and {r["judge"] for r in answers} == {"judge"}
    assert all(r["stand_in"] for r in answers)  # the lexical judge is a stand-in
    out = capsys.readouterr().out
    assert "mine" in out and "(stand-in)" in out
    # A judge config names the entry to use.
    config = tmp_path / "judge.yaml"
    config.write_text("models:\n  strict:\n    backend: local_lexical_judge\n    options: {support_threshold: 1.0}\n")
    assert score(tmp_path, captions_file, "--judge-config", str(config), "--judge", "strict", "--n-bootstrap", "0") == 0
    assert {r["judge"] for r in read_rows(tmp_path / "out" / "capeval_answers.parquet", schemas.CAPEVAL_ANSWERS)} == {"strict"}


def test_score_released_allow_missing_scores_what_is_there(tmp_path, capsys):
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps({"sample_id": "sample_0", "caption": CAPTIONS["sample_0"]}) + "\n")
    assert score(tmp_path, partial, "--n-bootstrap", "0") == 2  # two samples have no caption
    assert "has no caption for 2 of 3" in capsys.readouterr().err
    assert score(tmp_path, partial, "--n-bootstrap", "0", "--allow-missing") == 0
    assert len(read_rows(tmp_path / "out" / "capeval_answers.parquet", schemas.CAPEVAL_ANSWERS)) == 9


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("broken.json", "{not json", "not valid JSON"),  # a captions file that cannot be read
        ("captions.txt", "x", "unknown captions format"),
        ("keys.json", json.dumps({"0": "a caption"}), "not in the ground truth"),  # keys of another dataset
        ("missing.json", None, "captions file does not exist"),
    ],
)
def test_score_released_bad_captions_exit_2_with_the_reason(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    assert score(tmp_path, path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_score_released_bad_judge_or_ground_truth_exit_2(tmp_path, captions_file, capsys):
    config = tmp_path / "judge.yaml"
    config.write_text("models:\n  strict:\n    backend: local_lexical_judge\n")
    assert score(tmp_path, captions_file, "--judge-config", str(config), "--judge", "nope") == 2
    assert "no entry 'nope'" in capsys.readouterr().err
    bad_gt = tmp_path / "gt.json"
    bad_gt.write_text(json.dumps({"sample_0": {"gts": "not a list"}}))
    assert main(["score-released", "--qas-gt", str(bad_gt), "--captions", str(captions_file),
                 "--out-dir", str(tmp_path / "out")]) == 2
    assert "error: " in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# build-tiny-vlm, and the module entry point


def test_build_tiny_vlm_writes_the_model_folder_with_the_given_settings(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["build-tiny-vlm", str(out), "--architecture", "qwen3_vl", "--seed", "3", "--layers", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    meta = json.loads((out / "tiny_vlm.json").read_text())
    assert meta["seed"] == 3
    assert (meta["settings"]["architecture"], meta["settings"]["num_hidden_layers"], meta["settings"]["hidden_size"]) == (
        "qwen3_vl", 1, 64)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["text_config"]["num_hidden_layers"] == 1
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_unknown_subcommand_and_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as error:
        main(["make-coffee"])
    assert error.value.code == 2
    with pytest.raises(SystemExit) as error:
        main(["build-tiny-vlm", "x", "--architecture", "llava"])
    assert error.value.code == 2
    assert "invalid choice: 'llava'" in capsys.readouterr().err


def test_python_dash_m_covip_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "covip", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("prompts", "schema", "check", "config-schema", "score-released", "train", "gpu-run", "gpu-status",
                    "build-tiny-vlm"):
        assert command in result.stdout
    assert result.stdout.startswith("usage: covip")
