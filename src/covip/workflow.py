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
import sys
import time
from pathlib import Path
from typing import Any

from covip.clients.registry import ModelRegistry
from covip.gpu_slots import acquire_into_env
from covip.io import read_rows, write_artifact
from covip.prompts import PromptBook
from covip.schemas import ArtifactSchema
from covip.sharding import Shard
from covip.settings import settings_from

log = logging.getLogger("covip")


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
        self.gpus = None

    # -- inputs / outputs -------------------------------------------------------------------------
    def read(self, name: str, schema: ArtifactSchema) -> list[dict]:
        path = self.smk.input[name]
        rows = read_rows(path, schema)
        log.info("read %d rows of %s from %s", len(rows), schema.name, path)
        return rows

    def write(self, rows, schema: ArtifactSchema, name: str | int = 0) -> None:
        path = self.smk.output[name]
        table = write_artifact(rows, path, schema)
        log.info("wrote %d rows of %s to %s", table.num_rows, schema.name, path)

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
        # Before any model is built: torch and vLLM read CUDA_VISIBLE_DEVICES when CUDA initialises.
        wanted = int(getattr(self.smk.resources, "gpu", 0) or 0)
        try:
            self.gpus = acquire_into_env(wanted, self.rule)
        except Exception as error:
            self.__exit__(type(error), error, error.__traceback__)
            raise
        if wanted:
            log.info("rule %s holds GPU(s) %s", self.rule, self.gpus.visible)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for name, built in self.models._built.items():
            usage = getattr(built, "usage", None)
            if usage is not None:
                log.info("model %s (%s): %s", name, built.identity, usage.summary())
        if exc is not None:
            log.error("rule %s failed: %s: %s", self.rule, exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        else:
            log.info("rule %s finished in %.1f s", self.rule, time.perf_counter() - self._started)
        if self.gpus is not None:
            self.gpus.release()
        if self.log_file is not None:
            self._redirect.close()
            self.log_file.close()
