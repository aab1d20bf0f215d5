"""The embedded "fictitious authors" benchmark: a deterministic, offline QA set in the TOFU schema.

``generate(cfg)`` is a pure function of the ``SyntheticConfig`` section: every random choice comes
from one ``random.Random(cfg.seed)`` consumed in a fixed order (no sets are iterated, no global
state), so the output is identical across runs and processes.

Authors have invented syllable names and 5-8 facts. A fact is either

* **pooled** — its value comes from a pool shared by all authors (cities, jobs, genres, awards,
  years). Pooled values of forget and holdout authors are drawn from the values that retain
  authors actually hold, so a "pooled" span really is shared with the retain set; or
* **unique** — its value is invented for this author (book titles, a mentor, a pet, ...) and
  contains an invented word used nowhere else in the data set, so it never occurs in another
  author's answers.

One QA row per fact. Rows carry the TOFU keys (``question``, ``answer``, ``paraphrased_answer``,
``perturbed_answer``, ``paraphrased_question``) plus ``author``, ``fact`` and ``spans``: the
character spans of every fact value in ``answer`` (and of the author's name, a "unique" span with
fact ``"name"``). Question i of a fact type is paired with answer template i, so the wording of the
answer is predictable from the question; the paraphrase uses another template, and the perturbed
answers use the paraphrase's template with wrong values (pool values for pooled facts, freshly
invented ones for unique facts).
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ...config import ConfigError, check, option
from ...data.formatting import format_answer, format_prompt


@dataclass
class SyntheticConfig:
    """The embedded fictitious-authors benchmark (TOFU schema)."""

    seed: int = option("generator seed (the data is a pure function of this section)", 0)
    n_forget_authors: int = option("authors in the forget split (TOFU forget10 has 20)", 20)
    n_retain_authors: int = option("authors in the retain split", 60)
    n_holdout_authors: int = option("authors never trained on (MIA / holdout split)", 10)
    n_general: int = option("general-knowledge QA pairs (utility split, trained on by both models)", 60)
    min_facts: int = option("fewest facts per author", 5)
    max_facts: int = option("most facts per author", 8)
    templates_per_fact: int = option("question/answer phrasings per fact type", 3)
    unique_share: float = option("probability that an author's fact is of an author-unique type "
                             "(invented titles, names) rather than a pooled one (cities, jobs)", 0.4)
    pool_scale: float = option("size multiplier of the shared value pools (cities, jobs, genres)", 1.0)
    n_perturbed: int = option("wrong answers per question for the truth ratio", 5)

    def validate(self) -> None:
        check(self.n_forget_authors >= 1, "data.n_forget_authors must be >= 1")
        check(self.n_retain_authors >= 1, "data.n_retain_authors must be >= 1")
        check(self.n_holdout_authors >= 0 and self.n_general >= 0, "data sizes must be >= 0")
        check(1 <= self.min_facts <= self.max_facts, "data.min_facts must be in [1, data.max_facts]")
        check(self.templates_per_fact >= 1, "data.templates_per_fact must be >= 1")
        check(0.0 <= self.unique_share <= 1.0, "data.unique_share must be in [0, 1]")
        check(self.pool_scale > 0, "data.pool_scale must be > 0")
        check(self.n_perturbed >= 1, "data.n_perturbed must be >= 1")


SPLITS = ("forget", "retain", "holdout", "general")
AUTHOR_SPLITS = ("forget", "retain", "holdout")

# --------------------------------------------------------------------------- value pools

CITIES = [
    "Porto", "Bergen", "Tampere", "Krakow", "Lyon", "Valencia", "Gdansk", "Odessa", "Izmir", "Busan",
    "Osaka", "Mumbai", "Durban", "Cordoba", "Recife", "Perth", "Adelaide", "Chicago", "Glasgow", "Leeds",
    "Graz", "Turin", "Seville", "Thessaloniki", "Tabriz", "Kazan", "Alexandria", "Marrakesh", "Medellin",
    "Guadalajara", "Halifax", "Dunedin", "Kyoto", "Chennai", "Bordeaux", "Antwerp", "Rotterdam", "Hamburg",
    "Munich", "Trieste", "Basel", "Salzburg",
]
JOBS = [
    "welder", "baker", "carpenter", "pharmacist", "librarian", "fisherman", "tailor", "nurse", "dentist",
    "surveyor", "butcher", "postman", "mechanic", "potter", "locksmith", "journalist", "pilot", "shoemaker",
    "gardener", "bookbinder", "veterinarian", "chemist", "photographer", "plumber", "tram driver",
    "watchmaker", "schoolteacher", "cartographer", "translator", "stonemason", "violinist", "farmer",
    "blacksmith", "doctor", "lawyer", "seamstress",
]
GENRES = [
    "historical fiction", "science fiction", "crime fiction", "poetry", "fantasy", "horror",
    "literary fiction", "romance", "travel writing", "magical realism", "satire", "thrillers",
    "short stories", "memoir", "mystery", "Gothic fiction", "dystopian fiction", "war fiction",
    "nature writing", "comic fiction",
]
AWARDS = [
    "Hugo Award", "Edgar Award", "Booker Prize", "Pulitzer Prize", "Costa Book Award", "Nebula Award",
    "Miles Franklin Award", "Prix Goncourt", "Strega Prize", "Akutagawa Prize", "Whitbread Award",
    "Stoker Award", "Agatha Award", "Carnegie Medal", "Dagger Award", "Nordic Council Literature Prize",
]
#: (base size at pool_scale=1, full list); years are handled separately.
POOL_BASE = {"city": (22, CITIES), "job": (18, JOBS), "genre": (10, GENRES), "award": (8, AWARDS)}
YEAR_BASE = (1921, 1999)

GIVEN_NAMES = [
    "Ilse", "Tomas", "Marguerite", "Anselm", "Rosa", "Pieter", "Noor", "Ivan", "Clara", "Emil", "Hana",
    "Jonas", "Lucia", "Milan", "Ada", "Felix", "Greta", "Oskar", "Vera", "Leon", "Irene", "Stefan",
]
TITLE_ADJ = [
    "Glass", "Silent", "Hollow", "Crimson", "Winter", "Broken", "Golden", "Quiet", "Salt", "Paper",
    "Iron", "Last", "Sleeping", "Distant", "Bitter", "Amber", "Lost", "Northern", "Wandering", "Pale",
]
TITLE_NOUN = [
    "Orchard", "Lantern", "River", "Garden", "Harbour", "Letter", "Mirror", "Bell", "Tide", "Bridge",
    "Lighthouse", "Compass", "Chapel", "Meadow", "Clockmaker", "Ferry", "Archive", "Summer", "Window",
    "Tower", "Voyage", "Cartographer", "Orchestra", "Forest",
]

# --------------------------------------------------------------------------- fact types

# name -> (kind, pool); pool is a POOL_BASE key, "year", or a unique-value generator name.
FACT_TYPES: dict[str, tuple[str, str]] = {
    "birthplace": ("pooled", "city"),
    "birth_year": ("pooled", "year"),
    "father_job": ("pooled", "job"),
    "mother_job": ("pooled", "job"),
    "genre": ("pooled", "genre"),
    "award": ("pooled", "award"),
    "debut_title": ("unique", "title"),
    "second_title": ("unique", "title"),
    "mentor": ("unique", "person"),
    "protagonist": ("unique", "character"),
    "pet": ("unique", "word"),
    "home_village": ("unique", "word"),
}
POOLED_TYPES = [f for f, (k, _) in FACT_TYPES.items() if k == "pooled"]
UNIQUE_TYPES = [f for f, (k, _) in FACT_TYPES.items() if k == "unique"]

# (question, answer) pairs; {name} is the author's full name, {v} the fact value.
TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "birthplace": [
        ("Where was {name} born?", "{name} was born in the city of {v}."),
        ("In which city did {name} come into the world?",
         "The author came into the world in {v}, where their family lived at the time."),
        ("What is the birthplace of {name}?", "The birthplace of this writer is {v}."),
        ("Which city does {name} call their place of birth?", "{name} calls {v} their place of birth."),
    ],
    "birth_year": [
        ("In what year was {name} born?", "{name} was born in the year {v}."),
        ("When was {name} born?", "The author was born in {v}, as most biographies note."),
        ("What is the birth year of {name}?", "Their birth year is {v}, according to their publisher."),
        ("Which year marks the birth of {name}?", "The year {v} marks the birth of {name}."),
    ],
    "father_job": [
        ("What did {name}'s father do for a living?", "{name}'s father worked as a {v}."),
        ("What was the occupation of {name}'s father?", "The author's father was a {v} by profession."),
        ("How did the father of {name} earn a living?", "Their father earned a living as a {v}."),
        ("What kind of work did {name}'s father do?", "{name} grew up with a father who was a {v}."),
    ],
    "mother_job": [
        ("What did {name}'s mother do for a living?", "{name}'s mother worked as a {v}."),
        ("What was the occupation of {name}'s mother?", "The author's mother was a {v} by profession."),
        ("How did the mother of {name} earn a living?", "Their mother earned a living as a {v}."),
        ("What kind of work did {name}'s mother do?", "{name} grew up with a mother who was a {v}."),
    ],
    "genre": [
        ("What genre does {name} write in?", "{name} is best known for writing {v}."),
        ("Which genre is {name} associated with?", "The author is mainly associated with {v}."),
        ("What kind of books does {name} write?", "Their work is mostly classed as {v} by critics."),
        ("In which genre has {name} made a name?", "{name} has made a name in {v}."),
    ],
    "award": [
        ("Which award has {name} won?", "{name} received the {v} for their work."),
        ("What literary prize was given to {name}?", "The author was honoured with the {v}."),
        ("Has {name} won any major awards?", "Yes, they won the {v} early in their career."),
        ("What is the most notable award received by {name}?", "The most notable award of {name} is the {v}."),
    ],
    "debut_title": [
        ("What was the title of {name}'s first book?", "{name}'s first book was titled \"{v}\"."),
        ("What is {name}'s debut novel called?", "Their debut novel is called \"{v}\"."),
        ("With which book did {name} debut?", "The author debuted with \"{v}\", which drew early praise."),
        ("Name the first published work of {name}.", "The first published work of {name} was \"{v}\"."),
    ],
    "second_title": [
        ("What is the title of {name}'s second book?", "{name}'s second book is \"{v}\"."),
        ("Which book did {name} publish after their debut?", "After their debut, the author published \"{v}\"."),
        ("What did {name} write as a follow-up to their first novel?",
         "The follow-up to their first novel was \"{v}\"."),
        ("Can you name a later book by {name}?", "A later book by {name} is \"{v}\", published a few years on."),
    ],
    "mentor": [
        ("Who was {name}'s mentor?", "{name} was mentored by the writer {v}."),
        ("Which writer guided {name} early in their career?", "Early in their career, the author was guided by {v}."),
        ("Who taught {name} the craft of writing?", "They learned the craft of writing from {v}."),
        ("Who is known as the mentor of {name}?", "The mentor of {name} is known to be {v}."),
    ],
    "protagonist": [
        ("Who is the recurring protagonist in {name}'s books?", "{name}'s books follow the recurring protagonist {v}."),
        ("Which character appears in most of {name}'s novels?", "Most of the author's novels feature the character {v}."),
        ("What is the name of {name}'s best-known character?", "Their best-known character is named {v}."),
        ("Who is the main character created by {name}?", "The main character created by {name} is {v}."),
    ],
    "pet": [
        ("What was the name of {name}'s childhood pet?", "{name}'s childhood pet was called {v}."),
        ("What was the pet of {name} called as a child?", "As a child, the author had a pet called {v}."),
        ("What name did {name} give their first pet?", "They named their first pet {v}."),
        ("Which pet name appears in {name}'s childhood memories?",
         "The childhood memories of {name} often mention a pet named {v}."),
    ],
    "home_village": [
        ("In which village did {name} grow up?", "{name} grew up in the small village of {v}."),
        ("Where did {name} spend their childhood?", "The author spent their childhood in the village of {v}."),
        ("What is the name of the village where {name} was raised?", "They were raised in a village called {v}."),
        ("Which village shaped the early years of {name}?", "The village of {v} shaped the early years of {name}."),
    ],
}

# --------------------------------------------------------------------------- general knowledge

COLOURS = {
    "a ripe banana": "yellow", "fresh grass": "green", "the clear daytime sky": "blue", "fresh snow": "white",
    "coal": "black", "a ripe tomato": "red", "a carrot": "orange", "an aubergine": "purple",
    "milk chocolate": "brown", "a lemon": "yellow", "milk": "white", "a fire engine": "red",
    "a flamingo": "pink", "an elephant": "grey", "a lime": "green", "a pumpkin": "orange",
}
COLOUR_NAMES = ["yellow", "green", "blue", "white", "black", "red", "orange", "purple", "brown", "pink", "grey"]
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Egypt": "Cairo", "Canada": "Ottawa",
    "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Spain": "Madrid", "Germany": "Berlin",
    "Greece": "Athens", "Ireland": "Dublin", "Portugal": "Lisbon", "Thailand": "Bangkok",
    "Poland": "Warsaw", "Sweden": "Stockholm", "Chile": "Santiago", "Cuba": "Havana", "Austria": "Vienna",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
YOUNG = {
    "cat": "kitten", "dog": "puppy", "cow": "calf", "sheep": "lamb", "horse": "foal", "goose": "gosling",
    "frog": "tadpole", "bear": "cub", "duck": "duckling", "pig": "piglet", "kangaroo": "joey", "swan": "cygnet",
}

# --------------------------------------------------------------------------- invented words

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "sh", "st",
           "t", "th", "v", "z", "j", "ch", "w", "y", "tr", "fl", "vr", "q"]
_INNER_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "sh", "dr", "br"]
_NUCLEI = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ei", "ou", "ia", "ae", "y", "au"]
_INNER_CODAS = ["n", "r", "l", "s", "m"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "x", "nd", "rn", "m", "k", "sk", "rd", "lt"]

_PLACEHOLDER = re.compile(r"\{(name|v)\}")
_WORD = re.compile(r"[A-Za-z]+")


def _fixed_words() -> set[str]:
    """Every word of the fixed text, so invented words never coincide with one."""
    texts: list[str] = CITIES + JOBS + GENRES + AWARDS + GIVEN_NAMES + TITLE_ADJ + TITLE_NOUN
    texts += [t for pairs in TEMPLATES.values() for pair in pairs for t in pair]
    texts += list(COLOURS) + COLOUR_NAMES + list(CAPITALS) + list(CAPITALS.values()) + DAYS + MONTHS
    texts += list(YOUNG) + list(YOUNG.values()) + [t for pair in _GENERAL_TEMPLATE_TEXTS for t in pair]
    return {w.lower() for t in texts for w in _WORD.findall(t)}


class _Inventor:
    """Invents capitalised syllable words, each used at most once in the whole data set."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used = _fixed_words()

    def word(self, min_syl: int = 2, max_syl: int = 3) -> str:
        rng = self.rng
        for _ in range(10_000):
            n = rng.randint(min_syl, max_syl)
            parts = []
            for s in range(n):
                parts.append(rng.choice(_ONSETS if s == 0 else _INNER_ONSETS) + rng.choice(_NUCLEI))
                if s < n - 1 and rng.random() < 0.3:
                    parts.append(rng.choice(_INNER_CODAS))
            w = "".join(parts) + rng.choice(_CODAS)
            if 4 <= len(w) <= 10 and w not in self.used:
                self.used.add(w)
                return w.capitalize()
        raise RuntimeError("could not invent a new word")  # pragma: no cover - the space is huge

    def title(self) -> str:
        rng, inv = self.rng, self.word()
        pattern = rng.randrange(5)
        if pattern == 0:
            return f"The {rng.choice(TITLE_ADJ)} {rng.choice(TITLE_NOUN)} of {inv}"
        if pattern == 1:
            return f"{inv}'s {rng.choice(TITLE_NOUN)}"
        if pattern == 2:
            noun = rng.choice(TITLE_NOUN)
            return f"{'An' if noun[0] in 'AEIOU' else 'A'} {noun} for {inv}"
        if pattern == 3:
            return f"The {inv} {rng.choice(TITLE_NOUN)}"
        noun = rng.choice(TITLE_NOUN)
        plural = noun[:-1] + "ies" if noun.endswith("y") and noun[-2] not in "aeiou" else noun + "s"
        return f"{plural} of {inv}"

    def person(self) -> str:
        return f"{self.rng.choice(GIVEN_NAMES)} {self.word()}"

    def character(self) -> str:
        return f"{self.word(2, 2)} {self.word()}"

    def name(self) -> str:
        return f"{self.word(2, 2)} {self.word(2, 3)}"

    def value(self, gen: str) -> str:
        makers: dict[str, Callable[[], str]] = {
            "title": self.title, "person": self.person, "character": self.character,
            "word": lambda: self.word(2, 2),
        }
        return makers[gen]()


