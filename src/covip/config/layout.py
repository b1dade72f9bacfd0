"""Where the workflow's artifacts live: shards of the per-sample stages, the tables each control
condition reads, the jobs the controls summary gathers, and the run's final targets.

Mixed into `covip.config.prepare.Prepared`; every method is a pure function of the config.
"""

from __future__ import annotations

import math
import re

from covip.core.names import INTACT

# A sharded stage runs as ceil(num_samples / size) jobs, job k on the samples with ordinal in
# [k*size, (k+1)*size) (covip.core.sharding); a gather rule concatenates the shards, in order, into
# the artifact the rest of the DAG reads. stage -> (artifact, schema name); an artifact path may hold
# wildcards ({condition}/{policy}): each wildcard combination gets its own shards and gather job.
SHARDABLE = {
    "synthesize_queries": ("queries/queries.parquet", "queries"),
    "write_dialogues": ("dialogues/dialogues.parquet", "dialogues"),
    "write_mcqas": ("mcqa/mcqas.parquet", "mcqas"),
    "caption": ("captions/{condition}/{policy}.parquet", "captions"),
    "capeval": ("capeval/{condition}/{policy}/{judge}/answers.parquet", "capeval_answers"),
}


# Where rule import_released_test writes the authors' released test set as a split (schemas.SPLIT).
RELEASED_TEST = "released_test/test.parquet"


def _shard_path(path: str, suffix: str) -> str:
    """`.../name.parquet` -> `.../name.shards/{shard}.parquet`; logs and benchmarks get `.{shard}`."""
    if suffix == ".parquet":
        return path[: -len(suffix)] + ".shards/{shard}.parquet"
    return path[: -len(suffix)] + ".{shard}" + suffix


