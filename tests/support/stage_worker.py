"""Run one model stage against an OpenAI-compatible endpoint in its own process (for the crash test).

    python tests/support/stage_worker.py STAGE INPUT_DIR OUT_PATH CACHE_PATH BASE_URL

STAGE is 'dialogues' (reads concepts.parquet, contexts.parquet) or 'capeval' (reads
captions.parquet, test.parquet). The output is written atomically, like a workflow job's.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from covip.core import schemas
from covip.clients.registry import ModelRegistry
from covip.core.io import read_rows, write_artifact
from covip.prompts import PromptBook
from covip.stages.capeval import CapEvalSettings, judge_captions
from covip.stages.dialogues import DialogueSettings, write_dialogues

SEED = 5


def endpoint(base_url: str) -> dict:
    return {"backend": "openai", "model": "fault-model", "base_url": base_url, "max_retries": 6, "timeout_s": 2.0,
            "concurrency": 4}


def main(stage: str, inputs: str, out: str, cache: str, base_url: str) -> None:
    registry = ModelRegistry({"model": endpoint(base_url)}, cache_path=cache)
    model, folder, quiet = registry.chat("model"), Path(inputs), io.StringIO()
    if stage == "dialogues":
        rows = write_dialogues(read_rows(folder / "contexts.parquet", schemas.CONTEXTS),
                               read_rows(folder / "concepts.parquet", schemas.CONCEPTS),
                               model, PromptBook(), DialogueSettings(max_attempts=5), SEED, progress_file=quiet)
        write_artifact(rows, out, schemas.DIALOGUES)
    else:
        rows = judge_captions(read_rows(folder / "captions.parquet", schemas.CAPTIONS),
                              read_rows(folder / "test.parquet", schemas.SPLIT), model, PromptBook(),
                              CapEvalSettings(max_attempts=5, n_bootstrap=0), SEED, "judge", progress_file=quiet)
        write_artifact(rows, out, schemas.CAPEVAL_ANSWERS)


if __name__ == "__main__":
    main(*sys.argv[1:])
