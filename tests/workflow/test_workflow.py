"""The Snakemake workflow itself: config validation, an end-to-end tiny run, and code-aware reruns.

One tiny run (module fixture) is shared; a test that runs more jobs or edits files works on its own
copy of it (`run_copy`), so the tests pass in any order."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support.workflow import ROOT, copy_finished_run, copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.integration

# In tests/data/tiny.yaml: 4 policies (one GSPO-trained on the train split) x 1 judge x 5 conditions
# (4 controls of the test split; diagnostics under intact only). What a new test split reruns
# downstream: the training, every policy's captions under every condition and their scores (one
# capeval_one_pass job: the stand-in judge judges all 20 tables in one pass), and the trained
# policy's diagnostics (one job: its model changed), its general benchmark (tiny_multi_image) and the
# multi-image table.
EVALUATION_OF_SPLITS = {"train_gspo": 1, "apply_control": 4, "caption": 20, "capeval_one_pass": 1, "diagnose": 1,
                        "collect_evaluation": 1, "summarize_controls": 1, "judge_agreement": 1, "report": 1,
                        "general_benchmark": 1, "collect_general": 1}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("wf"))
    snakemake(workdir)
    return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A private copy of the finished run (outputs, metadata and all), for a test that changes it."""
    return copy_finished_run(finished_run, tmp_path / "run")


def test_unknown_config_key_fails_naming_it(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "typo.yaml").write_text("synthesis: {num_sampels: 3}\n")
    result = snakemake(workdir, "-n", "--configfile", "tiny.yaml", "typo.yaml", check=False)
    assert result.returncode != 0
    assert "num_sampels" in result.stderr + result.stdout


