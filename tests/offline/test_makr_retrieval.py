"""Representation metrics on hand-made catalogs where the right answer is known."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from reaseq.offline.makr.encode import (
    EncodeConfig,
    cointeraction_pairs,
    project,
    train_projector,
)
from reaseq.offline.makr.evaluate import _words, relation_check, validity
from reaseq.offline.makr.retrieval import macro_recall, neighbours, sm_hr

STAPLER_CARD = {
    "reasoning": "A stapler for the desk.",
    "kind": "desktop stapler",
    "brand": "unknown",
    "purpose": "fastening paper",
    "audience": "office workers",
    "attributes": {},
    "summary": "A desktop stapler.",
}


def test_neighbours_exclude_self_and_rank_by_cosine():
    catalog = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    top = neighbours(catalog, np.array([0, 2]), k=2)
    assert top.tolist() == [[1, 3], [3, 1]]


def test_macro_recall_averages_within_then_across_categories():
    catalog = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99], [0.7, 0.7]])
    categories = np.array(["a", "a", "b", "b", "b"])
    truth = {0: {1}, 2: {1}, 3: {2}}  # 0 finds 1 (hit); 2's partner is far (miss); 3 finds 2
    out = macro_recall(catalog, truth, categories, ks=(1,))
    assert out["macro_recall@1"] == 0.75  # a: 1.0; b: (0 + 1) / 2 -> mean 0.75


def test_sm_hr_counts_exact_item_retrieval():
    catalog = np.eye(4)
    queries = np.eye(4)[[0, 1, 3, 2]]  # the last two queries point at each other's item
    out = sm_hr(catalog, queries, ks=(1, 3))
    assert out == {"sm_hr@1": 0.5, "sm_hr@3": 1.0}


def test_projector_pulls_cointeracted_items_together():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    pairs = np.array([[i, i + 20] for i in range(20)] * 4)  # item i goes with item i + 20
    cfg = EncodeConfig(dim=8, hidden=32, epochs=40, batch_size=10)
    model, history = train_projector(x, pairs, cfg)
    assert history[-1] < history[0]
    reps = project(model, x)
    top = neighbours(reps, np.arange(20), k=1)[:, 0]
    assert (top == np.arange(20) + 20).mean() > 0.8  # random would be ~0.03


def test_cointeraction_pairs_come_from_the_train_period_only(tmp_path):
    from reaseq.offline import synthetic
    from reaseq.offline.datasets import load_dataset
    from reaseq.offline.prepare import PrepareConfig, prepare

    data = prepare(load_dataset(synthetic.generate(tmp_path), name="s"), PrepareConfig())
    pairs = {tuple(p) for p in cointeraction_pairs(data, 1).tolist()}
    beh = data.train_period_behaviors()
    allowed = set()
    for _, group in beh.groupby("user_row"):
        items = group["item_row"].tolist()
        allowed |= {(a, b) for a, b in itertools.pairwise(items) if a != b}
    assert pairs and pairs <= allowed


def test_relation_check_scores_partner_categories_against_baselines():
    from reaseq.offline.makr.evaluate import CatalogFacts

    items = pd.DataFrame({"item_id": ["1", "2", "3"], "text": ["pen", "ink", "paper"]})
    facts = CatalogFacts(
        None,
        None,
        {"1": "pens", "2": "ink", "3": "paper"},
        pd.DataFrame({"head": ["1", "1"], "relation": ["also_bought"] * 2, "tail": ["2", "3"]}),
    )
    vocab = {"pen": [1, 0, 0], "ink": [0, 1, 0], "paper": [0, 0, 1], "ink refills": [0, 1, 0]}

    def embed(texts):
        return np.array([vocab[t] for t in texts], dtype=float)

    record = {
        "item_id": "1",
        "status": "ok",
        "relations": {"complements": ["ink refills"], "substitutes": []},
        "seconds": 2.0,
        "completion_tokens": 50,
    }
    out = relation_check([record], items, facts, embed)["also_bought"]
    assert out["pairs_judged"] == 2 and out["agent_hit_rate"] == 0.5
    assert out["baseline_own_category"] == 0.0
    quality = validity([record], 3)
    assert quality["schema_valid_rate"] == 1.0 and quality["tokens_per_s_median"] == 25.0
    assert _words("Ballpoint Pens & Ink") == {"ballpoint", "pen", "ink"}


def test_knowledge_input_names_what_the_encoder_embeds(tmp_path):
    import pytest

    from reaseq.offline import synthetic
    from reaseq.offline.datasets import load_dataset
    from reaseq.offline.makr.encode import knowledge_texts
    from reaseq.offline.prepare import PrepareConfig, prepare

    data = prepare(load_dataset(synthetic.generate(tmp_path), name="s"), PrepareConfig())
    first, second = data.items.iloc[0], data.items.iloc[1]
    card = STAPLER_CARD
    relations = {"complements": ["staples"], "substitutes": ["paper clips"]}
    records = {str(first.item_id): {"card": card, "relations": relations}}
    texts = {
        name: knowledge_texts(data, records, name)
        for name in ("card", "card+relations", "card+relations+text")
    }
    assert all(missing == len(data.items) - 1 for _, missing in texts.values())
    only_card, with_relations, with_text = (texts[n][0][0] for n in texts)
    assert only_card.startswith("desktop stapler.") and "staples" not in only_card
    assert with_relations == f"{only_card} Bought with: staples. Instead of: paper clips."
    assert with_text == f"{with_relations} {first.text}"
    assert texts["card"][0][1] == str(second.text)  # no card: the raw text, whatever the input
    with pytest.raises(ValueError, match="knowledge_input"):
        knowledge_texts(data, records, "card+text")


def test_pca_projector_is_the_text_pipeline_over_the_knowledge(tmp_path):
    """`projector = "pca"` embeds the knowledge text exactly as `text` embeds the raw text:
    with no knowledge the two representations are identical, with a card only its row moves."""
    import pytest

    from reaseq.offline import synthetic
    from reaseq.offline.datasets import load_dataset
    from reaseq.offline.makr.encode import encode
    from reaseq.offline.prepare import PrepareConfig, prepare
    from reaseq.offline.text_reps import TextRepConfig, build_text_representation

    data = prepare(load_dataset(synthetic.generate(tmp_path / "s"), name="s"), PrepareConfig())
    text_cfg = TextRepConfig()
    text = build_text_representation(
        data.items["text"].fillna("").tolist(), tmp_path / "reps" / "text", text_cfg
    )
    pca = EncodeConfig(dim=text_cfg.dim, projector="pca")
    bare = encode("makr", data, {}, tmp_path / "reps" / "makr", text_cfg, pca)
    assert bare.projector is None and not (tmp_path / "reps" / "makr" / "projector.pt").exists()
    np.testing.assert_array_equal(bare.reps, text)
    card = STAPLER_CARD
    first = str(data.items.iloc[0].item_id)
    known = encode("makr", data, {first: {"card": card}}, tmp_path / "reps" / "k", text_cfg, pca)
    assert known.summary["items_without_card"] == len(data.items) - 1
    assert known.summary["config"]["projector"] == "pca" and known.reps.shape == text.shape
    assert not np.allclose(known.reps, text)
    with pytest.raises(ValueError, match="unknown projector 'mlp'"):
        EncodeConfig(projector="mlp")


def test_agreement_counts_cards_copied_from_the_prompts_examples():
    from reaseq.offline.makr.evaluate import CatalogFacts, agreement

    items = pd.DataFrame(
        {
            "item_id": ["1", "2"],
            "text": ["Toy Story. 1995. Animation Comedy", "Heat. 1995. Action Crime Thriller"],
        }
    )
    genres = {"1": "Animation Comedy", "2": "Action Crime Thriller"}
    card = {"kind": "animated comedy", "brand": "unknown", "purpose": "entertainment"}
    card |= {"audience": "families", "attributes": {}, "reasoning": "An animated comedy."}
    records = [
        {"item_id": "1", "card": card | {"summary": "A 1995 animated comedy."}},
        {
            "item_id": "2",
            "card": card | {"kind": "crime thriller", "summary": "A James Bond film."},
        },
    ]
    out = agreement(records, items, CatalogFacts(None, genres, None, None))
    assert out["copied_from_examples_rate"] == 0.5
    assert out["kind_category_agreement"] == 1.0