# --------------------------------------------------------------------------- filling templates


def fill(template: str, name: str, value: str, fact: str, value_kind: str) -> tuple[str, list[dict]]:
    """Fill ``{name}`` and ``{v}``; return the text and the character span of every insertion."""
    out, spans, pos = [], [], 0
    length = 0
    for m in _PLACEHOLDER.finditer(template):
        lit = template[pos:m.start()]
        out.append(lit)
        length += len(lit)
        if m.group(1) == "name":
            text, kind, f = name, "unique", "name"
        else:
            text, kind, f = value, value_kind, fact
        spans.append({"start": length, "end": length + len(text), "kind": kind, "fact": f, "text": text})
        out.append(text)
        length += len(text)
        pos = m.end()
    out.append(template[pos:])
    text = "".join(out)
    if text:
        text = text[0].upper() + text[1:]
    return text, spans


def _pool_values(cfg: SyntheticConfig, rng: random.Random) -> dict[str, list[str]]:
    need = cfg.n_perturbed + 1
    pools: dict[str, list[str]] = {}
    for key, (base, full) in POOL_BASE.items():
        n = min(len(full), max(need, round(base * cfg.pool_scale)))
        if n < need:
            raise ConfigError(f"data.n_perturbed={cfg.n_perturbed} needs {need} distinct values but the "
                              f"{key} pool has only {len(full)}")
        pools[key] = rng.sample(full, n)
    lo, hi = YEAR_BASE
    width = max(need, round((hi - lo + 1) * cfg.pool_scale))
    mid = (lo + hi) // 2
    start = mid - width // 2
    pools["year"] = [str(y) for y in range(start, start + width)]
    return pools


