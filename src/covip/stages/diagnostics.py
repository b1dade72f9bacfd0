"""Stage 11: the LSD / LAR / ITR diagnostic tasks (SPEC §5), built, answered direct or with CAG, scored.

Every item is an interleaved context of several short dialogues about fictional people, each shown
with a photo, then a NEW photo of one of them (the target) and a question:

- LSD (last-seen detection): each dialogue says where and when the user met the person; the answer is
  the place of the target's most recent encounter. Scored by token-set F1 of the last \\boxed{...} of
  the response against that place.
- LAR (last-action recall): as LSD, and the target's most recent dialogue has one more user line
  about something the user must do; the answer is that action. Scored by a judge model (correct /
  wrong); offline, `local_lexical_judge` with `covip.local.lar_judge.lexical_lar_verdict`.
- ITR (instruction-triggered recall): the target's most recent dialogue asks to be reminded with a
  made-up keyword when the person shows up again; the question is generic and the response must
  contain the keyword. Scored by keyword presence.

Set generation. The target appears in `target_mentions_*` dialogues with distinct dates (at least
`min_gap_days` apart, so "most recent" is unambiguous) and distinct places; the other dialogues are
about other people of the pool (persons preferred). The context order is shuffled, so the most
recent encounter is not always last. Names and places are Faker fakes, unique within an item, and
no two places of an item share a word, so naming the wrong place scores 0 F1. With
`distractors` on, LAR's other dialogues carry other actions and ITR's non-target dialogues other
keywords, so that recency (LAR) and recognising the person (ITR) are needed, not just finding the
one line that looks like an answer. Every context image is the person's reference cut-out composited
on a scene by `covip.local.compositor.Compositor`; the query image is a new composite (its own
background, scale, flip and lighting), so recognising the target is visual, never a byte match.
The dialogue lines are data written by this module (they are the benchmark's content, not prompts);
the questions and the headers of the direct layout come from the prompt file `diagnostic_questions`.

Answering. `direct`: one user turn with, per context entry, a header, the image and the dialogue,
then a header, the query image and the question (sampled like the authors' CAG answers).
`cag`: caption every item first (greedy, through the captioning stage's request builder), then
answer with the caption as the assistant's previous turn (`build_cag_request`).

Scoring and aggregation are separate: `score_diagnostics` fills per-row scores (None when the
response or its judging failed; never a silent 0), `summarize_diagnostics` averages the scored rows
per (policy, task, mode) in percent with a 95% bootstrap interval.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from covip import schemas
from covip.clients.base import ChatModel, ChatRequest, ChatResponse, ImagePart, ImageRequest, Message, TextPart
from covip.clients.registry import is_stand_in
from covip.io import BadImageError, decode_image, write_artifact
from covip.prompts import PromptBook, fill_section
from covip.seeding import derive_seed, pyrandom_for, rng_for
from covip.reliability import FailureReport, failure_report, validate_max_failure_rate

TASKS = ("lsd", "lar", "itr")
MODES = ("direct", "cag")
QUESTIONS_PROMPT = "diagnostic_questions"
LAYOUT_SECTIONS = ("context", "query")
JUDGE_PROMPT = "lar_judge"
HUB_COLUMNS = ("images_context", "dialogues_context", "query_image", "answer")
SCORER = {"lsd": "token_f1", "lar": "lar_judge", "itr": "keyword"}
DATE_STYLES = ("iso", "long")


class DiagnosticError(ValueError):
    """Bad diagnostic input (pool, set file, response rows); the message names file, row and field."""


def _greedy():
    return {"temperature": 0.0, "max_tokens": 512}


def _answer_sampling():
    # SPEC §4: the authors sample downstream answers at T=0.7, top-p 0.8, top-k 20, presence 1.5.
    return {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5, "max_tokens": 512}


@dataclass
class DiagnosticSettings:
    """Settings of stage 11 (config section `diagnostics`)."""

    items_per_task: int = field(default=24, metadata={"help": "Items generated per task (lsd, lar, itr)."})
    dialogues_per_item: int = field(default=4, metadata={"help": "Dialogues (each with its image) in an item's context."})
    target_mentions_min: int = field(default=2, metadata={"help": "Fewest dialogues about the target person (each a different date and place)."})
    target_mentions_max: int = field(default=3, metadata={"help": "Most dialogues about the target person; at most dialogues_per_item - 1, so someone else is always in the context."})
    image_size: int = field(default=256, metadata={"help": "Side, in pixels, of every composited context and query image."})
    prefer_category: str = field(default="person", metadata={"help": "Concept category the people are drawn from; falls back to the whole pool when it has too few concepts."})
    name_locale: str = field(default="en_US", metadata={"help": "Faker locale of the fictional names and places."})
    start_date: str = field(default="2023-01-01", metadata={"help": "Earliest encounter date (ISO)."})
    span_days: int = field(default=900, metadata={"help": "Encounter dates fall within this many days after start_date."})
    min_gap_days: int = field(default=14, metadata={"help": "Smallest gap between two encounters with the target, so the most recent one is unambiguous."})
    keyword_style: str = field(default="consonants", metadata={"help": "ITR keywords: 'consonants' (three capital consonants, like SKS) or 'pseudoword' (a pronounceable made-up word, like Tovek)."})
    distractors: bool = field(default=True, metadata={"help": "LAR: give the other dialogues other actions; ITR: give the non-target dialogues other keywords. Off, only the answer's dialogue has one."})
    caption_sampling: dict = field(default_factory=_greedy, metadata={"help": "Sampling of the CAG caption (SPEC §4: greedy)."})
    answer_sampling: dict = field(default_factory=_answer_sampling, metadata={"help": "Sampling of every answer, direct or CAG (SPEC §4: T 0.7, top-p 0.8, top-k 20, presence penalty 1.5)."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples of the 95% interval in the summary."})
    max_failure_rate: float = field(
        default=0.2,
        metadata={"help": "The stage fails (writes nothing, prints a summary) when more than this share of its model "
                          "calls failed after the client's retries; finished calls stay cached, so a rerun repeats none."},
    )

    def __post_init__(self):
        validate_max_failure_rate(self.max_failure_rate, "diagnostics")
        if not 1 <= self.items_per_task <= 100_000:
            raise ValueError(f"diagnostics.items_per_task must be in [1, 100000], got {self.items_per_task}")
        if not 2 <= self.dialogues_per_item <= 16:
            raise ValueError(f"diagnostics.dialogues_per_item must be in [2, 16], got {self.dialogues_per_item}")
        if not 1 <= self.target_mentions_min <= self.target_mentions_max <= self.dialogues_per_item - 1:
            raise ValueError(
                "diagnostics.target_mentions_min/target_mentions_max must satisfy 1 <= min <= max <= "
                f"dialogues_per_item - 1 ({self.dialogues_per_item - 1}), got {self.target_mentions_min}/{self.target_mentions_max}"
            )
        if not 64 <= self.image_size <= 2048:
            raise ValueError(f"diagnostics.image_size must be in [64, 2048], got {self.image_size}")
        try:
            dt.date.fromisoformat(self.start_date)
        except (TypeError, ValueError):
            raise ValueError(f"diagnostics.start_date must be an ISO date (YYYY-MM-DD), got {self.start_date!r}") from None
        if self.min_gap_days < 1:
            raise ValueError(f"diagnostics.min_gap_days must be >= 1, got {self.min_gap_days}")
        if self.span_days < self.min_gap_days * self.target_mentions_max:
            raise ValueError(
                f"diagnostics.span_days ({self.span_days}) must be at least min_gap_days * target_mentions_max "
                f"({self.min_gap_days * self.target_mentions_max}) so the target's dates fit"
            )
        if self.keyword_style not in ("consonants", "pseudoword"):
            raise ValueError(f"diagnostics.keyword_style must be 'consonants' or 'pseudoword', got {self.keyword_style!r}")
        for name in ("caption_sampling", "answer_sampling"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"diagnostics.{name} must be a mapping of sampling parameters")
        if not 0 <= self.n_bootstrap <= 100_000:
            raise ValueError(f"diagnostics.n_bootstrap must be in [0, 100000], got {self.n_bootstrap}")


# ---------------------------------------------------------------------------------------------------
# Dialogue content: data of the benchmark (what the user told the assistant), not prompts.

_OPENERS = (
    ("This is {name}. I saw {name} at {place} on {date}.", "Got it: you saw {name} at {place} on {date}."),
    ("Meet {name}! We bumped into each other in {place} on {date}.", "Nice, I'll remember that you met {name} in {place} on {date}."),
    ("Here's a photo of {name}. On {date} I ran into {name} in {place}.", "Thanks, noted that you ran into {name} in {place} on {date}."),
    ("I want you to remember {name}. I met {name} in {place} on {date}.", "Of course. {name}, met in {place} on {date}."),
    ("On {date} I spotted {name} in {place}, this is the photo.", "Noted: {name} was in {place} on {date}."),
)
_SMALL_TALK = (
    ("{name} was wearing a bright yellow scarf.", "A yellow scarf, easy to spot."),
    ("{name} told me about a new pottery class.", "Pottery sounds like a fun hobby for {name}."),
    ("{name} seemed to be in a hurry that day.", "I hope everything was fine with {name}."),
    ("{name} recommended a book about lighthouses.", "That sounds like an interesting read."),
    ("{name} was carrying a big bunch of flowers.", "Maybe they were a gift."),
    ("{name} laughed the whole time we talked.", "Sounds like a cheerful meeting."),
    ("{name} just got back from a long bike ride.", "That must have been tiring for {name}."),
)
_CLOSERS = (
    ("Please keep {name} in mind.", "I will."),
    ("That's all about {name} for now.", "Okay, thanks for telling me."),
    ("I'm sure I'll meet {name} again soon.", "I'll be here to help you remember."),
)
_ACTION_LINES = (
    ("After talking with {name}, I need to {action}.", "Understood, you need to {action}."),
    ("Oh, and right after seeing {name} I have to {action}.", "Got it, I'll remember that you have to {action}."),
    ("Before I forget: once I leave {name}, I must {action}.", "Noted, you must {action}."),
)
_INSTRUCTION_LINES = (
    ("If {name} shows up again, remind me with the keyword {keyword}.", "Sure, when {name} appears again I'll remind you with {keyword}."),
    ("Next time you see {name} in a photo, please say {keyword} to remind me.", "Understood, I'll say {keyword} next time {name} shows up."),
    ("Whenever {name} appears again, bring up the keyword {keyword} for me.", "Will do: {keyword} for {name}."),
)
ACTIONS = (
    "go to the post office to return this package",
    "pick up my dry cleaning before six",
    "buy a birthday cake for my niece",
    "call the plumber about the leaking sink",
    "water the tomatoes in the community garden",
    "return two overdue books to the library",
    "book a table at the Italian restaurant",
    "fix the flat tire on my bicycle",
    "renew my passport at the city office",
    "drop off the rent check at the landlord's office",
    "feed my neighbor's goldfish",
    "pay the electricity bill online",
    "wash the car before the weekend trip",
    "print the slides for tomorrow's meeting",
    "collect my glasses from the optician",
    "bake cookies for the school fundraiser",
)
_CONSONANTS = "BCDFGHJKLMNPQRSTVWXZ"
_PSEUDO_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_PSEUDO_VOWELS = ("a", "e", "i", "o", "u")


def _second_person(text: str) -> str:
    return re.sub(r"\bmy\b", "your", re.sub(r"\bMy\b", "Your", text))


def _format_date(date: dt.date, style: str) -> str:
    return date.isoformat() if style == "iso" else f"{date:%B} {date.day}, {date.year}"


def _make_keyword(rng, style: str) -> str:
    if style == "consonants":
        return "".join(rng.choice(_CONSONANTS) for _ in range(3))
    syllables = [rng.choice(_PSEUDO_ONSETS) + rng.choice(_PSEUDO_VOWELS) for _ in range(2)]
    return ("".join(syllables) + rng.choice(("k", "n", "r", "x"))).capitalize()


# ---------------------------------------------------------------------------------------------------
# Set generation


def _people_pool(concepts_rows: Sequence[Mapping], settings: DiagnosticSettings) -> list[Mapping]:
    needed = settings.dialogues_per_item - settings.target_mentions_min + 1
    for index, row in enumerate(concepts_rows):
        for key in ("concept_id", "category", "image"):
            if not row.get(key):
                raise DiagnosticError(f"concepts row {index} (concept_id={row.get('concept_id')}) field '{key}' is missing or empty")
    preferred = [row for row in concepts_rows if row["category"] == settings.prefer_category]
    pool = preferred if len(preferred) >= needed else list(concepts_rows)
    if len(pool) < needed:
        raise DiagnosticError(
            f"diagnostics: items need {needed} distinct concepts (dialogues_per_item={settings.dialogues_per_item}, "
            f"target_mentions_min={settings.target_mentions_min}) but the concept pool has {len(pool)}"
        )
    return sorted(pool, key=lambda row: row["concept_id"])


_FAKERS: dict[str, object] = {}


def _faker(locale: str, seed: int):
    from faker import Faker  # imported when a set is built, not when the module is imported

    if locale not in _FAKERS:
        _FAKERS[locale] = Faker(locale)
    fake = _FAKERS[locale]
    fake.seed_instance(seed)
    return fake


def _words(text: str) -> set[str]:
    return set(_normalize_tokens(text))


def _draw_names_places(fake, num_people: int, num_places: int) -> tuple[list[str], list[str]]:
    """Unique first names, and places that share no word with each other or with any name."""
    names: list[str] = []
    while len(names) < num_people:
        name = fake.first_name()
        if name not in names:
            names.append(name)
    used = {w for n in names for w in _words(n)}
    places: list[str] = []
    for _ in range(1000):
        if len(places) == num_places:
            break
        place = fake.city()
        words = _words(place)
        if words and not words & used:
            places.append(place)
            used |= words
    if len(places) < num_places:
        raise DiagnosticError(f"diagnostics: could not draw {num_places} distinct places with locale {fake.locales}")
    return names, places


def _target_dates(rng, settings: DiagnosticSettings, count: int) -> list[dt.date]:
    start = dt.date.fromisoformat(settings.start_date)
    for _ in range(1000):
        days = sorted(int(d) for d in rng.sample(range(settings.span_days + 1), count))
        if all(b - a >= settings.min_gap_days for a, b in zip(days, days[1:])):
            return [start + dt.timedelta(days=d) for d in days]
    # Fall back to evenly spread dates (always possible: span_days >= min_gap_days * count).
    step = settings.span_days // max(1, count)
    return [start + dt.timedelta(days=i * step) for i in range(count)]


def _dialogue(rng, name: str, place: str, date: str, extra: tuple[str, str] | None) -> str:
    opener = rng.choice(_OPENERS)
    middle = rng.choice(_SMALL_TALK)
    closer = extra or rng.choice(_CLOSERS)
    turns = []
    for user, model in (opener, middle, closer):
        values = {"name": name, "place": place, "date": date}
        turns.append("User: " + user.format(**values))
        turns.append("Model: " + model.format(**values))
    return "\n".join(turns)


def _question(prompts: PromptBook, task: str) -> str:
    return prompts.render_section(QUESTIONS_PROMPT, task)


def build_diagnostic_set(
    task: str,
    concepts_rows: Sequence[Mapping],
    settings: DiagnosticSettings,
    seed: int,
    progress_file=None,
    prompts: PromptBook | None = None,
) -> list[dict]:
    """Generate `settings.items_per_task` items of `task` ('lsd' | 'lar' | 'itr'); rows of schemas.DIAGNOSTIC_SET.

    Deterministic from (seed, task, sample id): an item never depends on how many others are built.
    """
    if task not in TASKS:
        raise DiagnosticError(f"diagnostics: unknown task {task!r}; choose from {list(TASKS)}")
    from covip.clients.registry import ModelSpec
    from covip.local.compositor import Compositor

    prompts = prompts or PromptBook()
    question = _question(prompts, task)
    pool = _people_pool(concepts_rows, settings)
    compositor = Compositor(ModelSpec(
        name="diagnostic_scenes", backend="local_compositor",
        options={"defect_rate": 0.0, "image_size": settings.image_size},
    ))
    rows = []
    for index in tqdm(range(settings.items_per_task), desc=f"diagnostic set {task}", file=progress_file, mininterval=1.0, ascii=True):
        sample_id = f"{task}{index:04d}"
        rows.append(_build_item(task, sample_id, pool, settings, seed, question, compositor))
    return rows


def _build_item(task, sample_id, pool, settings, seed, question, compositor) -> dict:
    rng = pyrandom_for(seed, "diagnostics", task, sample_id)
    n = settings.dialogues_per_item
    mentions = rng.randint(settings.target_mentions_min, settings.target_mentions_max)
    people = rng.sample(range(len(pool)), n - mentions + 1)
    target, others = pool[people[0]], [pool[i] for i in people[1:]]
    fake = _faker(settings.name_locale, derive_seed(seed, "diagnostics-faker", task, sample_id))
    names, places = _draw_names_places(fake, 1 + len(others), n)
    name_of = {target["concept_id"]: names[0]} | {c["concept_id"]: nm for c, nm in zip(others, names[1:])}

    # Entries in chronological-free form first: (concept, place, date); the target's latest is the answer.
    target_dates = _target_dates(rng, settings, mentions)
    start = dt.date.fromisoformat(settings.start_date)
    entries = [{"concept": target, "place": places[k], "date": d, "target": True} for k, d in enumerate(target_dates)]
    entries += [
        {"concept": c, "place": places[mentions + k], "date": start + dt.timedelta(days=rng.randint(0, settings.span_days)), "target": False}
        for k, c in enumerate(others)
    ]
    latest = entries[mentions - 1]  # target dates are sorted ascending

    answer = latest["place"]
    used_actions = rng.sample(range(len(ACTIONS)), n) if task == "lar" else []
    keywords: list[str] = []
    if task == "itr":
        while len(keywords) < n:
            word = _make_keyword(rng, settings.keyword_style)
            if word not in keywords and word.lower() not in {w.lower() for w in names + places}:
                keywords.append(word)
    for k, entry in enumerate(entries):
        entry["extra"] = None
        is_answer = entry is latest
        if task == "lar" and (is_answer or settings.distractors):
            line = rng.choice(_ACTION_LINES)
            action = ACTIONS[used_actions[k]]
            # The assistant repeats the action back, so "my" becomes "your" in its line.
            entry["extra"] = (line[0].replace("{action}", action), line[1].replace("{action}", _second_person(action)))
            if is_answer:
                answer = action
        elif task == "itr" and (is_answer or (settings.distractors and not entry["target"])):
            line = rng.choice(_INSTRUCTION_LINES)
            entry["extra"] = tuple(part.replace("{keyword}", keywords[k]) for part in line)
            if is_answer:
                answer = keywords[k]

    order = list(range(n))
    rng.shuffle(order)
    images, dialogues = [], []
    for position, k in enumerate(order):
        entry = entries[k]
        concept = entry["concept"]
        date = _format_date(entry["date"], rng.choice(DATE_STYLES))
        dialogues.append(_dialogue(rng, name_of[concept["concept_id"]], entry["place"], date, entry["extra"]))
        images.append(_composite(compositor, concept, derive_seed(seed, "diagnostics-context", task, sample_id, position), settings))
    query = _composite(compositor, target, derive_seed(seed, "diagnostics-query", task, sample_id), settings)
    return {
        "sample_id": sample_id,
        "task": task,
        "images_context": [{"bytes": image, "path": None} for image in images],
        "dialogues_context": dialogues,
        "query_image": {"bytes": query, "path": None},
        "question": question,
        "answer": answer,
        "target_index": order.index(mentions - 1),
    }


def _composite(compositor, concept: Mapping, seed: int, settings: DiagnosticSettings) -> bytes:
    request = ImageRequest(
        instruction="",  # the compositor works from the reference and the task, never from prose
        reference_images=(ImagePart(concept["image"]),),
        seed=seed % (2**63),
        task={"concept_ids": [concept["concept_id"]], "image_size": settings.image_size},
    )
    response = compositor.generate(request)
    if not response.ok:
        raise DiagnosticError(f"diagnostics: compositing concept {concept['concept_id']} failed: {response.error}")
    return response.image


def write_diagnostic_set(rows: Sequence[Mapping], path) -> pa.Table:
    """Write a set atomically, schema-checked; it loads with datasets.load_dataset('parquet')."""
    return write_artifact(rows, path, schemas.DIAGNOSTIC_SET)


# ---------------------------------------------------------------------------------------------------
# Loading a hub-format set


def _image_cell(value, where: str, base: Path) -> dict:
    """Normalise an image cell (HF struct {'bytes','path'}, raw bytes) to a struct with bytes."""
    if isinstance(value, (bytes, bytearray)):
        data, path = bytes(value), None
    elif isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if not data and path:
            file = Path(path) if Path(path).is_absolute() else base / path
            if not file.is_file():
                raise DiagnosticError(f"{where}: image has no bytes and its path {path!r} is not a file")
            data = file.read_bytes()
    else:
        raise DiagnosticError(f"{where}: expected an image ({{'bytes','path'}} struct or bytes), got {type(value).__name__}")
    try:
        decode_image(data, where)
    except BadImageError as error:
        raise DiagnosticError(str(error)) from None
    return {"bytes": bytes(data), "path": path}


def load_diagnostic_set(path, task: str, prompts: PromptBook | None = None) -> list[dict]:
    """Read a diagnostic set in the hub layout (images_context, dialogues_context, query_image, answer).

    Other columns are optional: a missing `sample_id` becomes '<task><row>', a missing `question` the
    task's question from the prompt file, a missing `target_index` -1. A `task` column must agree with
    `task`. Returns rows of schemas.DIAGNOSTIC_SET; bad cells raise naming file, row and field.
    """
    if task not in TASKS:
        raise DiagnosticError(f"diagnostics: unknown task {task!r}; choose from {list(TASKS)}")
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise DiagnosticError(f"{path}: cannot read as Parquet ({error})") from error
    missing = [c for c in HUB_COLUMNS if c not in table.column_names]
    if missing:
        raise DiagnosticError(f"{path}: missing hub column(s) {missing}; a diagnostic set needs {list(HUB_COLUMNS)}")
    default_question = None
    rows = []
    for index, raw in enumerate(table.to_pylist()):
        where = f"{path} row {index}"
        sample_id = raw.get("sample_id") or f"{task}{index:04d}"
        where = f"{where} (sample_id={sample_id})"
        if raw.get("task") not in (None, task):
            raise DiagnosticError(f"{where} field 'task': {raw['task']!r} but the set was loaded as {task!r}")
        images = raw["images_context"]
        dialogues = raw["dialogues_context"]
        if not images:
            raise DiagnosticError(f"{where} field 'images_context' is empty")
        if not isinstance(dialogues, list) or not all(isinstance(d, str) and d.strip() for d in dialogues):
            raise DiagnosticError(f"{where} field 'dialogues_context' must be a list of non-empty strings")
        if len(dialogues) != len(images):
            raise DiagnosticError(f"{where}: {len(images)} images_context but {len(dialogues)} dialogues_context")
        answer = raw["answer"]
        if answer is None or not str(answer).strip():
            raise DiagnosticError(f"{where} field 'answer' is empty")
        question = raw.get("question")
        if not question:
            if default_question is None:
                default_question = _question(prompts or PromptBook(), task)
            question = default_question
        target = raw.get("target_index")
        target = -1 if target is None else int(target)
        if not -1 <= target < len(images):
            raise DiagnosticError(f"{where} field 'target_index': {target} is outside the {len(images)} context entries")
        rows.append({
            "sample_id": str(sample_id),
            "task": task,
            "images_context": [_image_cell(v, f"{where} field 'images_context'[{k}]", path.parent) for k, v in enumerate(images)],
            "dialogues_context": list(dialogues),
            "query_image": _image_cell(raw["query_image"], f"{where} field 'query_image'", path.parent),
            "question": str(question),
            "answer": str(answer).strip(),
            "target_index": target,
        })
    ids = [row["sample_id"] for row in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DiagnosticError(f"{path} field 'sample_id': {dup!r} appears more than once")
    return rows


# ---------------------------------------------------------------------------------------------------
# Requests


def as_caption_row(item: Mapping) -> dict:
    """A diagnostic item in the split-row shape the captioning stage reads.

    The set stores no names or facts apart from the dialogues, so those are empty; the one known
    positive is the entry the answer comes from (`target_index`), which only reference policies read.
    """
    target = _target(item)
    return {
        "sample_id": item["sample_id"],
        "context_images": list(item["images_context"]),
        "context_dialogues": list(item["dialogues_context"]),
        "context_names": [],
        "context_facts": "[]",
        "positive_indices": [target] if target >= 0 else [],
        "query_image": item["query_image"],
    }


def _target(item: Mapping) -> int:
    target = item.get("target_index")
    return -1 if target is None else int(target)


def _answer_seed(seed: int, item: Mapping, mode: str) -> int:
    return derive_seed(seed, "diagnostics-answer", item["task"], item["sample_id"], mode) % (2**31)


def build_direct_request(item: Mapping, prompts: PromptBook, *, sampling: dict | None = None, seed: int = 0) -> ChatRequest:
    """One user turn: per context entry a header, its image and its dialogue; then the query image and question."""
    sections = prompts.sections(QUESTIONS_PROMPT, LAYOUT_SECTIONS)
    parts: list[TextPart | ImagePart] = []
    images = list(item["images_context"])  # empty under the text-only control: dialogues alone
    for index, dialogue in enumerate(item["dialogues_context"], start=1):
        header = fill_section(sections["context"], QUESTIONS_PROMPT, "context", index=index, num_context=len(item["dialogues_context"]))
        parts += [TextPart(header), *([ImagePart(images[index - 1]["bytes"])] if images else []), TextPart(dialogue)]
    parts.append(TextPart(fill_section(sections["query"], QUESTIONS_PROMPT, "query", num_context=len(item["dialogues_context"]))))
    parts.append(ImagePart(item["query_image"]["bytes"]))
    parts.append(TextPart(item["question"]))
    task = {
        "kind": "diagnostic",
        "task": item["task"],
        "sample_id": item["sample_id"],
        "question": item["question"],
        "dialogues": list(item["dialogues_context"]),
        "target_index": _target(item),
    }
    return ChatRequest(
        messages=(Message("user", tuple(parts)),),
        sampling=dict(_answer_sampling() if sampling is None else sampling),
        task=task,
        seed=_answer_seed(seed, item, "direct"),
    )


def _complete_all(model: ChatModel, requests: list[ChatRequest], desc: str, progress_file) -> list[ChatResponse]:
    if hasattr(model, "complete_many"):
        return model.complete_many(requests, desc=desc, progress_file=progress_file)
    responses = []
    for request in tqdm(requests, desc=desc, file=progress_file, mininterval=1.0, ascii=True):
        try:
            responses.append(model.complete(request))
        except Exception as error:  # noqa: BLE001 - recorded on the row, never hidden
            responses.append(ChatResponse(None, getattr(model, "identity", "?"), error=f"{type(error).__name__}: {error}"))
    return responses


def _failure(response: ChatResponse, what: str) -> str:
    return f"{what}: {response.error or 'no text returned'}"


def answer_diagnostics(
    items: Sequence[Mapping],
    policy_name: str,
    model: ChatModel,
    prompts: PromptBook,
    settings: DiagnosticSettings,
    seed: int,
    mode: str,
    progress_file=None,
) -> list[dict]:
    """The policy's response to every item; rows of schemas.DIAGNOSTIC_RESPONSES, not scored yet.

    `mode='direct'` asks the question over the interleaved context; `mode='cag'` captions each item
    first (greedy) and asks the question with the caption as the assistant's previous turn. A failed
    call gives a row with status 'failed' and the error; it never stops the stage.
    """
    if mode not in MODES:
        raise DiagnosticError(f"diagnostics: unknown mode {mode!r}; choose from {list(MODES)}")
    identity = getattr(model, "identity", type(model).__name__)
    stand_in = is_stand_in(model)
    items = list(items)
    captions: list[str | None] = [None] * len(items)
    errors: list[str | None] = [None] * len(items)
    responses: list[ChatResponse | None] = [None] * len(items)

    if mode == "direct":
        requests = [build_direct_request(item, prompts, sampling=settings.answer_sampling, seed=seed) for item in items]
        for k, response in enumerate(_complete_all(model, requests, f"{policy_name} diagnostics direct", progress_file)):
            responses[k] = response
    else:
        from covip.stages.captioning import build_caption_request, build_cag_request

        caption_requests = [
            build_caption_request(as_caption_row(item), prompts, sampling=dict(settings.caption_sampling),
                                  seed=_answer_seed(seed, item, "caption"), where=f"diagnostic set {item['task']}")
            for item in items
        ]
        caption_responses = _complete_all(model, caption_requests, f"{policy_name} diagnostics captions", progress_file)
        pending, answer_requests = [], []
        for k, (item, request, response) in enumerate(zip(items, caption_requests, caption_responses)):
            if not response.ok:
                errors[k] = _failure(response, "caption failed")
                continue
            captions[k] = response.text
            answer_requests.append(build_cag_request(
                request, response.text, item["question"], sampling=dict(settings.answer_sampling),
                seed=_answer_seed(seed, item, "cag"), prompts=prompts,
                task_extra={"diagnostic_task": item["task"], "target_index": _target(item)},
            ))
            pending.append(k)
        answered = _complete_all(model, answer_requests, f"{policy_name} diagnostics CAG answers", progress_file)
        for k, response in zip(pending, answered):
            responses[k] = response

    rows = []
    for k, item in enumerate(items):
        response = responses[k]
        if response is not None and not response.ok:
            errors[k] = _failure(response, "answer failed")
        ok = errors[k] is None
        rows.append({
            "policy": policy_name,
            "task": item["task"],
            "mode": mode,
            "sample_id": item["sample_id"],
            "caption": captions[k],
            "response": response.text if ok else None,
            "extracted": None,
            "score": None,
            "scorer": SCORER[item["task"]],
            "model_identity": identity,
            "stand_in": stand_in,
            "status": "ok" if ok else "failed",
            "error": errors[k],
        })
    return rows


# ---------------------------------------------------------------------------------------------------
# Scoring (plain functions, each testable alone)

_BOXED = "\\boxed"
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_THINK = re.compile(r"<think>.*?(</think>|$)", re.IGNORECASE | re.DOTALL)


def extract_boxed(text: str | None) -> str | None:
    """The content of the LAST complete `\\boxed{...}` in `text` (braces balanced), or None.

    LaTeX text wrappers inside (`\\text{Paris}`) are unwrapped; an unclosed box is ignored.
    """
    if not text:
        return None
    found = None
    start = text.find(_BOXED)
    while start != -1:
        brace = start + len(_BOXED)
        while brace < len(text) and text[brace].isspace():
            brace += 1
        if brace < len(text) and text[brace] == "{":
            depth = 0
            for end in range(brace, len(text)):
                if text[end] == "{":
                    depth += 1
                elif text[end] == "}":
                    depth -= 1
                    if depth == 0:
                        found = text[brace + 1:end]
                        break
        start = text.find(_BOXED, start + 1)
    if found is None:
        return None
    previous = None
    while previous != found:  # unwrap nested wrappers from the inside out
        previous, found = found, _TEXT_WRAPPER.sub(r"\1", found)
    return found.strip()


def _normalize_tokens(text: str | None) -> list[str]:
    words = _PUNCT.sub(" ", (text or "").lower()).split()
    return [w for w in words if w not in _ARTICLES]


def token_set_f1(prediction: str | None, reference: str) -> float:
    """F1 between the token sets of prediction and reference (lowercased, punctuation and articles removed)."""
    if prediction is None:
        return 0.0
    pred, ref = set(_normalize_tokens(prediction)), set(_normalize_tokens(reference))
    if not pred or not ref:
        return float(pred == ref)
    common = len(pred & ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def keyword_present(text: str | None, keyword: str) -> bool:
    """Whether `keyword` occurs in `text` as a whole word, ignoring case."""
    if not text or not keyword:
        return False
    pattern = r"(?<![A-Za-z0-9])" + re.escape(keyword.strip()) + r"(?![A-Za-z0-9])"
    return re.search(pattern, text, re.IGNORECASE) is not None


_VERDICT = re.compile(r"\b(incorrect|not\s+correct|wrong|correct)\b", re.IGNORECASE)
_LEAD_VERDICT = re.compile(r"^[\W_]*(?:(?:final\s+)?(?:verdict|answer|judgement|judgment|grade)\s*[:\-]?[\W_]*)?(incorrect|not\s+correct|wrong|correct)\b", re.IGNORECASE)


def parse_lar_verdict(text: str | None) -> bool | None:
    """True for a 'correct' verdict, False for 'wrong'/'incorrect', None when absent or contradictory.

    Tolerates case, markdown, an 'Answer:'/'Verdict:' prefix, a <think> block and an explanation after
    the verdict. When the text mentions both, the verdict at its start decides; otherwise None.
    """
    if not text:
        return None
    body = _THINK.sub("", text).strip()
    lead = _LEAD_VERDICT.match(body)
    if lead:
        return lead.group(1).lower() == "correct"
    found = {m.group(1).lower() == "correct" for m in _VERDICT.finditer(body)}
    return found.pop() if len(found) == 1 else None


def build_lar_judge_request(question: str, reference: str, response: str, prompts: PromptBook, *, seed: int = 0) -> ChatRequest:
    """The LAR judge's request: prompt `lar_judge` (question, reference, response -> correct/wrong)."""
    text = prompts.render(JUDGE_PROMPT, question=question, reference=reference, response=response)
    task = {"kind": "lar_judge", "question": question, "reference": reference, "response": response}
    return ChatRequest(messages=(Message.user(text),), task=task, seed=seed)


