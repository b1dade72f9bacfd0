"""`covip <subcommand>`: the project's one command line.

Each subcommand is a thin adapter: it parses its arguments and calls one function of the package,
imported only when that subcommand runs, so `covip --help` starts fast and no workflow rule's code
fingerprint includes this file. `python -m covip ...` is the same command (the training and GPU
rules use that form, so they need no console script on PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


# -- prompts, schemas, artifacts --------------------------------------------------------------------
def _prompts(args) -> int:
    from covip.prompts import PromptBook, available_prompts

    if args.name is None:
        print("\n".join(available_prompts()))
        return 0
    if args.name not in available_prompts():
        print(f"error: no prompt named '{args.name}'; known: {available_prompts()}", file=sys.stderr)
        return 2
    print(PromptBook().source(args.name), end="")
    return 0


def _schema(args) -> int:
    from covip.core import schemas

    if args.artifact is not None and args.artifact not in schemas.ALL:
        print(f"error: no artifact named '{args.artifact}'; known: {sorted(schemas.ALL)}", file=sys.stderr)
        return 2
    for name in [args.artifact] if args.artifact else sorted(schemas.ALL):
        artifact = schemas.ALL[name]
        print(f"# {artifact.name}: {artifact.description}")
        for field in artifact.schema:
            required = " (required)" if field.name in artifact.required else ""
            print(f"  {field.name}: {field.type}{required}")
        print()
    return 0


def _check(args) -> int:
    from covip.core import schemas
    from covip.core.io import ArtifactError, read_artifact

    if args.artifact not in schemas.ALL:
        print(f"error: no artifact named '{args.artifact}'; known: {sorted(schemas.ALL)}", file=sys.stderr)
        return 2
    try:
        table = read_artifact(args.path, schemas.ALL[args.artifact])
    except ArtifactError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{args.path}: {table.num_rows} rows, valid '{args.artifact}' artifact")
    return 0


def _config_schema(args) -> int:
    from covip.config.schema import SCHEMA_PATH, render

    text = SCHEMA_PATH.read_text(encoding="utf-8")
    fresh = render(text)
    if args.check:
        if fresh != text:
            print(f"{SCHEMA_PATH} is stale; run `covip config-schema`", file=sys.stderr)
            return 1
        print(f"{SCHEMA_PATH} is up to date")
        return 0
    SCHEMA_PATH.write_text(fresh, encoding="utf-8")
    print(f"updated {SCHEMA_PATH}")
    return 0


# -- scoring captions made elsewhere ---------------------------------------------------------------
def _score_released(args) -> int:
    from covip.clients.registry import ModelRegistry
    from covip.core import schemas
    from covip.core.formats import CaptionsFileError, load_captions_file
    from covip.core.io import write_artifact
    from covip.prompts import PromptBook
    from covip.stages.capeval import CapEvalSettings, format_summary, score_released_captions

    try:
        models, prompt_overrides = _judge_entry(args.judge_config, args.judge)
        settings = CapEvalSettings(n_bootstrap=args.n_bootstrap, missing_captions="ignore" if args.allow_missing else "error")
        judge = ModelRegistry(models, cache_path=args.cache).chat(args.judge)
        captions = load_captions_file(args.captions)
        answers, summary = score_released_captions(
            captions, args.qas_gt, judge, PromptBook(prompt_overrides), settings, args.seed, args.policy,
            judge_name=args.judge,
        )
    except (CaptionsFileError, ValueError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    write_artifact(answers, out / "capeval_answers.parquet", schemas.CAPEVAL_ANSWERS)
    write_artifact(summary, out / "capeval_summary.parquet", schemas.CAPEVAL_SUMMARY)
    print(format_summary(summary))
    return 0


def _judge_entry(judge_config: str | None, name: str) -> tuple[dict, dict | None]:
    """The judge's registry entry (and prompt overrides) from a YAML config; the lexical judge without one."""
    if judge_config is None:
        return {name: {"backend": "local_lexical_judge"}}, None
    import yaml

    config = yaml.safe_load(Path(judge_config).read_text(encoding="utf-8")) or {}
    models = config.get("models") or {}
    if name not in models:
        raise ValueError(f"{judge_config}: no entry '{name}' under 'models' (have {sorted(models)})")
    return {name: models[name]}, config.get("prompts")


# -- before a run: preflight and plan ----------------------------------------------------------------
def _preflight(args) -> int:
    from covip.config.preflight import preflight_configfiles

    try:
        report = preflight_configfiles(args.configfile, timeout_s=args.timeout)
    except (ValueError, OSError) as error:  # a config that does not parse is the first problem
        print(f"problem: config: {error}", file=sys.stderr)
        return 2
    print(report.text())
    return 0 if report.ok else 1


def _plan(args) -> int:
    from covip.planning.run import plan_configfiles

    try:
        text = plan_configfiles(args.configfile, out=args.out, usage=args.usage)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)
    return 0


# -- training, GPUs, the tiny model -----------------------------------------------------------------
def _train(args) -> int:
    from covip.training.job import run_training_job

    text = args.config_json
    config = json.loads(Path(text).read_text(encoding="utf-8") if os.path.isfile(text) else text)
    run_training_job(config, args.run, train=args.train, model_dir=args.model_dir, log=args.log,
                     checkpoints=args.checkpoints)
    return 0