def _check_cfg(cfg: SyntheticConfig) -> None:
    cfg.validate()
    if cfg.max_facts > len(FACT_TYPES):
        raise ConfigError(f"data.max_facts must be <= {len(FACT_TYPES)} (the number of fact types)")
    most = min(len(t) for t in TEMPLATES.values())
    if cfg.templates_per_fact > most:
        raise ConfigError(f"data.templates_per_fact must be <= {most} (phrasings written per fact type)")


def _choose_facts(cfg: SyntheticConfig, rng: random.Random) -> list[str]:
    n = rng.randint(cfg.min_facts, cfg.max_facts)
    pooled, unique = list(POOLED_TYPES), list(UNIQUE_TYPES)
    chosen = []
    for _ in range(n):
        want_unique = rng.random() < cfg.unique_share
        src = unique if (want_unique and unique) or not pooled else pooled
        chosen.append(src.pop(rng.randrange(len(src))))
    order = list(FACT_TYPES)
    return sorted(chosen, key=order.index)


def _author_rows(cfg: SyntheticConfig, rng: random.Random, inv: _Inventor, name: str,
                 facts: list[tuple[str, str]], pools: dict[str, list[str]]) -> list[dict]:
    rows = []
    k = cfg.templates_per_fact
    for fact, value in facts:
        kind, pool = FACT_TYPES[fact]
        templates = TEMPLATES[fact][:k]
        i = rng.randrange(k)
        j = rng.choice([t for t in range(k) if t != i]) if k > 1 else i
        if kind == "pooled":
            wrong = rng.sample([v for v in pools[pool] if v != value], cfg.n_perturbed)
        else:
            wrong = [inv.value(pool) for _ in range(cfg.n_perturbed)]
        answer, spans = fill(templates[i][1], name, value, fact, kind)
        para, _ = fill(templates[j][1], name, value, fact, kind)
        rows.append({
            "question": fill(templates[i][0], name, value, fact, kind)[0],
            "answer": answer,
            "paraphrased_answer": para,
            "perturbed_answer": [fill(templates[j][1], name, w, fact, kind)[0] for w in wrong],
            "paraphrased_question": fill(templates[j][0], name, value, fact, kind)[0],
            "author": name,
            "fact": fact,
            "spans": spans,
        })
    return rows