def score_diagnostics(
    response_rows: Sequence[Mapping],
    items: Sequence[Mapping],
    judge: ChatModel | None = None,
    prompts: PromptBook | None = None,
    progress_file=None,
) -> list[dict]:
    """Fill `score`, `extracted` and `scorer` of every response row (new dicts, input order).

    LSD: token-set F1 of the last boxed answer (no box: 0). ITR: 1/0 keyword presence. LAR: the judge's
    verdict (1 correct / 0 wrong); an unparseable verdict or a failed judge call leaves score None and
    says why in `error`. A failed response keeps score None. A LAR row's `stand_in` is also set when
    the judge is a stand-in, since its score then comes from one.
    """
    by_key = {(item["task"], item["sample_id"]): item for item in items}
    rows = [dict(row) for row in response_rows]
    lar_pending: list[int] = []
    for index, row in enumerate(rows):
        item = by_key.get((row["task"], row["sample_id"]))
        if item is None:
            raise DiagnosticError(f"responses row {index} (sample_id={row['sample_id']}, task={row['task']}): no such item in the diagnostic set")
        row["scorer"] = SCORER[row["task"]]
        if row["status"] != "ok" or row.get("response") is None:
            row["score"], row["extracted"] = None, None
            continue
        if row["task"] == "lsd":
            row["extracted"] = extract_boxed(row["response"])
            row["score"] = token_set_f1(row["extracted"], item["answer"])
        elif row["task"] == "itr":
            found = keyword_present(row["response"], item["answer"])
            row["extracted"] = item["answer"] if found else None
            row["score"] = float(found)
        else:
            lar_pending.append(index)
    if not lar_pending:
        return rows
    if judge is None:
        raise DiagnosticError(f"diagnostics: {len(lar_pending)} LAR response(s) to score but no judge model was given")
    prompts = prompts or PromptBook()
    identity = getattr(judge, "identity", type(judge).__name__)
    judge_stand_in = is_stand_in(judge)
    requests = []
    for index in lar_pending:
        row = rows[index]
        item = by_key[(row["task"], row["sample_id"])]
        seed = derive_seed(0, "lar-judge", row["policy"], row["mode"], row["sample_id"]) % (2**31)
        requests.append(build_lar_judge_request(item["question"], item["answer"], row["response"], prompts, seed=seed))
    for index, verdict in zip(lar_pending, _complete_all(judge, requests, "LAR judge", progress_file)):
        row = rows[index]
        row["scorer"] = identity
        row["stand_in"] = bool(row["stand_in"]) or judge_stand_in
        if not verdict.ok:
            row["score"], row["extracted"] = None, None
            row["error"] = _failure(verdict, "judge failed")
            continue
        parsed = parse_lar_verdict(verdict.text)
        if parsed is None:
            row["score"], row["extracted"] = None, None
            row["error"] = f"judge answer unparseable: {verdict.text[:200]!r}"
        else:
            row["score"] = float(parsed)
            row["extracted"] = "correct" if parsed else "wrong"
    return rows


