"""Stage 10: CapEval-QA. A judge answers each test question from a policy's caption alone.

For every captioned test sample, every question of every context concept goes to the judge with
only the caption beside it (SPEC §3; the request and the letter parser live in
`covip.protocol.judging`). Questions of concepts that are in the query image (positives) score when
the judge picks the correct letter (Acc+); questions of concepts that are not (negatives) score when
it picks D, "cannot be determined" (Acc-), i.e. when the caption did not drag in memories of absent
concepts.

Decisions, recorded on every row so the summary can count them:

- The reply is read by `letter_match` (docs/protocol.md): the letter in the FIRST `\\boxed{}`
  (default 'exact': the box holds one letter; 'substring', the authors' code: the expected letter
  occurs in the box's text; 'lenient': replies without a box are read too). A reply with no readable
  letter counts as 'D', as in the authors' code, with `unparseable=True`. It helps Acc- and hurts
  Acc+, so the summary reports how many there were.
- A judge call that failed (after the client layer's retries) keeps `raw_answer=None` and
  `unparseable=True` and is counted again in `n_judge_failed`: such a number is a judging problem,
  not a property of the policy. By `failed_calls` it counts as 'D' (default), or its sample is left
  out of every accuracy ('drop_sample', the authors' try/except around a sample).
- With `max_attempts` > 1 (default 1, the authors' protocol) unreadable replies are repaired and
  failed calls repeated (`covip.protocol.judging.ask_with_repair`); only what is still unreadable
  after that counts as D. Above `max_failure_rate` unreadable or failed answers the job fails.
- A caption that could not be produced (status 'failed' or no text) is a failed row, never a score:
  its questions are not sent to the judge, their rows carry `caption_failed=True` (no letter, no
  `correct`), Acc+ and Acc- leave the sample out, and the summary counts it in `n_caption_failed`.
  Judging it as an empty caption would score its positives wrong and its negatives right, a silent
  bias against the concept counts whose long prompts fail most. The captioning stage's own
  `max_failure_rate` bounds how many may fail; the report shows the count beside every row.

Per-question rows first (`judge_captions`; `judge_caption_tables` judges every caption table of a
run in one pass, for rule capeval_one_pass), aggregation second (`summarize_capeval`), so a rerun of
the summary never calls the judge again. `score_released_captions` runs the same judging on the
authors' released ground truth (QAS_GT_test.json) for captions a user brings (`covip score-released`).

Modules: `settings`, `inputs` (questions and captions paired), `judging`, `summary`, `released`.
"""

from covip.stages.capeval.inputs import CapEvalItem, items_from_split, pair_captions
from covip.stages.capeval.judging import judge_caption_tables, judge_captions, judge_failures
from covip.stages.capeval.released import score_released_captions
from covip.stages.capeval.settings import (
    FAILED_CALL_MODES,
    MISSING_CAPTION_MODES,
    CapEvalInputError,
    CapEvalSettings,
)
from covip.stages.capeval.summary import format_summary, summarize_capeval

__all__ = [
    "FAILED_CALL_MODES", "MISSING_CAPTION_MODES", "CapEvalInputError", "CapEvalItem", "CapEvalSettings", "format_summary",
    "items_from_split", "judge_caption_tables", "judge_captions", "judge_failures", "pair_captions", "score_released_captions", "summarize_capeval",
]
