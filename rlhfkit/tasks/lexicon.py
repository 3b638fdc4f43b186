"""The vocabulary and sentence templates of the built-in "reviews" language.

A small English-like language: six topics, each with its own nouns and past-tense verbs, plus
topic-free nouns and verbs, positive / negative / neutral adjectives and a few function words.
Every word belongs to exactly one grammatical class, so a word sequence has exactly one class
sequence; that is what lets the hidden class-bigram model (`grammar.py`) score fluency in a
single pass. The lists are fixed (not drawn from the seed): the seed changes which prompts and
demonstrations are drawn, never the language itself.
"""

from __future__ import annotations

TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "restaurant": {
        "nouns": ("restaurant", "food", "pasta", "soup", "waiter", "menu", "dessert", "pizza",
                  "salad", "chef", "bread", "sauce", "kitchen", "coffee", "wine", "steak",
                  "portion", "burger", "noodles", "curry", "waitress", "appetizer"),
        "verbs": ("ordered", "ate", "tasted", "shared", "sampled", "reheated"),
    },
    "hotel": {
        "nouns": ("hotel", "room", "bed", "lobby", "pool", "receptionist", "shower", "balcony",
                  "towel", "suite", "pillow", "carpet", "gym", "elevator", "minibar",
                  "housekeeping", "breakfast", "mattress", "hallway", "concierge", "bathtub",
                  "sauna"),
        "verbs": ("booked", "reserved", "upgraded", "unpacked", "cleaned", "inspected"),
    },
    "movie": {
        "nouns": ("movie", "plot", "actor", "scene", "script", "director", "soundtrack", "cast",
                  "villain", "hero", "dialogue", "sequel", "trailer", "cinematography",
                  "actress", "screenplay", "finale", "twist", "cameo", "stunt", "editing",
                  "costume"),
        "verbs": ("watched", "streamed", "rewatched", "paused", "previewed", "recorded"),
    },
    "phone": {
        "nouns": ("phone", "battery", "charger", "button", "speaker", "app", "signal", "display",
                  "keyboard", "processor", "storage", "headphones", "cable", "sensor", "update",
                  "touchscreen", "microphone", "ringtone", "camera", "notification",
                  "wallpaper", "fingerprint"),
        "verbs": ("charged", "unlocked", "dropped", "installed", "tapped", "synced"),
    },
    "book": {
        "nouns": ("book", "chapter", "author", "character", "page", "novel", "narrator", "prose",
                  "poem", "library", "paperback", "hardcover", "epilogue", "prologue",
                  "protagonist", "bookmark", "illustration", "glossary", "storyline", "verse",
                  "publisher", "anthology"),
        "verbs": ("read", "reread", "borrowed", "skimmed", "annotated", "highlighted"),
    },
    "car": {
        "nouns": ("car", "engine", "seat", "wheel", "brake", "tire", "trunk", "mirror",
                  "dashboard", "radio", "gearbox", "fuel", "door", "windshield", "horn",
                  "steering", "bumper", "headlight", "exhaust", "clutch", "sunroof", "mileage"),
        "verbs": ("drove", "parked", "steered", "towed", "refueled", "washed"),
    },
}
"""Topic name → its nouns (the topic name itself included) and verbs: the on-topic words."""

GENERIC_NOUNS = ("price", "service", "experience", "staff", "place", "quality", "value", "time",
                 "trip", "friend", "family", "weekend", "visit", "design", "style")
"""Nouns that belong to no topic: neither on- nor off-topic for the gold reward."""

GENERIC_VERBS = ("tried", "found", "got", "checked", "used", "saw")
"""Verbs that belong to no topic."""

POSITIVE = ("great", "excellent", "wonderful", "lovely", "delicious", "friendly", "amazing",
            "fantastic", "superb", "pleasant", "perfect", "brilliant", "charming", "delightful",
            "gorgeous", "impressive", "elegant", "cozy", "spotless", "tasty", "fresh", "helpful",
            "smooth", "reliable", "gripping", "stunning", "terrific", "outstanding", "generous",
            "comfortable", "clever", "beautiful", "enjoyable", "marvelous", "splendid",
            "flawless")
"""Positive-tone adjectives."""

NEGATIVE = ("awful", "terrible", "horrible", "bland", "rude", "dirty", "broken", "boring",
            "disappointing", "stale", "noisy", "slow", "greasy", "cramped", "mediocre",
            "dreadful", "filthy", "shabby", "clumsy", "unreliable", "tedious", "soggy",
            "overpriced", "confusing", "flimsy", "sticky", "smelly", "dull", "awkward", "lousy",
            "painful", "weak", "miserable", "faulty", "grim", "uncomfortable")
