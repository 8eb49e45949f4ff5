"""A small synthetic shop dataset with a signal a CTR model can learn, for tests and demos.

Real data is large and licensed; tests need something tiny, deterministic and known to carry
structure, so that "the model beats random" is a meaningful check. The structure planted:

- each category has its own vocabulary of real English words, used in titles and descriptions,
  so text encoders can tell categories apart;
- each user prefers 1-2 categories and takes ~85% of their items from them;
- sequences are sequential: users tend to stay in the category of their last item, and often
  move from an item to its fixed "companion" item;
- popularity is skewed (Zipf) within each category;
- timestamps increase with mixed gaps: within a session (minutes), days, and rare long breaks.

The output is the "generic" format (`interactions.csv` + `items.csv`), loadable with
`reaseq.offline.datasets.load_dataset(out_dir)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

VOCABULARY: dict[str, tuple[str, ...]] = {
    "kitchen": (
        "pan", "knife", "kettle", "skillet", "spatula", "whisk", "colander", "ladle",
        "grater", "teapot", "wok", "peeler",
    ),
    "garden": (
        "shovel", "rake", "hose", "trowel", "pruner", "wheelbarrow", "sprinkler", "planter",
        "seeds", "fertilizer", "hoe", "gloves",
    ),
    "office": (
        "stapler", "notebook", "pen", "binder", "envelope", "folder", "marker", "calculator",
        "clipboard", "eraser", "highlighter", "paperclips",
    ),
    "sports": (
        "racket", "football", "dumbbell", "helmet", "treadmill", "skateboard", "jersey",
        "basketball", "kettlebell", "goggles", "bicycle", "yoga mat",
    ),
    "toys": (
        "puzzle", "doll", "kite", "blocks", "robot", "teddy bear", "yo-yo", "marbles",
        "train set", "spinning top", "rattle", "puppet",
    ),
    "books": (
        "novel", "cookbook", "atlas", "biography", "dictionary", "anthology", "memoir",
        "textbook", "thriller", "poetry", "encyclopedia", "comic",
    ),
    "music": (
        "guitar", "violin", "drum", "piano", "flute", "trumpet", "ukulele", "harmonica",
        "metronome", "cello", "saxophone", "tambourine",
    ),
    "beauty": (
        "lipstick", "shampoo", "perfume", "mascara", "lotion", "conditioner", "nail polish",
        "eyeliner", "moisturizer", "sunscreen", "hairbrush", "serum",
    ),
    "pets": (
        "leash", "collar", "aquarium", "birdcage", "litter", "kibble", "scratching post",
        "dog bed", "chew toy", "hamster wheel", "fish food", "pet brush",
    ),
    "electronics": (
        "headphones", "charger", "speaker", "keyboard", "mouse", "monitor", "webcam",
        "router", "tablet", "smartwatch", "microphone", "power bank",
    ),
    "camping": (
        "tent", "lantern", "sleeping bag", "compass", "backpack", "canteen", "hammock",
        "stove", "flashlight", "tarp", "cooler", "firestarter",
    ),
    "automotive": (
        "tire", "wiper", "jumper cables", "car wax", "floor mats", "air filter", "headlight",
        "seat cover", "tire gauge", "motor oil", "spark plug", "dash cam",
    ),
}  # fmt: skip
ADJECTIVES = (
    "classic", "deluxe", "compact", "premium", "portable", "sturdy", "lightweight", "vintage",
    "modern", "heavy-duty", "eco-friendly", "mini", "professional", "handmade", "smart",
)  # fmt: skip
BRANDS = (
    "Acme", "Northwind", "Bluebird", "Summit", "Evergreen", "Redwood", "Keystone", "Lumen",
    "Harbor", "Pioneer", "Oakline", "Brightway",
)  # fmt: skip
START_TIME = 1_600_000_000  # 2020-09-13: an arbitrary, realistic epoch start
PREFERRED_SHARE = 0.85  # share of a user's items drawn from their preferred categories
STAY_PROBABILITY = 0.7  # chance to stay in the previous item's category (when preferred)
COMPANION_PROBABILITY = 0.3  # chance to take the previous item's companion next


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _items(rng: np.random.Generator, n_items: int, categories: list[str]) -> pd.DataFrame:
    """Items spread evenly over categories, titled with that category's words."""
    rows = []
    for index in range(n_items):
        category = categories[index % len(categories)]
        words = VOCABULARY[category]
        noun = words[int(rng.integers(len(words)))]
        other = words[int(rng.integers(len(words)))]
        adjective = ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]
        brand = BRANDS[int(rng.integers(len(BRANDS)))]
        description = (
            f"{_article(adjective).title()} {adjective} {noun} for {category} lovers. "
            f"Pairs well with {_article(other)} {other}."
        )
        rows.append(
            {
                "item_id": f"i{index:04d}",
                "title": f"{brand} {adjective} {noun}".title(),
                "description": description,
                "brand": brand,
                "category": category,
            }
        )
    return pd.DataFrame(rows)