def test_bad_config_value_fails_naming_it(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n", "--config", "seed=not-a-number", check=False)
    assert result.returncode != 0
    assert "seed" in result.stderr + result.stdout


def test_tiny_run_produces_every_artifact(finished_run):
    results = finished_run / "results"
    for stage in ("concepts/concepts", "queries/queries", "filtering/decisions", "negatives/contexts",
                  "dialogues/dialogues", "mcqa/mcqas", "splits/train", "splits/test", "captions/intact/tiny_vlm",
                  "training/tiny_vlm_gspo/log", "captions/intact/tiny_vlm_gspo",
                  "capeval/intact/tiny_vlm_gspo/lexical_judge/summary",
                  "capeval/intact/oracle/lexical_judge/summary", "diagnostics/sets/lar",
                  "diagnostics/responses/intact/blind/itr.cag", "report/capeval_summary", "report/diagnostic_summary",
                  "controls/swapped_context/test", "captions/blank_query/oracle", "report/control_effects",
                  "report/judge_agreement"):
        assert (results / f"{stage}.parquet").is_file(), stage
    logs = list((results / "logs").rglob("*.log"))
    assert len(logs) >= 20
    for log in logs:
        assert "finished in" in log.read_text(), f"{log.name} was not really written by its stage"
    assert pq.read_metadata(results / "splits/test.parquet").num_rows > 0
    assert (results / "training" / "tiny_vlm_gspo" / "model" / "config.json").is_file()  # the merged policy
    assert (results / "report" / "summary.md").read_text().count("(paper)") >= 18


def test_reference_policies_order_as_the_metric_intends(finished_run):
    summary = pq.read_table(finished_run / "results" / "report" / "capeval_summary.parquet").to_pylist()
    pooled = {row["policy"]: row for row in summary if row["num_positives"] == 0}
    assert pooled["oracle"]["acc_pos"] >= 80 and pooled["oracle"]["acc_neg"] >= 90
    assert pooled["blind"]["acc_pos"] <= 10 and pooled["blind"]["acc_neg"] >= 95
    assert pooled["tiny_vlm"]["stand_in"] and pooled["tiny_vlm"]["policy_identity"].startswith("tiny_vlm:transformers")


def test_controls_move_what_they_claim_and_not_the_oracle(finished_run):
    results = finished_run / "results"
    effects = pq.read_table(results / "report" / "control_effects.parquet").to_pylist()
    conditions = {"intact", "text_only", "corrupted_context", "swapped_context", "blank_query"}
    assert {r["condition"] for r in effects} == conditions
    oracle = [r for r in effects if r["policy"] == "oracle"]
    assert {r["condition"] for r in oracle} == conditions and all(r["drop"] == 0.0 for r in oracle)
    # The oracle's captions are byte-identical under every control: it reads the ground truth.
    intact = pq.read_table(results / "captions" / "intact" / "oracle.parquet").column("caption").to_pylist()
    for condition in conditions:
        assert pq.read_table(results / "captions" / condition / "oracle.parquet").column("caption").to_pylist() == intact
    blind = [r for r in effects if r["policy"] == "blind" and r["metric"] == "acc_pos"]
    assert blind and all(r["value"] <= 10.0 for r in blind)
    # Every control changed images, and only images: the texts of the split are identical.
    test = pq.read_table(results / "splits" / "test.parquet").drop_columns(["query_image", "context_images"])
    for condition in conditions - {"intact"}:
        changed = pq.read_table(results / "controls" / condition / "test.parquet")
        assert changed.drop_columns(["query_image", "context_images"]).equals(test)
        changes = pq.read_table(results / "controls" / condition / "test.changes.parquet").to_pylist()
        assert changes and all(c["sha_before"] != c["sha_after"] for c in changes)
    assert "Does it look?" in (results / "report" / "summary.md").read_text()
    assert (results / "report" / "controls.png").stat().st_size > 0


def test_general_benchmarks_run_in_process_and_reach_the_report(finished_run):
    # The tiny VLM before and after GSPO on the tiny offline benchmark, through lmms-eval's Qwen2.5-VL class.
    results = finished_run / "results"
    summary = {r["policy"]: r for r in pq.read_table(results / "report" / "general_summary.parquet").to_pylist()}
    assert set(summary) == {"tiny_vlm", "tiny_vlm_gspo"}
    trained = summary["tiny_vlm_gspo"]
    assert trained["base_policy"] == "tiny_vlm" and trained["harness_model"] == "qwen2_5_vl"
    assert trained["route"] == "in_process" and trained["stand_in"] and trained["n"] == 6
    assert trained["diff"] == pytest.approx(trained["value"] - summary["tiny_vlm"]["value"])
    samples = pq.read_table(results / "general" / "tiny_vlm" / "tiny_multi_image.samples.parquet").to_pylist()
    assert len(samples) == 6 and all(s["score"] in (0.0, 1.0) for s in samples)
    text = (results / "report" / "summary.md").read_text()
    assert "## General multi-image benchmarks" in text and "| Qwen3-VL-8B (paper) | 86.7 |" in text
    assert "| ours: tiny_vlm_gspo − tiny_vlm †" in text


def test_editing_a_harness_task_reruns_only_its_jobs(run_copy):
    assert edited(run_copy, "harness/tasks/tiny_multi_image/utils.py") == {"general_benchmark": 2, "collect_general": 1,
                                                                           "report": 1, "all": 1}


def test_snakemake_html_report_builds(run_copy):
    snakemake(run_copy, "--report", "report.html")
    html = (run_copy / "report.html").read_text(errors="replace")
    assert "capeval_by_count.png" in html and "summary.md" in html


def test_rerun_after_full_run_does_nothing(finished_run):
    assert planned_jobs(snakemake(finished_run, "-n")) == {}


def test_editing_stage_code_reruns_that_stage_and_downstream_only(run_copy):
    # The edited stage and everything that reads its output (the GSPO run on the new train split, captions
    # of the new test split, their scores, the report), but nothing upstream, and of the diagnostics,
    # which do not use the splits, only the retrained policy's.
    assert edited(run_copy, "stages/mcqa.py") == {"write_mcqas": 1, "make_splits": 1, **EVALUATION_OF_SPLITS, "all": 1}
    assert planned_jobs(snakemake(run_copy, "-n")) == {}


def test_a_copy_of_the_finished_run_is_up_to_date(run_copy):
    # The premise of every test below that edits a copy: the copy itself plans nothing.
    assert planned_jobs(snakemake(run_copy, "-n")) == {}


def edited(workdir: Path, relative: str, *args: str) -> dict[str, int]:
    """Jobs a dry run plans after appending a comment to one file of the package (then restored)."""
    path = workdir / "src" / "covip" / relative
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        return planned_jobs(snakemake(workdir, "-n", *args))
    finally:
        path.write_text(original)


def test_editing_the_command_line_reruns_nothing(run_copy):
    # `covip score-released` and the other subcommands live in cli.py, which no rule's code imports:
    # the training job runs `python -m covip train`, yet its fingerprint is covip.training.job's.
    assert edited(run_copy, "cli.py") == {}


def test_editing_capeval_reruns_scoring_but_not_training(run_copy):
    jobs = edited(run_copy, "stages/capeval/judging.py")
    assert jobs == {"capeval_one_pass": 1, "collect_evaluation": 1, "summarize_controls": 1, "judge_agreement": 1,
                    "report": 1, "all": 1}


def test_editing_one_module_of_a_stage_package_reruns_only_its_rule(run_copy):
    assert edited(run_copy, "stages/diagnostics/summary.py") == {"collect_evaluation": 1, "report": 1, "all": 1}
    assert edited(run_copy, "stages/controls/effects.py") == {"summarize_controls": 1, "report": 1, "all": 1}
    # Answering and scoring are the diagnose jobs' code: one job per policy (every task and mode), intact only.
    assert edited(run_copy, "stages/diagnostics/scoring.py") == {"diagnose": 4, "collect_evaluation": 1,
                                                                 "summarize_controls": 1, "report": 1, "all": 1}


def test_editing_a_content_file_reruns_the_stages_that_read_it(run_copy):
    path = run_copy / "src" / "covip" / "content" / "diagnostic_lines.yaml"
    original = path.read_text()
    try:
        path.write_text(original.replace("Please keep {name} in mind.", "Please remember {name}."))
        jobs = planned_jobs(snakemake(run_copy, "-n"))
    finally:
        path.write_text(original)
    # The diagnostic sets are rebuilt, so every diagnose job and what reads them rerun; the benchmark
    # built from the fact lists (stages 1-7) does not.
    assert jobs["build_diagnostic_set"] == 3 and jobs["diagnose"] == 4
    assert not {"write_dialogues", "make_splits", "caption", "capeval"} & set(jobs)


def test_editing_a_shared_module_reruns_every_stage_that_imports_it(run_copy):
    assert {"build_concept_pool", "write_dialogues", "make_splits"} <= set(edited(run_copy, "core/schemas/types.py"))


def test_changing_a_stage_param_reruns_from_that_stage(run_copy):
    (run_copy / "more_attempts.yaml").write_text("mcqa: {max_attempts: 5}\n")
    jobs = planned_jobs(snakemake(run_copy, "-n", "--configfile", "tiny.yaml", "more_attempts.yaml"))
    assert jobs == {"write_mcqas": 1, "make_splits": 1, **EVALUATION_OF_SPLITS, "all": 1}


def test_changing_the_judge_sampling_reruns_only_scoring(run_copy):
    (run_copy / "judge.yaml").write_text(
        "models: {lexical_judge: {backend: local_lexical_judge, model: lexical-v1, options: {support_threshold: 0.7}}}\n"
    )
    jobs = planned_jobs(snakemake(run_copy, "-n", "--configfile", "tiny.yaml", "judge.yaml"))
    # The LAR diagnostics use the same judge, so every policy's diagnose job reruns (its other answers
    # come back from the response cache); the GSPO run's caption reward
    # uses it as well, so that policy is retrained, recaptioned under every condition and re-evaluated;
    # the other captions are not remade.
    assert jobs == {"train_gspo": 1, "caption": 5, "capeval_one_pass": 1, "diagnose": 4, "collect_evaluation": 1,
                    "summarize_controls": 1, "judge_agreement": 1, "general_benchmark": 1, "collect_general": 1,
                    "report": 1, "all": 1}


def test_changing_a_model_backend_reruns_its_stage(run_copy):
    (run_copy / "other_writer.yaml").write_text(
        "models: {mcqa_writer: {backend: local_facts_writer, model: facts-first-v1, options: {format_variety: false}}}\n"
    )
    jobs = planned_jobs(snakemake(run_copy, "-n", "--configfile", "tiny.yaml", "other_writer.yaml"))
    assert jobs == {"write_mcqas": 1, "make_splits": 1, **EVALUATION_OF_SPLITS, "all": 1}


def test_editing_a_prompt_reruns_the_stage_that_uses_it(run_copy):
    jobs = edited(run_copy, "prompts/dialogue_writer.txt")
    assert jobs == {"write_dialogues": 1, "write_mcqas": 1, "make_splits": 1, **EVALUATION_OF_SPLITS, "all": 1}


def test_trained_policy_is_trained_before_it_captions(tmp_path):
    """The DAG edge of stage 8: build_tiny_vlm and the train split -> train_gspo -> caption of the policy."""
    workdir = copy_workflow(tmp_path)
    dot = snakemake(workdir, "--forceall", "--dag", "--", "results/capeval/intact/tiny_vlm_gspo/lexical_judge/summary.parquet").stdout
    labels = {m[1]: m[2].split("\\n")[0] + ("/" + m[2].split(": ")[-1] if ": " in m[2] else "")
              for m in re.finditer(r'(\d+)\[label = "([^"]+)"', dot)}
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"(\d+) -> (\d+)", dot)}
    assert ("build_tiny_vlm", "train_gspo/tiny_vlm_gspo") in edges
    assert ("make_splits", "train_gspo/tiny_vlm_gspo") in edges
    assert ("train_gspo/tiny_vlm_gspo", "caption/tiny_vlm_gspo") in edges
    assert ("caption/tiny_vlm_gspo", "capeval_one_pass/lexical_judge") in edges