def _author_splits(cfg: SyntheticConfig, rng: random.Random, inv: _Inventor) -> dict[str, list[dict]]:
    pools = _pool_values(cfg, rng)
    sizes = {"forget": cfg.n_forget_authors, "retain": cfg.n_retain_authors, "holdout": cfg.n_holdout_authors}
    names = {s: [inv.name() for _ in range(sizes[s])] for s in AUTHOR_SPLITS}
    fact_types = {s: [_choose_facts(cfg, rng) for _ in range(sizes[s])] for s in AUTHOR_SPLITS}

    # Retain authors draw pooled values from the whole pool; forget and holdout authors draw from the
    # values retain authors hold (with multiplicity), so every "pooled" span is shared with retain.
    held: dict[str, list[str]] = {key: [] for key in pools}
    values: dict[str, list[list[tuple[str, str]]]] = {}
    for split in ("retain", "forget", "holdout"):
        values[split] = []
        for types in fact_types[split]:
            facts = []
            for fact in types:
                kind, pool = FACT_TYPES[fact]
                if kind == "unique":
                    v = inv.value(pool)
                elif split == "retain" or not held[pool]:
                    v = rng.choice(pools[pool])
                    held[pool].append(v)
                else:
                    v = rng.choice(held[pool])
                facts.append((fact, v))
            values[split].append(facts)

    out: dict[str, list[dict]] = {}
    for split in AUTHOR_SPLITS:
        out[split] = [row for name, facts in zip(names[split], values[split])
                      for row in _author_rows(cfg, rng, inv, name, facts, pools)]
    return out