class Layout:
    config: dict

    def out(self, path: str) -> str:  # pragma: no cover - provided by Prepared
        raise NotImplementedError

    def human_eval_outputs(self) -> dict:  # pragma: no cover - provided by Prepared
        raise NotImplementedError

    # -- sharding ----------------------------------------------------------------------------------
    def shard_size(self, rule: str) -> int | None:
        """Samples per job of a sharded stage (None: one job); a param, so resizing reruns the stage.
        sharding.sizes.<rule> overrides sharding.shard_size for one stage."""
        settings = self.config["sharding"]
        if rule not in settings["rules"]:
            return None
        return settings.get("sizes", {}).get(rule, settings["shard_size"])

    def sharded(self, rule: str) -> bool:
        return self.shard_size(rule) is not None

    def shard_count(self, rule: str) -> int:
        return max(1, math.ceil(self.config["synthesis"]["num_samples"] / self.shard_size(rule)))

    def stage_output(self, rule: str, artifact: str) -> str:
        """Where a stage job writes: the artifact itself, or (scratch, gathered later) its shard."""
        return self.out(_shard_path(artifact, ".parquet")) if self.sharded(rule) else self.out(artifact)

    def shard_log(self, rule: str, path: str) -> str:
        """The job's log, one per shard when the stage is sharded."""
        return _shard_path(path, ".log") if self.sharded(rule) else path

    def shard_benchmark(self, rule: str, path: str) -> str:
        return _shard_path(path, ".tsv") if self.sharded(rule) else path

    def shard_pattern(self, artifact: str) -> str:
        """The path pattern of an artifact's shards ({shard} and the artifact's own wildcards)."""
        return self.out(_shard_path(artifact, ".parquet"))

    def gather_log_path(self, rule: str, artifact: str) -> str:
        """gather_<rule>, or gather_<rule>/<wildcards> when the artifact has wildcards (no '.log')."""
        names = re.findall(r"{(\w+)}", artifact)
        if not names:
            return f"gather_{rule}"
        return f"gather_{rule}/" + "/".join("{%s}" % name for name in names)

    def capeval_outputs(self) -> dict:
        """The answers (a shard of them when capeval is sharded) and, unsharded, the summary too; a
        sharded run's summary comes from rule summarize_capeval after the gather."""
        outputs = {"answers": self.stage_output("capeval", "capeval/{condition}/{policy}/{judge}/answers.parquet")}
        if not self.sharded("capeval"):
            outputs["summary"] = self.out("capeval/{condition}/{policy}/{judge}/summary.parquet")
        return outputs

    def capeval_tables(self) -> list[tuple[str, str]]:
        """(condition, policy) of every caption table a judge scores, in a fixed order."""
        return [(condition, policy) for condition in self.conditions for policy in self.config["evaluation"]["policies"]]

    def one_pass_inputs(self) -> dict:
        """A capeval_one_pass job's inputs: every caption table and each condition's test split."""
        inputs = {f"test_{condition}": self.condition_input(condition, "test") for condition in self.conditions}
        inputs.update({f"captions_{i}": self.out(f"captions/{condition}/{policy}.parquet")
                       for i, (condition, policy) in enumerate(self.capeval_tables())})
        return inputs

    def one_pass_outputs(self) -> dict:
        """Every table's answers and summary, at the paths rule capeval would write ({judge} left open)."""
        outputs = {}
        for i, (condition, policy) in enumerate(self.capeval_tables()):
            outputs[f"answers_{i}"] = self.out(f"capeval/{condition}/{policy}/{{judge}}/answers.parquet")
            outputs[f"summary_{i}"] = self.out(f"capeval/{condition}/{policy}/{{judge}}/summary.parquet")
        return outputs

    def one_pass_tables(self) -> list[list[str]]:
        """(captions input, test input, answers output, summary output) names per table, for the script."""
        return [[f"captions_{i}", f"test_{condition}", f"answers_{i}", f"summary_{i}"]
                for i, (condition, _) in enumerate(self.capeval_tables())]

    # -- control conditions --------------------------------------------------------------------------
    @property
    def conditions(self) -> list[str]:
        return list(self.config["controls"]["conditions"])

    @property
    def diagnostic_conditions(self) -> list[str]:
        """Diagnostics run under every condition unless controls.diagnostics is false (then intact only)."""
        return self.conditions if self.config["controls"]["diagnostics"] else [INTACT]

    @property
    def test_source(self) -> str:
        """'built' (the workflow's own test split) or 'released' (the authors' test set, imported)."""
        return self.config["evaluation"].get("test_source", "built")

    def test_split(self) -> str:
        """The test split every policy is captioned and scored on (evaluation.test_source)."""
        return self.out(RELEASED_TEST if self.test_source == "released" else "splits/test.parquet")

    def condition_input(self, condition: str, dataset: str) -> str:
        """The table a job of this condition reads: the original for 'intact', else the control's copy."""
        if condition == INTACT:
            return self.test_split() if dataset == "test" else self.out(f"diagnostics/sets/{dataset}.parquet")
        return self.out(f"controls/{condition}/{dataset}.parquet")

    def diagnose_inputs(self) -> dict:
        """The diagnostic set of every task, as a job of this condition reads it (set_<task>)."""
        return {f"set_{task}": (lambda wildcards, task=task: self.condition_input(wildcards["condition"], task))
                for task in self.config["evaluation"]["diagnostic_tasks"]}

    def diagnose_outputs(self) -> dict:
        """A diagnose job's responses, one table per task and mode (<task>_<mode>)."""
        evaluation = self.config["evaluation"]
        return {f"{task}_{mode}": self.out(f"diagnostics/responses/{{condition}}/{{policy}}/{task}.{mode}.parquet")
                for task in evaluation["diagnostic_tasks"] for mode in evaluation["diagnostic_modes"]}

    def diagnostic_jobs(self) -> list[str]:
        evaluation = self.config["evaluation"]
        return [f"{policy}/{task}.{mode}" for policy in evaluation["policies"]
                for task in evaluation["diagnostic_tasks"] for mode in evaluation["diagnostic_modes"]]

    def capeval_keys(self) -> list[tuple[str, str]]:
        """(condition, 'policy/judge') in a fixed order; the scripts read each input's condition from it."""
        evaluation = self.config["evaluation"]
        return [(c, f"{p}/{j}") for c in self.conditions for p in evaluation["policies"] for j in evaluation["judges"]]

    def diagnostic_keys(self) -> list[tuple[str, str]]:
        return [(c, job) for c in self.diagnostic_conditions for job in self.diagnostic_jobs()]

    def control_capeval_answers(self) -> list[str]:
        return [self.out(f"capeval/{c}/{job}/answers.parquet") for c, job in self.capeval_keys()]

    def control_diagnostic_responses(self) -> list[str]:
        return [self.out(f"diagnostics/responses/{c}/{job}.parquet") for c, job in self.diagnostic_keys()]

    def control_changes(self) -> list[str]:
        datasets = ["test", *self.config["evaluation"]["diagnostic_tasks"]]
        return [
            self.out(f"controls/{c}/{d}.changes.parquet")
            for c in self.conditions
            if c != INTACT
            for d in (datasets if c in self.diagnostic_conditions else ["test"])
        ]

    # -- targets -----------------------------------------------------------------------------------
    def final_outputs(self) -> list[str]:
        judges = self.config["evaluation"]["judges"]
        return [
            self.out("splits/train.parquet"),
            self.out("splits/test.parquet"),
            self.out("splits/split_report.parquet"),
            self.out("report/summary.md"),
            self.out("report/capeval_by_count.png"),
            self.out("report/direct_vs_cag.png"),
            self.out("report/controls.png"),
        ] + [self.out(f"released/{name}/{judge}/summary.parquet") for name in self.config["released_scoring"] for judge in judges
             ] + list(self.human_eval_outputs().values())  # none unless a votes database exists