def test_missing_api_key_fails_before_any_job_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    workdir = copy_workflow(tmp_path)
    (workdir / "gemini.yaml").write_text(
        "models: {image_generator: {backend: gemini, model: gemini-2.5-flash-image}}\n"
    )
    result = snakemake(workdir, "--configfile", "tiny.yaml", "gemini.yaml", check=False)
    assert result.returncode != 0
    assert "GEMINI_API_KEY" in result.stdout + result.stderr
    assert not (workdir / "results" / "concepts").exists(), "no stage may run without the key"


def test_score_released_rule_scores_a_captions_file(run_copy):
    fixture = ROOT.parent / "shared" / "fixtures" / "qas_gt_excerpt.json"
    if not fixture.exists():
        pytest.fail("../shared/fixtures/qas_gt_excerpt.json is missing beside the repository")
    captions = run_copy / "my_captions.json"
    captions.write_text('{"sample_0": "Seth gets excited passing cherry blossom trees.", "sample_1": "", "sample_2": ""}')
    (run_copy / "released.yaml").write_text(
        f"released_scoring: {{mine: {{qas_gt: {fixture}, captions: {captions}}}}}\n"
    )
    target = "results/released/mine/lexical_judge/summary.parquet"
    snakemake(run_copy, "--configfile", "tiny.yaml", "released.yaml", "--", target)
    rows = pq.read_table(run_copy / target).to_pylist()
    pooled = next(row for row in rows if row["num_positives"] == 0)
    assert pooled["policy"] == "mine" and pooled["n_pos_questions"] > 0
    answers = pq.read_table(run_copy / "results/released/mine/lexical_judge/answers.parquet").to_pylist()
    seth = next(r for r in answers if r["sample_id"] == "sample_0" and r["context_index"] == 0 and r["question_id"] == "Q1")
    assert seth["parsed"] == "B" and seth["correct"]


