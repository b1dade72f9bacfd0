"""Stage 5: one short user/assistant dialogue per (sample, context concept), written from facts.

Facts come first: for every context concept of every sample we draw a few objective facts
(covip.content.facts), ask the dialogue writer to turn them into a 6-turn chat that uses the concept's
name, and check the result: turn count and order, the name, and that the facts made it in. A chat
that fails the check is sent back once or twice with the problem spelled out; after the last attempt
the row is kept with status 'failed' and the reason, so nothing disappears silently.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from covip.clients.base import ChatRequest, ImagePart, Message
from covip.clients.cached import CachedChatModel
from covip.content.facts import CATEGORIES, FACT_KINDS, fact_family, fact_lists, format_facts, sample_facts
from covip.core.io import decode_image
from covip.core.reliability import FailureReport, failure_report
from covip.core.seeding import derive_seed
from covip.core.settings import ModelStageSettings
from covip.core.text import token_coverage
from covip.prompts import PromptBook
from covip.protocol.judging import Outcome, ask_with_repair, reasked, repaired

log = logging.getLogger(__name__)

USER, MODEL = "user", "model"
ROLE_LABELS = {USER: "User", MODEL: "Model"}

# A turn prefix as models actually write it: optional list/quote/heading marks or numbering, optional
# markdown emphasis around the speaker, the speaker, a colon (inside or outside the emphasis).
_PREFIX = re.compile(
    r"^\s*(?:[-*>#]+\s+)?(?:(?:turn\s*)?\d+\s*[.):-]\s*)?[*_]{0,2}\s*"
    r"(user|model|assistant|ai)\s*[*_]{0,2}\s*:\s*[*_]{0,2}\s*(.*)$",
    re.IGNORECASE,
)
_SPEAKER_ROLE = {"user": USER, "model": MODEL, "assistant": MODEL, "ai": MODEL}


@dataclass
class DialogueSettings(ModelStageSettings):
    """Settings of stage 5 (config section `dialogues`)."""

    section = "dialogues"

    facts_per_dialogue: int = field(
        default=3, metadata={"help": "objective facts drawn per dialogue (distinct kinds while there are enough)"}
    )
    num_turns: int = field(
        default=6, metadata={"help": "turns per dialogue, alternating User/Model and starting with the User (SPEC: 6)"}
    )
    fact_kinds: list[str] = field(
        default_factory=lambda: list(FACT_KINDS),
        metadata={"help": f"fact kinds to draw from, a subset of {list(FACT_KINDS)}"},
    )
    min_facts_present: int = field(
        default=1, metadata={"help": "a dialogue must mention at least this many of its facts to be accepted"}
    )
    fact_match_threshold: float = field(
        default=0.6,
        metadata={"help": "share of a fact's content words that must appear in the dialogue for it to count as mentioned"},
    )
    max_attempts: int = field(
        default=3, metadata={"help": "model calls per dialogue (first try plus repair requests) before the row fails"}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.facts_per_dialogue < 1:
            raise ValueError(f"dialogues.facts_per_dialogue must be >= 1, got {self.facts_per_dialogue}")
        if self.num_turns < 2 or self.num_turns % 2:
            raise ValueError(f"dialogues.num_turns must be an even number >= 2 (User/Model pairs), got {self.num_turns}")
        self.fact_kinds = list(self.fact_kinds)
        unknown = [k for k in self.fact_kinds if k not in FACT_KINDS]
        if not self.fact_kinds or unknown:
            raise ValueError(f"dialogues.fact_kinds must be a non-empty subset of {list(FACT_KINDS)}, got {self.fact_kinds}")
        if not 1 <= self.min_facts_present <= self.facts_per_dialogue:
            raise ValueError(
                f"dialogues.min_facts_present must be between 1 and facts_per_dialogue ({self.facts_per_dialogue}), "
                f"got {self.min_facts_present}"
            )
        if not 0.0 < self.fact_match_threshold <= 1.0:
            raise ValueError(f"dialogues.fact_match_threshold must be in (0, 1], got {self.fact_match_threshold}")


# ---------------------------------------------------------------------------------------------------
# Dialogue helpers shared with stage 6


def mentions_name(name: str, text: str) -> bool:
    """Whether `name` occurs in `text` as a whole word (case-insensitive)."""
    return re.search(rf"(?<!\w){re.escape(name.strip())}(?!\w)", text, re.IGNORECASE) is not None


# ---------------------------------------------------------------------------------------------------
# Parsing, validation, rendering


def parse_dialogue(text: str) -> list[dict]:
    """Split a model's output into turns [{'role': 'user'|'model', 'text'}].

    Tolerates 'User:' / 'Model:' / 'Assistant:' prefixes, markdown emphasis, numbering, code fences and
    blank lines. Lines without a prefix continue the current turn; text before the first prefix (a
    preamble such as 'Here is the chat:') is ignored.
    """
    turns: list[dict] = []
    for line in (text or "").splitlines():
        if line.strip().startswith("```"):
            continue
        match = _PREFIX.match(line)
        if match:
            turns.append({"role": _SPEAKER_ROLE[match[1].lower()], "text": _clean(match[2])})
        elif turns and line.strip():
            turns[-1]["text"] = (turns[-1]["text"] + " " + _clean(line)).strip()
    return turns


def _clean(text: str) -> str:
    text = re.sub(r"(\*\*|__)", "", text)
    return re.sub(r"\s+", " ", text).strip()


def render_dialogue(turns: list[dict]) -> str:
    """The published format: one 'User: ...' or 'Model: ...' line per turn."""
    return "\n".join(f"{ROLE_LABELS[turn['role']]}: {turn['text']}" for turn in turns)


def fact_present(fact_text: str, dialogue: str, threshold: float) -> bool:
    """Whether at least `threshold` of the fact's content words occur in the dialogue."""
    return token_coverage(fact_text, dialogue) >= threshold