def _gpu_run(args) -> int:
    from covip.serving.server import ServerError
    from covip.workflow.gpu_slots import GpuRequestError
    from covip.workflow.launch import run_with_gpus

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        print("error: gpu-run needs the command after --", file=sys.stderr)
        return 2
    models = None
    if args.serve:  # the run's served entries come from the Snakemake process (covip.config.prepare)
        entries = json.loads(os.environ.get("COVIP_SERVE_ENTRIES") or "{}")
        missing = [role for role in args.serve.split(",") if role not in entries]
        if missing:
            print(f"covip gpu-run: no served registry entry {missing} in COVIP_SERVE_ENTRIES", file=sys.stderr)
            return 2
        models = {role: entries[role] for role in args.serve.split(",")}
    try:
        return run_with_gpus(args.gpus, args.rule, command, models=models, log_dir=args.log_dir, job=args.job)
    except (GpuRequestError, ServerError) as error:
        print(f"covip gpu-run: {error}", file=sys.stderr)
        return 2


def _gpu_status(args) -> int:
    from covip.workflow.gpu_slots import status

    print(json.dumps(status(), indent=2))
    return 0


def _build_tiny_vlm(args) -> int:
    from covip.local.tiny_vlm import build_tiny_vlm

    print(build_tiny_vlm(args.out_dir, architecture=args.architecture, seed=args.seed, hidden_size=args.hidden_size,
                         num_hidden_layers=args.layers))
    return 0


# -- the parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covip", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("prompts", help="list the prompt templates, or print one (to copy and override)")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=_prompts)

    p = sub.add_parser("schema", help="print the schema of one artifact, or of all")
    p.add_argument("artifact", nargs="?")
    p.set_defaults(func=_schema)

    p = sub.add_parser("check", help="validate a Parquet file against an artifact schema")
    p.add_argument("artifact")
    p.add_argument("path")
    p.set_defaults(func=_check)

    p = sub.add_parser("config-schema", help="regenerate the stage sections of config/schemas/config.schema.yaml")
    p.add_argument("--check", action="store_true", help="only report whether the committed file is stale")
    p.set_defaults(func=_config_schema)

    p = sub.add_parser("score-released", help="score a captions file against the authors' QAS_GT_test.json")
    p.add_argument("--qas-gt", required=True, help="released ground truth (QAS_GT_test.json)")
    p.add_argument("--captions", required=True, help="captions: .json {sample_N: caption}, .jsonl or .parquet")
    p.add_argument("--out-dir", required=True, help="writes capeval_answers.parquet and capeval_summary.parquet here")
    p.add_argument("--judge-config", help="YAML with a 'models' registry (and optional 'prompts'); default: lexical judge")
    p.add_argument("--judge", default="judge", help="name of the judge's entry under 'models' (default: judge)")
    p.add_argument("--policy", default="released", help="policy name to record on the rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--allow-missing", action="store_true", help="score only the samples that have captions")
    p.add_argument("--cache", help="response cache file for remote judges")
    p.set_defaults(func=_score_released)

    p = sub.add_parser("preflight", help="check keys, endpoints, cached weights, packages and GPUs before a run")
    p.add_argument("--configfile", nargs="+", default=[], help="config files, as given to snakemake (default: the "
                                                              "embedded default)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each endpoint's /models")
    p.set_defaults(func=_preflight)

    p = sub.add_parser("plan", help="model calls, tokens, dollars and GPU-hours a config will take, before it runs")
    p.add_argument("--configfile", nargs="+", default=[], help="config files, as given to snakemake (default: the "
                                                              "embedded default)")
    p.add_argument("--out", help="also write the plan as Parquet (schemas.PLAN) here")
    p.add_argument("--usage", help="after a run: its usage folder (<outdir>/usage), to compare plan and usage per rule")
    p.set_defaults(func=_plan)

    p = sub.add_parser("train", help="one GSPO training run (rule train_gspo runs this, under accelerate on N GPUs)")
    p.add_argument("--config-json", required=True, help="JSON text or a JSON file with the run's config")
    p.add_argument("--run", required=True)
    p.add_argument("--train", required=True, help="train split Parquet (schemas.SPLIT)")
    p.add_argument("--model-dir", required=True, help="where the merged policy is saved")
    p.add_argument("--log", required=True, help="training log Parquet (schemas.TRAINING_LOG)")
    p.add_argument("--checkpoints", required=True, help="checkpoint folder (kept across reruns, for resume)")
    p.set_defaults(func=_train)

    p = sub.add_parser("gpu-run", help="take N GPUs from the machine's pool, start the served models, run a command on the rest")
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--rule", default="command", help="who holds the devices (shown by gpu-status)")
    p.add_argument("--serve", help="comma-separated served registry entries to start (from $COVIP_SERVE_ENTRIES)")
    p.add_argument("--log-dir", help="the run's log folder; server logs go to <log-dir>/servers/")
    p.add_argument("--job", help="the job's name, for the server logs (default: the rule)")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(func=_gpu_run)

    p = sub.add_parser("gpu-status", help="print the GPU pool and who holds each device")
    p.set_defaults(func=_gpu_status)

    p = sub.add_parser("build-tiny-vlm", help="write a tiny random-weight Qwen-VL model folder (offline)")
    p.add_argument("out_dir")
    p.add_argument("--architecture", choices=("qwen2_5_vl", "qwen3_vl"), default="qwen2_5_vl")
    p.add_argument("--seed", type=int, default=0, help="seeds the tokenizer corpus and the weights")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.set_defaults(func=_build_tiny_vlm)

    from covip.human_eval.command import add_parser as add_human_eval  # its own subcommands: serve, raters

    add_human_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "human-eval":
        from covip.human_eval.command import run

        return run(args)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