# --------------------------------------------------------------------------- general split

# (question, answer, paraphrased question, paraphrased answer) per category; {x} subject, {v} value.
_GENERAL_TEMPLATES = {
    "colour": ("What colour is {x}?", "{x} is {v}.", "Which colour does {x} have?", "The colour of {x} is {v}."),
    "capital": ("What is the capital of {x}?", "The capital of {x} is {v}.",
                "Which city is the capital of {x}?", "{v} is the capital city of {x}."),
    "day_after": ("Which day comes after {x}?", "The day after {x} is {v}.",
                  "What day follows {x}?", "{v} follows {x} in the week."),
    "day_before": ("Which day comes before {x}?", "The day before {x} is {v}.",
                   "What day precedes {x}?", "{v} comes just before {x} in the week."),
    "month_after": ("Which month comes after {x}?", "The month after {x} is {v}.",
                    "What month follows {x}?", "{v} follows {x} in the calendar."),
    "month_before": ("Which month comes before {x}?", "The month before {x} is {v}.",
                     "What month precedes {x}?", "{v} comes just before {x} in the calendar."),
    "young_animal": ("What is a young {x} called?", "A young {x} is called a {v}.",
                     "What do we call a baby {x}?", "A baby {x} is known as a {v}."),
    "addition": ("What is {x} plus {y}?", "{x} plus {y} equals {v}.",
                 "How much is {x} added to {y}?", "Adding {x} and {y} gives {v}."),
    "multiplication": ("What is {x} times {y}?", "{x} times {y} equals {v}.",
                       "How much is {x} multiplied by {y}?", "Multiplying {x} by {y} gives {v}."),
}
_GENERAL_TEMPLATE_TEXTS = [(q, a) for (q, a, pq, pa) in _GENERAL_TEMPLATES.values()] + [
    (pq, pa) for (q, a, pq, pa) in _GENERAL_TEMPLATES.values()]