def validate_dialogue(
    turns: list[dict], name: str, facts: list[dict], num_turns: int, *, min_facts: int = 1, threshold: float = 0.6
) -> list[str]:
    """Problems that make a parsed dialogue unusable (empty list: accepted)."""
    problems = []
    if len(turns) != num_turns:
        problems.append(f"expected {num_turns} turns alternating User/Model starting with the User, got {len(turns)}")
    for index, turn in enumerate(turns[:num_turns]):
        expected = USER if index % 2 == 0 else MODEL
        if turn["role"] != expected:
            problems.append(
                f"turn {index + 1} should be from the {ROLE_LABELS[expected]} but is from the {ROLE_LABELS[turn['role']]}"
            )
            break
    empty = [str(i + 1) for i, turn in enumerate(turns) if not re.search(r"[^\W_]", turn["text"])]
    if empty:
        problems.append(f"turn(s) {', '.join(empty)} are empty")
    joined = " ".join(turn["text"] for turn in turns)
    if turns and not mentions_name(name, joined):
        problems.append(f"the name '{name}' is never used")
    if turns and facts:
        present = sum(fact_present(fact["text"], joined, threshold) for fact in facts)
        if present < min_facts:
            listed = "; ".join(f"'{fact['text']}'" for fact in facts)
            problems.append(f"only {present} of the facts are mentioned, need at least {min_facts} of: {listed}")
    return problems


# ---------------------------------------------------------------------------------------------------
# The stage


def _concept_lookup(concepts_rows: list[dict]) -> dict[str, tuple[int, dict]]:
    lookup = {}
    for index, row in enumerate(concepts_rows):
        concept_id = row.get("concept_id")
        if not concept_id:
            raise ValueError(f"concepts row {index} field 'concept_id' is empty")
        for name in ("name", "category"):
            if not row.get(name):
                raise ValueError(f"concepts row {index} (concept_id={concept_id}) field '{name}' is empty")
        lookup[concept_id] = (index, row)
    return lookup