# ---------------------------------------------------------------------------------------------------
# Aggregation


def bootstrap_interval(values: Sequence[float], n_bootstrap: int, rng: np.random.Generator) -> tuple[float | None, float | None]:
    """95% percentile interval of the mean of `values` over `n_bootstrap` resamples (None if undefined)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0 or n_bootstrap == 0:
        return None, None
    draws = rng.integers(0, values.size, size=(n_bootstrap, values.size))
    means = values[draws].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize_diagnostics(rows: Sequence[Mapping], n_bootstrap: int = 1000, seed: int = 0) -> list[dict]:
    """Mean score in percent (0-100) per (policy, task, mode), rows of schemas.DIAGNOSTIC_SUMMARY.

    The mean is over the rows that have a score; `n` counts them and `n_failed` counts the rows
    without one (failed responses, failed or unparseable judging), so a failure never hides as a 0.
    """
    groups: dict[tuple[str, str, str], list[Mapping]] = {}
    for row in rows:
        groups.setdefault((row["policy"], row["task"], row["mode"]), []).append(row)
    summary = []
    for (policy, task, mode), group in sorted(groups.items()):
        scores = [float(r["score"]) * 100.0 for r in group if r.get("score") is not None]
        rng = rng_for(seed, "diagnostics-bootstrap", policy, task, mode)
        low, high = bootstrap_interval(scores, n_bootstrap, rng)
        summary.append({
            "policy": policy,
            "task": task,
            "mode": mode,
            "score": float(np.mean(scores)) if scores else None,
            "score_low": low,
            "score_high": high,
            "n": len(scores),
            "n_failed": len(group) - len(scores),
            "scorer": ", ".join(sorted({str(r["scorer"]) for r in group})),
            "model_identity": ", ".join(sorted({str(r["model_identity"]) for r in group})),
            "stand_in": any(bool(r["stand_in"]) for r in group),
        })
    return summary


def response_failures(rows: list[dict]) -> FailureReport:
    """Failed model calls among a diagnose job's rows (see `DiagnosticSettings.max_failure_rate`). An
    answer without a readable answer is not a failure: it is scored (that is what LSD measures)."""
    return failure_report(rows, "diagnostic responses", reason=lambda row: row.get("error"))