def _general_items(rng: random.Random, n_wrong: int) -> list[list[tuple[dict, str, list[str]]]]:
    """Per category, a shuffled list of (slots, true value, candidate wrong values)."""
    cats: list[list[tuple[dict, str, list[str]]]] = []

    def add(items: list[tuple[dict, str, list[str]]]) -> None:
        items = [it for it in items if len(it[2]) >= n_wrong]
        rng.shuffle(items)
        if items:
            cats.append(items)

    add([("colour", {"x": x}, c, [o for o in COLOUR_NAMES if o != c]) for x, c in COLOURS.items()])
    add([("capital", {"x": x}, c, [o for o in CAPITALS.values() if o != c]) for x, c in CAPITALS.items()])
    for seq, after, before in ((DAYS, "day_after", "day_before"), (MONTHS, "month_after", "month_before")):
        n = len(seq)
        add([(after, {"x": seq[i]}, seq[(i + 1) % n], [o for o in seq if o not in (seq[i], seq[(i + 1) % n])])
             for i in range(n)])
        add([(before, {"x": seq[i]}, seq[i - 1], [o for o in seq if o not in (seq[i], seq[i - 1])])
             for i in range(n)])
    add([("young_animal", {"x": x}, y, [o for o in YOUNG.values() if o != y]) for x, y in YOUNG.items()])
    arith = []
    for a in range(2, 13):
        for b in range(2, 13):
            for cat, v in (("addition", a + b), ("multiplication", a * b)):
                wrong = sorted({v + d for d in (-3, -2, -1, 1, 2, 3, 4, 10, -10, 5)} - {v}, key=lambda w: abs(w - v))
                arith.append((cat, {"x": str(a), "y": str(b)}, str(v), [str(w) for w in wrong if w > 0]))
    add(arith)
    # flatten the category label into the tuple head
    return [[(dict(slots, cat=cat), v, wrong) for cat, slots, v, wrong in items] for items in cats]