"""Negative-tone adjectives."""

NEUTRAL = ("big", "small", "new", "old", "large", "usual", "simple", "modern", "local", "plain",
           "basic", "ordinary", "recent", "main", "whole", "standard", "typical", "regular",
           "red", "white", "dark", "square", "tall", "wooden")
"""Tone-free adjectives."""

FUNCTION_WORDS: dict[str, tuple[str, ...]] = {
    "DET": ("the", "this", "our", "my", "their"),
    "PRON": ("i", "we", "they"),
    "IT": ("it", "everything"),
    "COP": ("was", "felt", "seemed", "looked"),
    "ADV": ("very", "really", "quite", "truly", "rather", "so", "pretty", "extremely", "fairly",
            "incredibly"),
    "SADV": ("overall", "honestly", "basically", "frankly", "admittedly"),
    "PREP": ("with", "for", "at", "after", "during", "near"),
}
"""Class name → the function words that fill a slot of that class."""

LITERALS = {"and": "CONJ", "but": "CONJ", "were": "COP", ",": "COMMA", ".": "PERIOD"}
"""Words that templates name literally (plural "were" only after "N and N"), with their class."""

CLASSES = ("DET", "PRON", "IT", "COP", "ADV", "SADV", "CONJ", "PREP", "COMMA", "PERIOD", "NOUN",
           "VERB", "ADJ", "UNK")
"""Grammatical classes of the hidden n-gram model; UNK holds every word outside the language."""

# Sentence templates: (weight, slots). An upper-case slot is a class-valued role; `?` marks an
# optional slot (present with probability OPTIONAL_P). "ADJa" is an attributive adjective
# (mostly neutral), "ADJp" a predicative one (carries the writer's tone); both are class ADJ.
# Lower-case slots and punctuation are literal words (`LITERALS`). The class-bigram model is
# derived exactly from these weights.
TEMPLATES: tuple[tuple[float, tuple[str, ...]], ...] = (
    (3.0, ("DET", "NOUN", "COP", "ADV?", "ADJp", ".")),
    (1.0, ("DET", "NOUN", "and", "DET", "NOUN", "were", "ADV?", "ADJp", ".")),
    (2.0, ("PRON", "VERB", "DET", "ADJa?", "NOUN", ".")),
    (2.0, ("PRON", "VERB", "DET", "NOUN", ",", "and", "IT", "COP", "ADV?", "ADJp", ".")),
    (2.0, ("DET", "ADJa", "NOUN", "COP", "ADV?", "ADJp", ".")),
    (2.0, ("IT", "COP", "ADV?", "ADJp", ".")),
    (1.0, ("DET", "NOUN", "COP", "ADJp", ",", "but", "DET", "NOUN", "COP", "ADJp", ".")),
    (1.0, ("SADV", ",", "DET", "NOUN", "COP", "ADV?", "ADJp", ".")),
    (1.0, ("PRON", "VERB", "DET", "NOUN", "PREP", "DET", "ADJa?", "NOUN", ".")),
    (1.0, ("DET", "NOUN", "COP", "ADJp", "and", "ADJp", ".")),
)
OPTIONAL_P = 0.4
"""Probability that an optional (`?`) template slot is used."""

SLOT_CLASS = {"ADJa": "ADJ", "ADJp": "ADJ", **LITERALS}
"""Template role → grammatical class, for roles whose name is not already a class."""


def word_classes() -> dict[str, str]:
    """Word → its unique grammatical class, over the whole language (raises on a clash)."""
    table: dict[str, str] = {}
    groups: list[tuple[str, tuple[str, ...]]] = list(FUNCTION_WORDS.items())
    groups += [(cls, (word,)) for word, cls in LITERALS.items()]
    for spec in TOPICS.values():
        groups += [("NOUN", spec["nouns"]), ("VERB", spec["verbs"])]
    groups += [("NOUN", GENERIC_NOUNS), ("VERB", GENERIC_VERBS)]
    groups += [("ADJ", POSITIVE), ("ADJ", NEGATIVE), ("ADJ", NEUTRAL)]
    for cls, words in groups:
        for word in words:
            if word in table:
                raise ValueError(f"word {word!r} appears twice in the lexicon")
            table[word] = cls
    return table
