"""Facts-first content: short, objective, checkable facts about a concept, drawn reproducibly.

Stage 5 writes every dialogue *from* a handful of facts (where and when the user saw the concept,
something that happened to it, a habit, what it was doing), so that the questions of stage 6 have a
known answer. Places, streets and people's names are fictional (Faker, seeded); events, habits and
actions come from the word lists in facts.yaml, one set per concept category, because a mug does not jog and
a person is not repainted.

A fact is `{"kind": ..., "text": ...}` where `text` is a predicate fragment that completes a sentence
about the concept ("only drinks green tea", "on 2025-10-11", "at Ryan Park in New Melanie"). It is
kept short so it can also serve, almost unchanged, as a multiple-choice option.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import re
import threading
from dataclasses import dataclass, field

from covip.content.book import load_content
from covip.core.seeding import derive_seed, pyrandom_for
from covip.core.text import normalize_text

FACT_KINDS = ("place", "date", "event", "habit", "action")
CATEGORIES = ("person", "animal", "object", "place")

# Dates are drawn from a fixed window so a rerun with the same seed gives the same date whatever the
# day it runs on.
DATE_FIRST = dt.date(2022, 1, 1)
DATE_LAST = dt.date(2025, 12, 31)


class FactError(ValueError):
    """A concept row cannot have facts drawn for it, or a word list is malformed."""


@dataclass(frozen=True)
class FactLists:
    """The word lists of facts.yaml (or a user's file of the same shape)."""

    encounter_places: tuple[str, ...]  # where the user came across a person, animal or object
    locations: tuple[str, ...]  # where a place concept is
    words: dict[str, dict[str, tuple[str, ...]]]  # category -> kind -> templates (event, habit, action)
    family_synonyms: dict[str, tuple[str, ...]]  # a user's category words -> one of CATEGORIES
    weekdays: tuple[str, ...]
    months: tuple[str, ...]
    _regexes: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_data(cls, data: dict, where: str = "facts") -> "FactLists":
        def strings(value, at):
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
                raise FactError(f"{where}: '{at}' must be a non-empty list of strings")
            return tuple(value)

        missing = [key for key in ("encounter_places", "locations", "words", "family_synonyms", "weekdays", "months")
                   if key not in (data or {})]
        if missing:
            raise FactError(f"{where}: missing key(s) {missing}")
        words = {}
        for category in CATEGORIES:
            kinds = data["words"].get(category) if isinstance(data["words"], dict) else None
            if not isinstance(kinds, dict):
                raise FactError(f"{where}: 'words' needs the lists of category '{category}'")
            words[category] = {kind: strings(kinds.get(kind), f"words.{category}.{kind}") for kind in ("event", "habit", "action")}
        return cls(
            encounter_places=strings(data["encounter_places"], "encounter_places"),
            locations=strings(data["locations"], "locations"),
            words=words,
            family_synonyms={family: strings(synonyms, f"family_synonyms.{family}")
                             for family, synonyms in (data["family_synonyms"] or {}).items()},
            weekdays=strings(data["weekdays"], "weekdays"),
            months=strings(data["months"], "months"),
        )

    def templates(self, kind: str, category: str) -> tuple[str, ...]:
        if kind not in FACT_KINDS:
            raise FactError(f"unknown fact kind '{kind}' (known: {', '.join(FACT_KINDS)})")
        if category not in CATEGORIES:
            raise FactError(f"unknown concept category '{category}' (known: {', '.join(CATEGORIES)})")
        if kind == "date":
            return ("on {date}",)
        if kind == "place":
            return self.locations if category == "place" else self.encounter_places
        return self.words[category][kind]

    def category_templates(self) -> list[tuple[str, re.Pattern]]:
        """(category, compiled template) for every template that only one category uses, so a fact
        text tells which category it was drawn for."""
        if "categories" not in self._regexes:
            self._regexes["categories"] = [
                (category, _template_regex(template))
                for category, kinds in self.words.items()
                for templates in kinds.values()
                for template in templates
            ] + [("place", _template_regex(template)) for template in self.locations]
        return self._regexes["categories"]


@functools.lru_cache(maxsize=None)
def fact_lists(path: str | None = None) -> FactLists:
    """The packaged word lists, or those of the YAML file at `path` (the config's `content.facts`)."""
    return FactLists.from_data(load_content("facts", path), where=path or "facts.yaml")


def _lists(lists: FactLists | None) -> FactLists:
    return lists if lists is not None else fact_lists()



def fact_family(category: str, lists: FactLists | None = None) -> str:
    """The word-list family for a concept category: person, animal, place or object (the fallback)."""
    category = category.strip().lower()
    if category in CATEGORIES:
        return category
    for family, words in _lists(lists).family_synonyms.items():
        if category in words:
            return family
    return "object"


# Faker is slow to construct and not safe to share between threads, so each worker thread keeps
# one and reseeds it for every draw.
_local = threading.local()


def _faker():
    faker = getattr(_local, "faker", None)
    if faker is None:
        from faker import Faker

        faker = _local.faker = Faker("en_US")
    return faker


def _slots(rnd: random.Random, lists: FactLists) -> dict[str, str]:
    faker = _faker()
    faker.seed_instance(rnd.getrandbits(63))
    streets = [faker.street_name() for _ in range(2)]
    if streets[0] == streets[1]:
        streets[1] = faker.street_name() + " Lane"
    return {
        "city": faker.city(),
        "street": streets[0],
        "street2": streets[1],
        "last": faker.last_name(),
        "first": faker.first_name(),
        "n": str(rnd.randint(3, 12)),
        "big": str(rnd.randrange(40, 400, 10)),
        "weekday": rnd.choice(lists.weekdays),
        "month": rnd.choice(lists.months),
    }


def _fill(template: str, rnd: random.Random, lists: FactLists) -> str:
    if template == "on {date}":
        day = DATE_FIRST + dt.timedelta(days=rnd.randrange((DATE_LAST - DATE_FIRST).days + 1))
        return f"on {day.isoformat()}"
    return template.format(**_slots(rnd, lists))


def make_fact_text(kind: str, category: str, rnd: random.Random, lists: FactLists | None = None) -> str:
    """One fact text of `kind` for a concept of `category`, drawn from `rnd` (and Faker, seeded from it)."""
    lists = _lists(lists)
    return _fill(rnd.choice(lists.templates(kind, category)), rnd, lists)


def sample_facts(concept: dict, seed: int, sample_id: str, n: int, kinds: tuple[str, ...] = FACT_KINDS,
                 lists: FactLists | None = None) -> list[dict]:
    """Draw `n` facts about `concept` for one sample: distinct kinds while there are enough, distinct texts.

    The word lists follow the concept's category family (see fact_family; unknown categories use the
    object lists).

    The draw depends only on (seed, sample_id, concept_id), so the same concept gets different facts
    in different samples and the same facts on every rerun, in any processing order.
    """
    concept_id = concept.get("concept_id")
    raw_category = concept.get("category")
    if not isinstance(raw_category, str) or not raw_category.strip():
        raise FactError(f"concept {concept_id!r} field 'category' is empty or not a string: {raw_category!r}")
    lists = _lists(lists)
    category = fact_family(raw_category, lists)
    if n < 1:
        raise FactError(f"n must be at least 1, got {n}")
    unknown = [k for k in kinds if k not in FACT_KINDS]
    if not kinds or unknown:
        raise FactError(f"fact kinds {list(kinds)} must be a non-empty subset of {list(FACT_KINDS)}")
    rnd = pyrandom_for(seed, "facts", sample_id, concept_id)
    chosen = rnd.sample(list(kinds), min(n, len(kinds)))
    while len(chosen) < n:  # more facts than kinds: repeat kinds, texts stay distinct below
        chosen.append(rnd.choice(list(kinds)))
    facts: list[dict] = []
    seen: set[str] = set()
    for kind in chosen:
        for _ in range(50):
            text = make_fact_text(kind, category, rnd, lists)
            if normalize_text(text) not in seen:
                break
        seen.add(normalize_text(text))
        facts.append({"kind": kind, "text": text})
    return facts


def alternative_fact_texts(kind: str, category: str, seed: int, key: object, k: int, exclude: list[str],
                           lists: FactLists | None = None) -> list[str]:
    """`k` distinct fact texts of the same kind and category, none equal to any text in `exclude`.

    Used to build plausible wrong options (distractors) for a question about a fact. Each comes from
    a different template than the excluded texts and each other where the lists allow, so a wrong
    option never differs from the right one by a single proper noun.
    """
    rnd = random.Random(derive_seed(seed, "alternatives", kind, category, key))
    lists = _lists(lists)
    templates = list(lists.templates(kind, category))
    used = {t for t in templates for text in exclude if _template_regex(t).fullmatch(text)}
    seen = {normalize_text(text) for text in exclude}
    out: list[str] = []
    for _ in range(200):
        if len(out) == k:
            break
        fresh = [t for t in templates if t not in used] or templates
        template = rnd.choice(fresh)
        text = _fill(template, rnd, lists)
        if normalize_text(text) not in seen:
            seen.add(normalize_text(text))
            used.add(template)
            out.append(text)
    if len(out) < k:
        raise FactError(f"could not draw {k} distinct alternatives of kind '{kind}' for category '{category}'")
    return out


@functools.lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    return re.compile("".join(".+?" if part.startswith("{") else re.escape(part) for part in parts))


def infer_category(facts: list[dict], lists: FactLists | None = None) -> str | None:
    """The concept category whose word lists produced these facts (majority vote), or None.

    Stage 6 sees only a dialogue's facts, not its concept row; the offline writer uses this to draw
    distractors from the right lists.
    """
    votes: dict[str, int] = {}
    for fact in facts:
        for category, pattern in _lists(lists).category_templates():
            if pattern.fullmatch(fact.get("text", "")):
                votes[category] = votes.get(category, 0) + 1
    return max(votes, key=lambda c: (votes[c], -CATEGORIES.index(c))) if votes else None


def format_facts(facts: list[dict]) -> str:
    """Facts as prompt lines: '- (kind) text' (the dialogue and question writers read them so)."""
    return "\n".join(f"- ({fact['kind']}) {fact['text']}" for fact in facts)


def fake_first_names(seed: int, k: int, exclude: list[str]) -> list[str]:
    """`k` distinct fictional first names (Faker, seeded), none equal to a name in `exclude`."""
    faker = _faker()
    faker.seed_instance(seed)
    taken = {name.lower() for name in exclude}
    out: list[str] = []
    for _ in range(200):
        if len(out) == k:
            break
        name = faker.first_name()
        if name.lower() not in taken:
            taken.add(name.lower())
            out.append(name)
    return out