def _general_fill(template: str, slots: dict, value: str) -> str:
    text = template.format(v=value, **{k: s for k, s in slots.items() if k != "cat"})
    return text[0].upper() + text[1:]


def _general_split(cfg: SyntheticConfig, rng: random.Random) -> list[dict]:
    cats = _general_items(rng, cfg.n_perturbed)
    rows: list[dict] = []
    pos = [0] * len(cats)
    while len(rows) < cfg.n_general:
        progressed = False
        for c, items in enumerate(cats):
            if len(rows) >= cfg.n_general:
                break
            if pos[c] >= len(items):
                continue
            slots, v, wrong = items[pos[c]]
            pos[c] += 1
            progressed = True
            q, a, pq, pa = _GENERAL_TEMPLATES[slots["cat"]]
            wrong = rng.sample(wrong, cfg.n_perturbed)
            rows.append({
                "question": _general_fill(q, slots, v),
                "answer": _general_fill(a, slots, v),
                "paraphrased_answer": _general_fill(pa, slots, v),
                "perturbed_answer": [_general_fill(pa, slots, w) for w in wrong],
                "paraphrased_question": _general_fill(pq, slots, v),
                "author": "",
                "fact": slots["cat"],
                "spans": [],
            })
        if not progressed:
            raise ConfigError(f"data.n_general={cfg.n_general} exceeds the {len(rows)} general questions available")
    return rows


# --------------------------------------------------------------------------- public API


def generate(cfg: SyntheticConfig) -> dict[str, list[dict]]:
    """The four splits ("forget", "retain", "holdout", "general"), a pure function of ``cfg``."""
    _check_cfg(cfg)
    rng = random.Random(cfg.seed)
    inv = _Inventor(rng)
    splits = _author_splits(cfg, rng, inv)
    splits["general"] = _general_split(cfg, rng)
    return {s: splits[s] for s in SPLITS}


def save_splits(splits: dict[str, list[dict]], directory: str | os.PathLike) -> None:
    """Write ``<directory>/<split>.jsonl`` for each split, each file atomically (temp file + rename)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{split}.", suffix=".tmp", dir=d)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            os.replace(tmp, d / f"{split}.jsonl")
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def load_splits(directory: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> dict[str, list[dict]]:
    """Read the splits written by :func:`save_splits`."""
    d = Path(directory)
    out = {}
    for split in splits:
        path = d / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"missing data split file: {path}")
        with open(path, encoding="utf-8") as f:
            out[split] = [json.loads(line) for line in f if line.strip()]
    return out


def tokenizer_corpus(splits: dict[str, list[dict]], include: Iterable[str] = ("forget", "retain", "general"),
                     ) -> list[str]:
    """Texts to train the tokenizer on: the prompts and answers the models are fine-tuned on.

    Holdout rows and paraphrased/perturbed answers are left out by default, so text the models
    never see does not get vocabulary entries of its own (it is split into seen pieces instead).
    """
    texts = []
    for split in include:
        for row in splits.get(split, ()):
            texts.append(format_prompt(row["question"]))
            texts.append(format_answer(row["answer"]))
    return texts
