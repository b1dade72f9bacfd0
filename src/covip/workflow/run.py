"""The glue between a Snakemake `script:` and a stage function.

A workflow script does three things: read its inputs through the declared schemas, call one stage
function, write its output. `StageRun` gives it those, plus what every stage needs: the rule's log
(stdout, stderr, logging and progress bars all go there), the model registry with the shared response
cache, the prompt book, the seed and the stage's settings. It is the only place that looks at the
`snakemake` object, so stage functions stay testable without Snakemake.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from covip.core import schemas
from covip.clients.registry import ModelRegistry
from covip.serving.lifeline import watch_owner
from covip.serving.server import ServerSet, served_specs, split_devices, start_servers
from covip.workflow.gpu_slots import acquire
from covip.core.io import ArtifactWriter, ColumnLookup, iter_rows, read_columns, read_rows, write_artifact, write_artifact_stream
from covip.prompts import PromptBook
from covip.core.reliability import FailureReport, check_failure_rate
from covip.core.schemas import ArtifactSchema
from covip.core.sharding import Shard
from covip.core.settings import settings_from
from covip.clients.usage import usage_rows

log = logging.getLogger("covip")


def _peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM on Linux, which starts afresh at exec (the
    getrusage peak keeps the forking Snakemake process's size as a floor), else getrusage."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StageRun:
    def __init__(self, smk: Any):
        self.smk = smk
        self.config = smk.config
        self.rule = smk.rule
        self.seed = int(self.config["seed"])
        self.prompts = PromptBook(self.config.get("prompts") or {})
        self._cache_path = (self.config.get("cache") or {}).get("path") or f"{self.config['outdir']}/cache/responses.sqlite"
        self.models = ModelRegistry(self.config.get("models", {}), cache_path=self._cache_path,
                                    job=self.job, rule=self.rule)
        self.log_file = None
        self._started = 0.0
        self.gpus = None
        self.servers = ServerSet()

    @property
    def roles(self) -> list[str]:
        """The registry entries this job calls (the rule's `models` param), [] for a rule without models."""
        return list(getattr(self.smk.params, "models", None) or {})

    # -- inputs / outputs -------------------------------------------------------------------------
    def read(self, name: str, schema: ArtifactSchema, columns: list[str] | None = None) -> list[dict]:
        """All rows of an input; `columns` reads only those (e.g. leaving the images on disk)."""
        path = self.smk.input[name]
        rows = read_rows(path, schema) if columns is None else read_columns(path, schema, columns)
        log.info("read %d rows of %s from %s", len(rows), schema.name, path)
        return rows

    def iter(self, name: str, schema: ArtifactSchema):
        """An input's rows in bounded batches (lists of rows), for tables too large to hold whole."""
        path = self.smk.input[name]
        log.info("streaming %s from %s", schema.name, path)
        return iter_rows(path, schema)

    def write(self, rows, schema: ArtifactSchema, name: str | int = 0) -> None:
        path = self.smk.output[name]
        table = write_artifact(rows, path, schema)
        log.info("wrote %d rows of %s to %s", table.num_rows, schema.name, path)

    def lookup(self, name: str, schema: ArtifactSchema, key: str, column: str) -> ColumnLookup:
        """One column of an input by key, read a row group at a time (see covip.core.io.ColumnLookup)."""
        return ColumnLookup(self.smk.input[name], schema, key, column)

    def writer(self, schema: ArtifactSchema, name: str | int = 0) -> ArtifactWriter:
        """A context manager writing an output in row groups as rows come (atomic on success)."""
        return ArtifactWriter(self.smk.output[name], schema)

    def write_stream(self, rows, schema: ArtifactSchema, name: str | int = 0) -> None:
        """Write rows from an iterable in row groups as they come (atomically, like `write`)."""
        path = self.smk.output[name]
        count = write_artifact_stream(rows, path, schema)
        log.info("wrote %d rows of %s to %s", count, schema.name, path)

    def write_json(self, data, name: str | int = 0) -> None:
        """A small JSON output (a marker or manifest), written atomically."""
        import json

        path = Path(self.smk.output[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        partial.replace(path)
        log.info("wrote %s", path)

    @property
    def shard(self) -> Shard | None:
        """This job's shard of a sharded stage (wildcard `shard`, param `shard_size`), else None."""
        index = getattr(self.smk.wildcards, "shard", None)
        if index is None:
            return None
        return Shard(int(index), int(self.smk.params.shard_size))

    def in_shard(self, rows: list[dict], what: str) -> list[dict]:
        """The rows of this job's shard (all rows when the stage is not sharded)."""
        if self.shard is None:
            return rows
        chosen = self.shard.select(rows, what)
        log.info("%s: %d of %d %s rows", self.shard, len(chosen), len(rows), what)
        return chosen

    def content_path(self, name: str) -> str | None:
        """The user's replacement of content file `name` (config `content.<name>`), or None."""
        return (self.config.get("content") or {}).get(name)

    def settings(self, cls: type, section: str):
        return settings_from(cls, self.config.get(section), where=f"config '{section}'")

    def check_failures(self, report: FailureReport, max_rate: float) -> None:
        """Log the stage's failure summary; above `max_rate`, also print it to the console and raise
        (before any output is written, so Snakemake marks the job failed)."""
        log.info("%s", report.text(max_rate))
        try:
            check_failure_rate(report, max_rate)
        except Exception as error:
            print(f"rule {self.rule}: {error}", file=sys.__stderr__, flush=True)
            raise

    # -- usage ------------------------------------------------------------------------------------
    @property
    def job(self) -> str:
        """The job's name: its log path under <outdir>/logs without '.log' (rule plus wildcards)."""
        if not len(self.smk.log):
            return self.rule
        log_path = Path(self.smk.log[0])
        logs = Path(self.config["outdir"]) / "logs"
        try:
            relative = log_path.relative_to(logs)
        except ValueError:
            relative = Path(log_path.name)
        return str(relative.with_suffix(""))

    def write_usage(self) -> None:
        """This job's model usage to <outdir>/usage/<job>.parquet (written even when the job fails)."""
        rows = usage_rows(self.models._built, self.config.get("prices") or {}, job=self.job, rule=self.rule)
        if not rows:
            return
        path = Path(self.config["outdir"]) / "usage" / f"{self.job}.parquet"
        write_artifact(rows, path, schemas.USAGE)
        for row in rows:
            log.info("usage of %s: %d requests, %d cache hits, %d failures, %d+%d tokens, ~$%.4f", row["role"],
                     row["requests"], row["cache_hits"], row["failures"], row["input_tokens"], row["output_tokens"],
                     row["estimated_cost_usd"])

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> "StageRun":
        self._started = time.perf_counter()
        log_path = Path(self.smk.log[0]) if len(self.smk.log) else None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_file = open(log_path, "w", buffering=1, encoding="utf-8")
            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(contextlib.redirect_stdout(self.log_file))
            self._redirect.enter_context(contextlib.redirect_stderr(self.log_file))
        logging.basicConfig(
            level=os.environ.get("COVIP_LOG_LEVEL", "INFO"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=self.log_file or sys.stderr,
            force=True,
        )
        log.info("rule %s started (seed %d)", self.rule, self.seed)
        watch_owner()  # ends this job if the Snakemake process that started it is killed
        # Before any model is built: torch and vLLM read CUDA_VISIBLE_DEVICES when CUDA initialises.
        wanted = int(getattr(self.smk.resources, "gpu", 0) or 0)
        try:
            self.gpus = acquire(wanted, self.rule)
            served = served_specs(self.config.get("models", {}), self.roles)
            own, server_devices = split_devices(self.gpus.devices, served)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(own)
            if wanted:
                log.info("rule %s holds GPU(s) %s", self.rule, self.gpus.visible)
            if served:
                # Every server answers before the first request; the registry then points at them.
                logs = Path(self.config["outdir"]) / "logs" / "servers"
                self.servers = start_servers(served, server_devices, logs, self.job, fds_of=self.gpus.fds_of)
                self.models = ModelRegistry(self.config.get("models", {}), cache_path=self._cache_path,
                                            served=self.servers.urls, job=self.job, rule=self.rule)
        except Exception as error:
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.write_usage()
        except Exception as error:  # noqa: BLE001 - accounting must never hide the stage's own outcome
            log.warning("could not write usage: %s: %s", type(error).__name__, error)
        if exc is not None:
            log.error("rule %s failed: %s: %s", self.rule, exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        else:
            # The exact peak of this job's process (Snakemake's benchmark files sample it every 30 s).
            log.info("rule %s finished in %.1f s, peak RSS %.0f MB", self.rule, time.perf_counter() - self._started, _peak_rss_mb())
        try:
            self.models.close()
        except Exception as error:  # noqa: BLE001 - the journal is merged later even if left open
            log.warning("could not close the response cache journal: %s", error)
        self.servers.stop()  # before the devices are released: nothing else may land on a server's GPU
        if self.gpus is not None:
            self.gpus.release()
        if self.log_file is not None:
            self._redirect.close()
            self.log_file.close()
