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

from covip.clients.registry import ModelRegistry
from covip.io import ArtifactWriter, ColumnLookup, iter_rows, read_columns, read_rows, write_artifact, write_artifact_stream
from covip.prompts import PromptBook
from covip.schemas import ArtifactSchema
from covip.settings import settings_from

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
        cache_path = (self.config.get("cache") or {}).get("path") or f"{self.config['outdir']}/cache/responses.sqlite"
        self.models = ModelRegistry(self.config.get("models", {}), cache_path=cache_path)
        self.log_file = None
        self._started = 0.0

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
        """One column of an input by key, read a row group at a time (see covip.io.ColumnLookup)."""
        return ColumnLookup(self.smk.input[name], schema, key, column)

    def writer(self, schema: ArtifactSchema, name: str | int = 0) -> ArtifactWriter:
        """A context manager writing an output in row groups as rows come (atomic on success)."""
        return ArtifactWriter(self.smk.output[name], schema)

    def write_stream(self, rows, schema: ArtifactSchema, name: str | int = 0) -> None:
        """Write rows from an iterable in row groups as they come (atomically, like `write`)."""
        path = self.smk.output[name]
        count = write_artifact_stream(rows, path, schema)
        log.info("wrote %d rows of %s to %s", count, schema.name, path)

    def settings(self, cls: type, section: str):
        return settings_from(cls, self.config.get(section), where=f"config '{section}'")

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
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for name, built in self.models._built.items():
            usage = getattr(built, "usage", None)
            if usage is not None:
                log.info("model %s (%s): %s", name, built.identity, usage.summary())
        if exc is not None:
            log.error("rule %s failed: %s: %s", self.rule, exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        else:
            # The exact peak of this job's process (Snakemake's benchmark files sample it every 30 s).
            log.info("rule %s finished in %.1f s, peak RSS %.0f MB", self.rule, time.perf_counter() - self._started, _peak_rss_mb())
        if self.log_file is not None:
            self._redirect.close()
            self.log_file.close()
