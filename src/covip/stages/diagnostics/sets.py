"""Generating an LSD / LAR / ITR set from the concept pool (see the package docstring for the design).

The dialogue lines are benchmark content (`covip.content.diagnostic_lines`, replaceable with the
config's `content.diagnostic_lines`); the questions come from the prompt file
`diagnostic_questions`; every image is composited by `covip.content.scenes.SceneComposer`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence

from tqdm import tqdm

from covip.content.diagnostic_lines import DialogueLines
from covip.content.scenes import SceneComposer
from covip.core.seeding import derive_seed, pyrandom_for
from covip.core.text import ARTICLES, words
from covip.prompts import PromptBook
from covip.stages.diagnostics.settings import QUESTIONS_PROMPT, TASKS, DiagnosticError, DiagnosticSettings

DATE_STYLES = ("iso", "long")


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
    return set(words(text)) - ARTICLES


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


def _dialogue(rng, lines: DialogueLines, name: str, place: str, date: str, extra: tuple[str, str] | None) -> str:
    opener = rng.choice(lines.openers)
    middle = rng.choice(lines.small_talk)
    closer = extra or rng.choice(lines.closers)
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
    content_path: str | None = None,
) -> list[dict]:
    """Generate `settings.items_per_task` items of `task` ('lsd' | 'lar' | 'itr'); rows of schemas.DIAGNOSTIC_SET.

    Deterministic from (seed, task, sample id): an item never depends on how many others are built.
    """
    if task not in TASKS:
        raise DiagnosticError(f"diagnostics: unknown task {task!r}; choose from {list(TASKS)}")
    prompts = prompts or PromptBook()
    question = _question(prompts, task)
    pool = _people_pool(concepts_rows, settings)
    composer = SceneComposer({"defect_rate": 0.0, "image_size": settings.image_size}, where="diagnostic scenes")
    lines = DialogueLines.load(content_path)
    rows = []
    for index in tqdm(range(settings.items_per_task), desc=f"diagnostic set {task}", file=progress_file, mininterval=1.0, ascii=True):
        sample_id = f"{task}{index:04d}"
        rows.append(_build_item(task, sample_id, pool, settings, seed, question, composer, lines))
    return rows


def _build_item(task, sample_id, pool, settings, seed, question, composer, lines) -> dict:
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
    used_actions = rng.sample(range(len(lines.actions)), n) if task == "lar" else []
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
            line = rng.choice(lines.action_lines)
            action = lines.actions[used_actions[k]]
            # The assistant repeats the action back, so "my" becomes "your" in its line.
            entry["extra"] = (line[0].replace("{action}", action), line[1].replace("{action}", _second_person(action)))
            if is_answer:
                answer = action
        elif task == "itr" and (is_answer or (settings.distractors and not entry["target"])):
            line = rng.choice(lines.instruction_lines)
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
        dialogues.append(_dialogue(rng, lines, name_of[concept["concept_id"]], entry["place"], date, entry["extra"]))
        images.append(_composite(composer, concept, derive_seed(seed, "diagnostics-context", task, sample_id, position), settings))
    query = _composite(composer, target, derive_seed(seed, "diagnostics-query", task, sample_id), settings)
    return {
        "sample_id": sample_id,
        "task": task,
        "images_context": [{"bytes": image, "path": None} for image in images],
        "dialogues_context": dialogues,
        "query_image": {"bytes": query, "path": None},
        "question": question,
        "answer": answer,
        "target_index": order.index(mentions - 1),
        "last_action": answer if task == "lar" else None,  # the hub's LAR column; here the action is the answer
    }


def _composite(composer: SceneComposer, concept: Mapping, seed: int, settings: DiagnosticSettings) -> bytes:
    try:
        image, _, _ = composer.compose([concept["image"]], [concept["concept_id"]], settings.image_size, seed % (2**63))
    except Exception as error:  # noqa: BLE001 - named with the concept, as a set error
        raise DiagnosticError(f"diagnostics: compositing concept {concept['concept_id']} failed: {error}") from error
    return image
