"""Facts-first content: short, objective, checkable facts about a concept, drawn reproducibly.

Stage 5 writes every dialogue *from* a handful of facts (where and when the user saw the concept,
something that happened to it, a habit, what it was doing), so that the questions of stage 6 have a
known answer. Places, streets and people's names are fictional (Faker, seeded); events, habits and
actions come from the word lists below, one set per concept category, because a mug does not jog and
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
import unicodedata

from covip.seeding import derive_seed, pyrandom_for

FACT_KINDS = ("place", "date", "event", "habit", "action")
CATEGORIES = ("person", "animal", "object", "place")

# Dates are drawn from a fixed window so a rerun with the same seed gives the same date whatever the
# day it runs on.
DATE_FIRST = dt.date(2022, 1, 1)
DATE_LAST = dt.date(2025, 12, 31)

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)

# Where the user came across a person, animal or object. Slots are filled from Faker (seeded).
_ENCOUNTER_PLACES = (
    "at {last} Park in {city}",
    "at the {street} farmers' market",
    "at the {last} Cafe on {street}",
    "outside the {city} train station",
    "at {last} Beach",
    "at the {city} botanical garden",
    "at the corner of {street} and {street2}",
    "in the lobby of the {city} public library",
    "at the {last} community center",
    "on the pier at {last} Harbor",
    "at the {city} flea market",
    "by the fountain in {last} Square",
)

# Where a place concept is.
_LOCATIONS = (
    "on {street} in {city}",
    "next to the {city} train station",
    "beside {last} Lake",
    "at the end of {street}",
    "two blocks from {last} Square",
    "on the north side of {city}",
    "across the road from the {last} bakery",
    "behind the {city} town hall",
)

_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "person": {
        "event": (
            "won the pie contest at the {city} summer fair",
            "ran the {city} half marathon",
            "gave a speech at the {last} family reunion",
            "opened a bakery on {street}",
            "played drums at the {street} block party",
            "adopted a cat named {first}",
            "moved into an apartment on {street}",
            "started a job at the {city} public library",
            "sang karaoke at the {last} wedding",
            "finished a pottery course at the {city} arts center",
            "climbed {last} Peak with a hiking club",
            "hosted a board-game night for {n} friends",
        ),
        "habit": (
            "only drinks green tea",
            "jogs along {street} every morning",
            "reads a mystery novel every Sunday",
            "always carries a red umbrella",
            "buys flowers at the {city} market every {weekday}",
            "never eats breakfast before ten",
            "plays chess in {last} Park on {weekday}s",
            "writes letters instead of sending texts",
            "swims {n} laps at the {city} pool every evening",
            "wears a yellow scarf in every season",
            "bakes sourdough bread on {weekday}s",
            "cycles to work along {street}",
        ),
        "action": (
            "was repairing a bicycle tire",
            "was painting a mural on {street}",
            "was feeding ducks at {last} Pond",
            "was carrying a stack of vinyl records",
            "was practicing the violin on a balcony",
            "was buying oranges at a fruit stand",
            "was teaching a child to fly a kite",
            "was waiting for the bus on {street}",
            "was sketching the {city} clock tower",
            "was planting tomatoes in a community garden",
            "was juggling three tennis balls",
            "was reading a map upside down",
        ),
    },
    "animal": {
        "event": (
            "won a ribbon at the {city} pet show",
            "was adopted from the {city} animal shelter",
            "got lost for a night near {last} Creek",
            "learned to open the back door",
            "had a front paw bandaged at the {last} vet clinic",
            "chased a deer through the {last} orchard",
            "swam across {last} Lake",
            "met a goat at the {city} petting farm",
            "celebrated a birthday with a tuna cake",
            "rode in a canoe on the {last} River",
            "appeared in a photo in the {city} newspaper",
            "found a lost glove in {last} Park",
        ),
        "habit": (
            "only eats from a blue ceramic bowl",
            "sleeps on the windowsill every afternoon",
            "hides under the porch during thunderstorms",
            "naps in the laundry basket",
            "waits by the front door at six every evening",
            "refuses to walk past the {street} fountain",
            "steals socks from the hallway",
            "drinks only from the bathroom tap",
            "sits on the fence post every morning",
            "follows the mail carrier along {street}",
            "sneezes whenever someone opens the pepper jar",
            "carries a rubber duck to bed",
        ),
        "action": (
            "was rolling in fresh snow",
            "was napping in a cardboard box",
            "was splashing in a puddle on {street}",
            "was chewing a pine cone",
            "was watching pigeons from the balcony",
            "was digging under the {last} oak tree",
            "was sniffing a patch of lavender",
            "was curled up beside the fireplace",
            "was stalking a moth in the garden",
            "was chasing a red kite at {last} Beach",
            "was hiding inside a shopping bag",
            "was sunbathing on the stone steps",
        ),
    },
    "object": {
        "event": (
            "was bought at the {last} estate sale",
            "was a housewarming gift from {first}",
            "was fixed at the {city} repair cafe",
            "was found in the attic of a house on {street}",
            "won second place at the {city} craft fair",
            "was shipped from a workshop in {city}",
            "survived a fall down the stairs without a scratch",
            "was borrowed by {first} for a week",
            "was repainted green in {month}",
            "was left behind on a train to {city}",
            "was raffled off at the {last} school fundraiser",
            "was carried on a hiking trip up {last} Peak",
        ),
        "habit": (
            "is only used for Sunday pancakes",
            "always sits on the kitchen windowsill",
            "gets packed for every camping trip",
            "is kept in the top drawer of the desk",
            "is polished every {weekday}",
            "is used only on rainy days",
            "goes to the {city} office every Monday",
            "is kept next to the front door",
            "is lent to {first} every summer",
            "is wrapped in a wool blanket at night",
            "is washed by hand after every use",
            "hangs on a hook above the workbench",
        ),
        "action": (
            "was being repainted in the garage",
            "was sitting in a pawn shop window on {street}",
            "was drying on the balcony railing",
            "was on loan to a neighbor for a picnic",
            "was packed in a moving box",
            "was on display at the {city} library",
            "was lying on a bench in {last} Park",
            "was being cleaned after a muddy hike",
            "was wrapped as a birthday present",
            "was propping open the kitchen door",
            "was being photographed for a listing",
            "was charging on the hallway shelf",
        ),
    },
    "place": {
        "event": (
            "hosted a jazz night for {big} guests",
            "held a lantern festival",
            "reopened after a flood",
            "was the venue for the {last} wedding",
            "held a farmers' market",
            "hosted the {city} chess championship",
            "was featured in the {city} newspaper",
            "held a charity concert for the {last} school",
            "got a new mural painted by {first}",
            "hosted a kite-flying contest",
            "was closed for a week of repairs",
            "held a midnight movie screening",
        ),
        "habit": (
            "is crowded every Saturday morning",
            "closes early on {weekday}s",
            "smells of fresh bread every morning",
            "has live music every Friday night",
            "is lit with paper lanterns at night",
            "fills up with cyclists on Sundays",
            "opens at five in the morning",
            "hosts a book swap every {weekday}",
            "has a queue out the door at lunchtime",
            "rings a bell every hour",
            "is quiet on {weekday} afternoons",
            "gets foggy every evening",
        ),
        "action": (
            "was being renovated",
            "was covered in snow",
            "was decorated with string lights",
            "was hosting a street-food fair",
            "was full of schoolchildren on a field trip",
            "was being used as a film set",
            "was flooded with spring rain",
            "was packed with marathon runners",
            "was holding a yoga class on the lawn",
            "was getting a fresh coat of paint",
            "was hosting a wedding photo shoot",
            "was lit up for a holiday parade",
        ),
    },
}


# Concept pools from a user's folder or manifest may use their own category words; these map onto
# the four families that have word lists. Anything else is treated as an object (the most neutral
# lists: things that are bought, kept, lent and repainted).
_FAMILY_SYNONYMS = {
    "person": ("people", "persons", "human", "humans", "face", "faces", "man", "woman", "child", "portrait"),
    "animal": ("animals", "pet", "pets", "dog", "dogs", "cat", "cats", "bird", "birds", "horse", "wildlife"),
    "place": ("places", "landmark", "landmarks", "building", "buildings", "scene", "scenes", "location", "locations"),
    "object": ("objects", "thing", "things", "item", "items", "toy", "toys", "vehicle", "vehicles"),
}


def fact_family(category: str) -> str:
    """The word-list family for a concept category: person, animal, place or object (the fallback)."""
    category = category.strip().lower()
    if category in CATEGORIES:
        return category
    for family, words in _FAMILY_SYNONYMS.items():
        if category in words:
            return family
    return "object"


class FactError(ValueError):
    """A concept row cannot have facts drawn for it (missing or unknown category)."""


# Faker is slow to construct and not safe to share between threads, so each worker thread keeps
# one and reseeds it for every draw.
_local = threading.local()


def _faker():
    faker = getattr(_local, "faker", None)
    if faker is None:
        from faker import Faker

        faker = _local.faker = Faker("en_US")
    return faker


def _slots(rnd: random.Random) -> dict[str, str]:
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
        "weekday": rnd.choice(WEEKDAYS),
        "month": rnd.choice(MONTHS),
    }


def _templates(kind: str, category: str) -> tuple[str, ...]:
    if kind not in FACT_KINDS:
        raise FactError(f"unknown fact kind '{kind}' (known: {', '.join(FACT_KINDS)})")
    if category not in CATEGORIES:
        raise FactError(f"unknown concept category '{category}' (known: {', '.join(CATEGORIES)})")
    if kind == "date":
        return ("on {date}",)
    if kind == "place":
        return _LOCATIONS if category == "place" else _ENCOUNTER_PLACES
    return _WORDS[category][kind]


def _fill(template: str, rnd: random.Random) -> str:
    if template == "on {date}":
        day = DATE_FIRST + dt.timedelta(days=rnd.randrange((DATE_LAST - DATE_FIRST).days + 1))
        return f"on {day.isoformat()}"
    return template.format(**_slots(rnd))


def make_fact_text(kind: str, category: str, rnd: random.Random) -> str:
    """One fact text of `kind` for a concept of `category`, drawn from `rnd` (and Faker, seeded from it)."""
    return _fill(rnd.choice(_templates(kind, category)), rnd)


def normalize_text(text: str) -> str:
    """Case-, space- and punctuation-insensitive form, for duplicate checks (Unicode-aware)."""
    return " ".join(re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).casefold()))


def sample_facts(concept: dict, seed: int, sample_id: str, n: int, kinds: tuple[str, ...] = FACT_KINDS) -> list[dict]:
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
    category = fact_family(raw_category)
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
            text = make_fact_text(kind, category, rnd)
            if normalize_text(text) not in seen:
                break
        seen.add(normalize_text(text))
        facts.append({"kind": kind, "text": text})
    return facts


def alternative_fact_texts(kind: str, category: str, seed: int, key: object, k: int, exclude: list[str]) -> list[str]:
    """`k` distinct fact texts of the same kind and category, none equal to any text in `exclude`.

    Used to build plausible wrong options (distractors) for a question about a fact. Each comes from
    a different template than the excluded texts and each other where the lists allow, so a wrong
    option never differs from the right one by a single proper noun.
    """
    rnd = random.Random(derive_seed(seed, "alternatives", kind, category, key))
    templates = list(_templates(kind, category))
    used = {t for t in templates for text in exclude if _template_regex(t).fullmatch(text)}
    seen = {normalize_text(text) for text in exclude}
    out: list[str] = []
    for _ in range(200):
        if len(out) == k:
            break
        fresh = [t for t in templates if t not in used] or templates
        template = rnd.choice(fresh)
        text = _fill(template, rnd)
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


# (category, compiled template) for every template that only one category uses, so a fact text
# tells which category it was drawn for.
_CATEGORY_TEMPLATES = [
    (category, _template_regex(template))
    for category, kinds in _WORDS.items()
    for templates in kinds.values()
    for template in templates
] + [("place", _template_regex(template)) for template in _LOCATIONS]


def infer_category(facts: list[dict]) -> str | None:
    """The concept category whose word lists produced these facts (majority vote), or None.

    Stage 6 sees only a dialogue's facts, not its concept row; the offline writer uses this to draw
    distractors from the right lists.
    """
    votes: dict[str, int] = {}
    for fact in facts:
        for category, pattern in _CATEGORY_TEMPLATES:
            if pattern.fullmatch(fact.get("text", "")):
                votes[category] = votes.get(category, 0) + 1
    return max(votes, key=lambda c: (votes[c], -CATEGORIES.index(c))) if votes else None


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