def _gaps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds between consecutive events: minutes within a session, days, rare long breaks."""
    kind = rng.choice(3, size=n, p=[0.5, 0.4, 0.1])
    session = rng.exponential(600.0, size=n)
    daily = rng.exponential(2 * 86_400.0, size=n)
    long = rng.uniform(30 * 86_400.0, 120 * 86_400.0, size=n)
    gaps = np.choose(kind, [session, daily, long])
    return np.maximum(gaps.astype(np.int64), 1)


def generate(
    out_dir: Path,
    n_users: int = 200,
    n_items: int = 150,
    n_categories: int = 6,
    mean_length: int = 12,
    seed: int = 0,
) -> Path:
    """Write `interactions.csv` and `items.csv` into `out_dir` (created) and return it."""
    if not 1 <= n_categories <= len(VOCABULARY):
        raise ValueError(f"n_categories must be 1..{len(VOCABULARY)}, got {n_categories}")
    if n_items < n_categories or n_users < 1 or mean_length < 3:
        raise ValueError("need n_items >= n_categories, n_users >= 1 and mean_length >= 3")
    rng = np.random.default_rng(seed)
    categories = list(VOCABULARY)[:n_categories]
    items = _items(rng, n_items, categories)
    members = [np.flatnonzero(items["category"].to_numpy() == c) for c in categories]
    # Zipf popularity within each category, over a random ranking of its items
    weights = [1.0 / (1.0 + rng.permutation(len(m))) for m in members]
    item_ids: list[str] = items["item_id"].tolist()
    category_of = np.arange(n_items) % n_categories
    # companion: the next item of the same category (cyclic), a fixed learnable transition
    companion = np.empty(n_items, dtype=np.int64)
    for m in members:
        companion[m] = np.roll(m, -1)

    rows: list[tuple[str, str, int]] = []
    for user in range(n_users):
        n_preferred = 1 if n_categories == 1 else int(rng.integers(1, 3))
        preferred = rng.choice(n_categories, size=n_preferred, replace=False)
        length = max(3, int(rng.poisson(mean_length)))
        times = START_TIME + int(rng.integers(0, 180 * 86_400)) + np.cumsum(_gaps(rng, length))
        seen: set[int] = set()
        previous = -1
        for step in range(length):
            if previous >= 0 and rng.random() < COMPANION_PROBABILITY:
                item = int(companion[previous])
            else:
                if rng.random() < PREFERRED_SHARE:
                    last = category_of[previous] if previous >= 0 else -1
                    stay = last in preferred and rng.random() < STAY_PROBABILITY
                    category = int(last) if stay else int(rng.choice(preferred))
                else:
                    category = int(rng.integers(n_categories))
                pool, w = members[category], weights[category].copy()
                w[np.isin(pool, list(seen))] *= 0.05  # rarely re-buy the same item
                item = int(rng.choice(pool, p=w / w.sum()))
            seen.add(item)
            previous = item
            rows.append((f"u{user:04d}", item_ids[item], int(times[step])))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    interactions.to_csv(out_dir / "interactions.csv", index=False)
    items.to_csv(out_dir / "items.csv", index=False)
    return out_dir
