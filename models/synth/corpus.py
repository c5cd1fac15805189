"""A generated English sentence corpus for the teacher: templates filled from word lists.

The words are chosen for lip reading: many bilabials (p, b, m, whose closure the mouth must
show), every vowel of :mod:`models.synth.phonemes`, rounded and spread lips, questions,
numbers, and lengths from two words to long clauses. A sentence belongs to the held-out split
by a hash of its text, so the two splits can never share a sentence whatever the seed or size.
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

Split = Literal["train", "heldout"]
HELDOUT_PERCENT = 20

NAMES = (
    "Bob",
    "Pam",
    "Maggie",
    "Paul",
    "Bea",
    "Mia",
    "Tom",
    "Ruth",
    "Hugo",
    "Joy",
    "Owen",
    "Ava",
    "Ben",
    "Molly",
    "Peter",
    "Abby",
    "Boris",
    "Emma",
    "Noah",
    "Zoe",
    "Luke",
    "Ivy",
    "Sam",
)
NOUNS = (
    "map",
    "book",
    "boat",
    "pump",
    "bubble",
    "apple",
    "cup",
    "bomb",
    "pepper",
    "mop",
    "pub",
    "baby",
    "puppy",
    "moon",
    "balloon",
    "bottle",
    "pebble",
    "lamp",
    "mirror",
    "piano",
    "umbrella",
    "photo",
    "house",
    "coin",
    "shoe",
    "boot",
    "bird",
    "car",
    "dog",
    "fish",
    "window",
    "letter",
    "garden",
    "jacket",
    "pizza",
    "music",
    "engine",
    "orange",
    "bike",
    "pillow",
    "tomato",
    "cabin",
    "rope",
    "voice",
    "toy",
    "cookie",
    "wall",
    "thumb",
    "mouth",
)
ADJECTIVES = (
    "big",
    "blue",
    "empty",
    "proper",
    "purple",
    "broken",
    "bumpy",
    "cheap",
    "smooth",
    "warm",
    "yellow",
    "odd",
    "tiny",
    "round",
    "bright",
    "pale",
    "heavy",
    "quiet",
    "fresh",
    "brave",
    "moist",
    "humble",
    "simple",
    "calm",
    "noisy",
    "awful",
    "early",
    "huge",
)
VERBS_PAST = (
    "bought",
    "painted",
    "dropped",
    "moved",
    "brought",
    "popped",
    "mapped",
    "pushed",
    "grabbed",
    "built",
    "bumped",
    "opened",
    "burned",
    "booked",
    "played",
    "found",
    "wrapped",
    "boiled",
    "poured",
    "mended",
    "shook",
    "chewed",
    "measured",
    "washed",
    "joined",
    "pulled",
)
VERBS = (
    "buy",
    "paint",
    "drop",
    "move",
    "bring",
    "pop",
    "push",
    "grab",
    "build",
    "open",
    "book",
    "play",
    "find",
    "wrap",
    "boil",
    "pour",
    "mend",
    "measure",
    "wash",
    "join",
    "pull",
    "keep",
)
PLACES = (
    "the pub",
    "the beach",
    "Boston",
    "the museum",
    "the bus stop",
    "the park",
    "the bank",
    "the market",
    "the harbour",
    "Miami",
    "the temple",
    "the zoo",
    "the office",
    "Bombay",
    "the shop",
    "the bridge",
    "the pool",
    "the city",
    "the mountain",
    "the hotel",
)
TIMES = (
    "at 7",
    "on Monday",
    "by 9 pm",
    "in May",
    "every morning",
    "at noon",
    "before lunch",
    "in 1999",
    "after 3 weeks",
    "at about 10 past 4",
    "in the evening",
    "tomorrow",
    "on the 21st of March",
    "by the 2nd",
    "today",
)
ADVERBS = ("promptly", "boldly", "happily", "slowly", "politely", "probably", "maybe", "almost")
INTERJECTIONS = ("Oh", "Wow", "Hmm", "Oops", "Well", "Yes", "No", "Please", "Boo", "Ahoy")

TEMPLATES = (
    "{name} {verb_past} the {adj} {noun}.",
    "{name} {verb_past} a {noun} at {place} {time}.",
    "Did {name} {verb} the {adj} {noun} {time}?",
    "Why is the {noun} so {adj}?",
    "{interj}, {name}!",
    "{interj}!",
    "Maybe {name} will {verb} {number} {adj} {noun}s.",
    "Please {verb} the {noun}, {name}.",
    "The {adj} {noun} and the {adj2} {noun2} went to {place} {time}.",
    "My {noun} costs {number} pounds, but the {adj} {noun2} is only {number2}.",
    "How many {noun}s did {name} {verb}? About {number}.",
    "{name} and {name2} {adverb} {verb_past} {number} {noun}s at {place}.",
    "Bring me the {noun}.",
    "Room {number}, please.",
    "I'm {adverb} sure that {name} {verb_past} my {adj} {noun} {time}, "
    "because the {noun2} by {place} was {adj2} and nobody else would {verb} it.",
    "When {name} {verb_past} the {noun}, {name2} {verb_past2} the {adj} {noun2}.",
    "{name}, could you {verb} a {adj} {noun} for me?",
    "Is it {number} or {number2}?",
    "{number} {adj} {noun}s.",
    "We met at {place} {time}, and {name} {verb_past} {number} {noun}s.",
    "Peter Piper picked a peck of {adj} {noun}s.",
    "Bob, my boy, bring the {adj} {noun} back to {place}.",
    "Who would {verb} a {noun} on a boat in the moonlight?",
    "Oh boy, the {noun} by the {noun2} is {adverb} {adj}!",
)


def _number(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        return str(rng.randint(2, 20))
    if kind < 0.8:
        return str(rng.randint(21, 999))
    return str(rng.randint(1000, 99999))


def _fill(template: str, rng: random.Random) -> str:
    name, name2 = rng.sample(NAMES, 2)
    noun, noun2 = rng.sample(NOUNS, 2)
    adj, adj2 = rng.sample(ADJECTIVES, 2)
    verb_past, verb_past2 = rng.sample(VERBS_PAST, 2)
    return template.format(
        name=name,
        name2=name2,
        noun=noun,
        noun2=noun2,
        adj=adj,
        adj2=adj2,
        verb_past=verb_past,
        verb_past2=verb_past2,
        verb=rng.choice(VERBS),
        place=rng.choice(PLACES),
        time=rng.choice(TIMES),
        adverb=rng.choice(ADVERBS),
        interj=rng.choice(INTERJECTIONS),
        number=_number(rng),
        number2=_number(rng),
    )


def split_of(sentence: str) -> Split:
    """Which split a sentence belongs to: a fixed function of its text alone."""
    digest = hashlib.sha1(sentence.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT else "train"


def sentences(split: Split, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences of ``split``, the same for the same seed."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}")
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(f"{split}:{seed}")
    found: dict[str, None] = {}  # ordered set
    attempts = 0
    while len(found) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise ValueError(f"cannot make {n} distinct {split} sentences")
        text = _fill(rng.choice(TEMPLATES), rng)
        if split_of(text) == split:
            found.setdefault(text)
    return list(found)