def test_diagnostics_run_under_every_control_when_switched_on(run_copy):
    """`controls.diagnostics: true` adds LSD/LAR/ITR (direct and CAG) for every policy under every
    control; the oracle, which reads the ground truth, answers exactly as it does intact."""
    (run_copy / "diag_controls.yaml").write_text("controls: {diagnostics: true}\n")
    jobs = planned_jobs(snakemake(run_copy, "-n", "--configfile", "tiny.yaml", "diag_controls.yaml"))
    # 4 policies x 3 tasks x 2 modes under 4 controls; each control applied to the 3 diagnostic sets,
    # and again to the test split (its job's params hold the controls settings, which changed).
    assert jobs["diagnose"] == 4 * 4  # 4 policies under 4 controls, each job every task and mode
    assert jobs["apply_control"] == 4 * (3 + 1)
    targets = [f"results/diagnostics/responses/{condition}/oracle/lar.cag.parquet"
               for condition in ("swapped_context", "blank_query")]
    snakemake(run_copy, "--configfile", "tiny.yaml", "diag_controls.yaml", "--", *targets)
    intact = pq.read_table(run_copy / "results/diagnostics/responses/intact/oracle/lar.cag.parquet").to_pylist()
    for target in targets:
        controlled = pq.read_table(run_copy / target).to_pylist()
        assert [(r["sample_id"], r["response"], r["score"]) for r in controlled] == \
               [(r["sample_id"], r["response"], r["score"]) for r in intact], target