def write_dialogues(
    contexts_rows: list[dict],
    concepts_rows: list[dict],
    writer: CachedChatModel,
    prompts: PromptBook,
    settings: DialogueSettings,
    seed: int,
    progress_file=None,
    facts_path: str | None = None,
) -> list[dict]:
    """Write one dialogue per (sample, context concept); returns rows of schemas.DIALOGUES.

    Rows come out in context order (sample by sample, context index by index), failed ones included
    with their reason, the last raw output and the number of attempts. All first attempts go to the
    writer together, then all repairs (`covip.protocol.judging.ask_with_repair`). `facts_path`
    replaces the packaged fact word lists (the config's `content.facts`).
    """
    lists = fact_lists(facts_path)
    concepts = _concept_lookup(concepts_rows)
    for category in sorted({row["category"] for _, row in concepts.values()} - set(CATEGORIES)):
        log.info("category '%s' has no fact lists of its own; drawing facts from the '%s' lists", category,
                 fact_family(category, lists))
    checked_images: set[str] = set()
    jobs = []
    for row_index, context in enumerate(contexts_rows):
        sample_id = context.get("sample_id")
        ids = context.get("context_concept_ids") or []
        if not ids:
            raise ValueError(f"contexts row {row_index} (sample_id={sample_id}) field 'context_concept_ids' is empty")
        for context_index, concept_id in enumerate(ids):
            if concept_id not in concepts:
                raise ValueError(
                    f"contexts row {row_index} (sample_id={sample_id}) field 'context_concept_ids'[{context_index}]: "
                    f"concept '{concept_id}' is not in the concepts table"
                )
            concept_index, concept = concepts[concept_id]
            if concept_id not in checked_images:
                # Fail here, naming the row, rather than inside a model backend with a vaguer error.
                decode_image(concept.get("image"), f"concepts row {concept_index} (concept_id={concept_id}) field 'image'")
                checked_images.add(concept_id)
            facts = sample_facts(concept, seed, sample_id, settings.facts_per_dialogue, tuple(settings.fact_kinds), lists)
            jobs.append((sample_id, context_index, concept, facts))

    requests, checks, repairs = [], [], []
    for sample_id, context_index, concept, facts in jobs:
        request, check, repair = _dialogue_task(sample_id, concept, facts, prompts, settings, seed)
        requests.append(request)
        checks.append(check)
        repairs.append(repair)

    def next_request(index, attempt, previous, response, problems):
        sample_id, _, concept, _ = jobs[index]
        retry_seed = _attempt_seed(seed, sample_id, concept, attempt)
        if response.ok:
            return repaired(requests[index], response.text, repairs[index](problems), attempt=attempt, seed=retry_seed)
        return reasked(previous, attempt=attempt, seed=retry_seed)

    outcomes = ask_with_repair(writer, requests, lambda index, text: checks[index](text), next_request,
                               settings.max_attempts, desc="dialogues", progress_file=progress_file,
                               concurrency=settings.concurrency)
    return [_dialogue_row(job, outcome, writer) for job, outcome in zip(jobs, outcomes)]


def dialogue_failures(rows: list[dict]) -> FailureReport:
    """Failed dialogues among all rows, grouped by reason (see `DialogueSettings.max_failure_rate`)."""
    return failure_report(rows, "dialogues")


def _attempt_seed(seed: int, sample_id: str, concept: dict, attempt: int) -> int:
    return derive_seed(seed, "dialogue", sample_id, concept["concept_id"], attempt) % (2**31)


def _dialogue_task(sample_id, concept, facts, prompts: PromptBook, settings: DialogueSettings, seed: int):
    """The first request for one dialogue, the check of a reply and the repair text for its problems."""
    name, category = concept["name"], concept["category"]
    prompt = prompts.render(
        "dialogue_writer",
        concept_name=name,
        category=category,
        facts=format_facts(facts),
        num_turns=settings.num_turns,
    )
    request = ChatRequest(
        (Message.user(ImagePart(concept["image"]), prompt),),
        task={
            "kind": "dialogue",
            "name": name,
            "category": category,
            "facts": [dict(fact) for fact in facts],
            "num_turns": settings.num_turns,
            "attempt": 1,
        },
        seed=_attempt_seed(seed, sample_id, concept, 1),
    )

    def check(text: str):
        turns = parse_dialogue(text)
        problems = validate_dialogue(
            turns,
            name,
            facts,
            settings.num_turns,
            min_facts=settings.min_facts_present,
            threshold=settings.fact_match_threshold,
        )
        return turns, problems

    def repair(problems: list[str]) -> str:
        return prompts.render(
            "dialogue_repair",
            problem="; ".join(problems),
            concept_name=name,
            category=category,
            num_turns=settings.num_turns,
        )

    return request, check, repair


def _dialogue_row(job, outcome: Outcome, writer: CachedChatModel) -> dict:
    sample_id, context_index, concept, facts = job
    return {
        "sample_id": sample_id,
        "concept_id": concept["concept_id"],
        "context_index": context_index,
        "name": concept["name"],
        "facts": [dict(fact) for fact in facts],
        "turns": outcome.value if outcome.ok else None,
        "dialogue": render_dialogue(outcome.value) if outcome.ok else None,
        "status": "ok" if outcome.ok else "failed",
        "failure_reason": "" if outcome.ok else outcome.failure,
        "attempts": outcome.attempts,
        "raw_response": None if outcome.ok else outcome.raw,
        "writer": writer.identity,
    }
