"""Job `makr eval`: how good is the knowledge an LLM produced? Measured, never assumed.

* validity: schema-valid cards, critic repairs sent and fixed, relation answers.
* grounding and agreement: the card's brand occurs in the item text; it agrees with the catalog's
  own brand field where the data has one (Scientific); the card's kind shares a word with the
  catalog's category path or genres (Scientific, MovieLens; Office has category ids only).
* relation check (Office): Amazon's own `also_bought` (complements) and `also_viewed`
  (substitutes) pairs. Each relation phrase is mapped to the nearest Office category (MiniLM,
  category centroids of item texts); a pair is a hit when the partner's category is among the
  mapped categories. Baselines: the item's own category, and the three most frequent partner
  categories overall. No interaction data is in any prompt.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reaseq.offline.makr.agents import example_copies, examples_of
from reaseq.offline.makr.schemas import UNKNOWN, ItemCard

_STOP = {"and", "the", "for", "with", "of", "a", "an", "in", "on", "to", "or", "&"}


def _words(text: str) -> set[str]:
    """Content words, crudely singularised ('pens' ~ 'pen')."""
    out = set()
    for word in re.findall(r"[a-z0-9]+", str(text).lower()):
        if word not in _STOP and len(word) > 1:
            out.add(word[:-1] if word.endswith("s") and len(word) > 3 else word)
    return out


@dataclass
class CatalogFacts:
    """What the catalog itself says, for agreement checks (None where the data has nothing)."""

    brand: dict[str, str] | None  # item_id -> brand
    category_text: dict[str, str] | None  # item_id -> category path / genres
    category_id: dict[str, str] | None  # item_id -> category id (relation check)
    relations: pd.DataFrame | None  # head, relation, tail (item ids)


def catalog_facts(name: str, path: Path, items: pd.DataFrame) -> CatalogFacts:
    """Reads the metadata the three shared datasets carry; other data gets what `items` has."""
    ids = items["item_id"].astype(str)
    if name == "amazon18-scientific":
        meta = json.loads((path / "Scientific.item.json").read_text())
        return CatalogFacts(
            brand={k: v.get("brand", "") for k, v in meta.items() if v.get("brand")},
            category_text={k: v.get("categories", "") for k, v in meta.items()},
            category_id=None,
            relations=None,
        )
    if name == "amazon14-office":
        rel = pd.read_csv(path / "Office.relation", sep="\t", dtype=str)
        rel.columns = ["head", "relation", "tail"]
        return CatalogFacts(None, None, dict(zip(ids, items["category"], strict=True)), rel)
    if name == "ml-100k":  # text = "Title. Year. Genre Genre"
        genres = items["text"].str.rsplit(". ", n=1).str[-1]
        return CatalogFacts(None, dict(zip(ids, genres, strict=True)), None, None)
    has_category = items["category"].astype(str).str.len().gt(0).any()
    return CatalogFacts(
        None, dict(zip(ids, items["category"], strict=True)) if has_category else None, None, None
    )


def validity(records: list[dict], n_items: int) -> dict[str, float]:
    statuses = Counter(r["status"] for r in records)
    sent_back = statuses["repaired"] + statuses["flagged"]
    n = max(1, len(records))
    return {
        "items": n_items,
        "with_record": len(records),
        "schema_valid_rate": round(1 - statuses["failed"] / n, 4),
        "critic_ok_rate": round(statuses["ok"] / n, 4),
        "repair_rate": round(sent_back / n, 4),
        "repair_success_rate": round(statuses["repaired"] / sent_back, 4) if sent_back else 0.0,
        "flagged_rate": round(statuses["flagged"] / n, 4),
        "relation_valid_rate": round(sum(r["relations"] is not None for r in records) / n, 4),
        # cost, from the records themselves (each carries its own seconds and tokens); medians,
        # so an item that was in flight while the run was paused does not skew them
        "s_per_item_median": _median([r["seconds"] for r in records]),
        "tokens_per_s_median": _median(
            [r["completion_tokens"] / r["seconds"] for r in records if r["seconds"] > 0]
        ),
    }


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 2) if values else float("nan")


def agreement(records: list[dict], items: pd.DataFrame, facts: CatalogFacts) -> dict[str, float]:
    texts = dict(zip(items["item_id"].astype(str), items["text"].fillna(""), strict=True))
    cards = [(r["item_id"], r["card"]) for r in records if r.get("card")]
    made_with = {r["item_id"]: examples_of(r.get("prompt_version", "")) for r in records}
    out: dict[str, float] = {}
    named = [(i, c) for i, c in cards if c["brand"].lower() != UNKNOWN]
    out["brand_named_rate"] = round(len(named) / max(1, len(cards)), 4)
    grounded = [_words(c["brand"]) <= _words(texts.get(i, "")) for i, c in named]
    out["brand_grounded_rate"] = round(float(np.mean(grounded)), 4) if grounded else float("nan")
    copied = [
        bool(example_copies(ItemCard.model_validate(c), texts.get(i, ""), made_with[i]))
        for i, c in cards
    ]
    out["copied_from_examples_rate"] = round(float(np.mean(copied)), 4) if copied else float("nan")
    if facts.brand is not None:
        known = [(i, c) for i, c in cards if facts.brand.get(i)]
        hits = [bool(_words(c["brand"]) & _words(facts.brand[i])) for i, c in known]
        out["brand_agreement"] = round(float(np.mean(hits)), 4) if hits else float("nan")
    if facts.category_text is not None:
        known = [(i, c) for i, c in cards if facts.category_text.get(i)]
        hits = [bool(_words(c["kind"]) & _words(facts.category_text[i])) for i, c in known]
        out["kind_category_agreement"] = round(float(np.mean(hits)), 4) if hits else float("nan")
    return out


def relation_check(
    records: list[dict], items: pd.DataFrame, facts: CatalogFacts, embed
) -> dict[str, dict[str, float]]:
    """`embed(texts) -> unit vectors`. Hit rates of the partner's category, per relation type."""
    if facts.relations is None or facts.category_id is None:
        return {}
    ids = items["item_id"].astype(str).tolist()
    cats = np.array([facts.category_id[i] for i in ids])
    item_emb = embed(items["text"].fillna("").tolist())
    labels = sorted(set(cats))
    centroids = np.stack([item_emb[cats == c].mean(axis=0) for c in labels])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    by_item = {r["item_id"]: r for r in records}
    phrases = sorted(
        {
            p
            for r in records
            if r.get("relations")
            for p in r["relations"]["complements"] + r["relations"]["substitutes"]
        }
    )
    mapped = {}
    if phrases:
        nearest = (embed(phrases) @ centroids.T).argmax(axis=1)
        mapped = {p: labels[j] for p, j in zip(phrases, nearest, strict=True)}
    out = {}
    for relation, field in [("also_bought", "complements"), ("also_viewed", "substitutes")]:
        pairs = facts.relations[facts.relations["relation"] == relation]
        partner_cats = Counter(facts.category_id.get(t) for t in pairs["tail"])
        popular = {c for c, _ in partner_cats.most_common(3)}
        hit, own, pop, n = 0, 0, 0, 0
        for head, tail in zip(pairs["head"], pairs["tail"], strict=True):
            record = by_item.get(head)
            if not record or not record.get("relations") or tail not in facts.category_id:
                continue
            predicted = {mapped[p] for p in record["relations"][field] if p in mapped}
            target = facts.category_id[tail]
            n += 1
            hit += target in predicted
            own += target == facts.category_id.get(head)
            pop += target in popular
        out[relation] = {
            "pairs_judged": n,
            "agent_hit_rate": round(hit / n, 4) if n else float("nan"),
            "baseline_own_category": round(own / n, 4) if n else float("nan"),
            "baseline_top3_partner_categories": round(pop / n, 4) if n else float("nan"),
        }
    return out


def substitutes_by_item(facts: CatalogFacts, id_to_row: dict[str, int]) -> dict[int, set[int]]:
    """item row -> rows of its Amazon also_viewed partners (for neighbour recall)."""
    out: dict[int, set[int]] = defaultdict(set)
    if facts.relations is None:
        return {}
    viewed = facts.relations[facts.relations["relation"] == "also_viewed"]
    for head, tail in zip(viewed["head"], viewed["tail"], strict=True):
        if head in id_to_row and tail in id_to_row:
            out[id_to_row[head]].add(id_to_row[tail])
    return dict(out)