def test_the_released_test_set_is_captioned_and_scored_when_switched_on(tmp_path):
    """`evaluation.test_source: released`: the authors' release (JSONL + images + QAS_GT_test.json) is
    imported, and captioning, CapEval-QA and the controls read it instead of the built test split (a
    fresh copy: the targets below need nothing of the benchmark build)."""
    from support.released import write_released_test

    workdir = copy_workflow(tmp_path)
    release = write_released_test(workdir / "release")
    # One capeval job per table (not one pass), so that two tables' scores need only their own captions.
    (workdir / "released_test.yaml").write_text(
        "evaluation: {test_source: released}\ncapeval: {one_pass: false}\n"
        f"released_test: {{meta: {release['meta']}, qas_gt: {release['qas_gt']}, image_root: {release['image_root']}}}\n"
    )
    args = ("--configfile", "tiny.yaml", "released_test.yaml")
    everything = planned_jobs(snakemake(workdir, "-n", *args))
    # 4 policies x 5 conditions, the 4 controls applied to the released split.
    assert (everything["import_released_test"], everything["caption"], everything["capeval"]) == (1, 20, 20)
    assert everything["apply_control"] == 4
    targets = ["results/capeval/intact/blind/lexical_judge/summary.parquet",
               "results/capeval/text_only/oracle/lexical_judge/summary.parquet"]
    jobs = planned_jobs(snakemake(workdir, "-n", *args, "--", *targets))
    assert jobs == {"import_released_test": 1, "apply_control": 1, "caption": 2, "capeval": 2}  # no benchmark build
    snakemake(workdir, *args, "--", *targets)
    assert not (workdir / "results" / "splits").exists()
    imported = pq.read_table(workdir / "results/released_test/test.parquet").to_pylist()
    assert [r["sample_id"] for r in imported] == ["sample_0", "sample_1", "sample_2"]
    captions = pq.read_table(workdir / "results/captions/intact/blind.parquet").column("sample_id").to_pylist()
    assert sorted(captions) == ["sample_0", "sample_1", "sample_2"]
    answers = pq.read_table(workdir / "results/capeval/intact/blind/lexical_judge/answers.parquet").to_pylist()
    assert len(answers) == 27  # the excerpt's 3 samples x 3 concepts x 3 questions
    controlled = pq.read_table(workdir / "results/controls/text_only/test.parquet")
    assert controlled.column("sample_id").to_pylist() == ["sample_0", "sample_1", "sample_2"]
    assert (workdir / targets[1]).is_file()


def test_one_pass_and_per_table_judging_write_the_same_answers(run_copy):
    """capeval.one_pass only changes how many jobs judge: the 20 tables judged one job each equal the
    one-pass job's tables, row for row."""
    tables = sorted((run_copy / "results" / "capeval").rglob("answers.parquet"))
    assert len(tables) == 20
    one_pass = {path: pq.read_table(path) for path in tables}
    (run_copy / "per_table.yaml").write_text("capeval: {one_pass: false}\n")
    args = ("--configfile", "tiny.yaml", "per_table.yaml")
    targets = [str(path.relative_to(run_copy)) for path in tables]
    assert planned_jobs(snakemake(run_copy, "-n", *args, "--", *targets)) == {"capeval": 20}
    snakemake(run_copy, *args, "--", *targets)
    for path, table in one_pass.items():
        assert pq.read_table(path).equals(table), path
    assert (run_copy / "results" / "logs" / "capeval" / "text_only" / "oracle.lexical_judge.log").is_file()
