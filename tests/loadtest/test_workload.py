"""The load test's traffic: skewed draws, unknown-id shares, recent behaviors and the answer
check, on a small in-memory id set (fast: no release, no locust, no gevent)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from reaseq.bench.workload import (
    UNKNOWN_PREFIX,
    RankCall,
    ReleaseIds,
    TrafficConfig,
    UserTraffic,
    ZipfSampler,
)


def _ids(n_users: int = 200, n_items: int = 500) -> ReleaseIds:
    return ReleaseIds(
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=[f"i{i}" for i in range(n_items)],
        user_order=np.arange(n_users),
        item_order=np.arange(n_items)[::-1].copy(),  # item i{n-1} is the most popular
    )


def test_zipf_draws_favour_the_top_ranks_and_exponent_zero_is_uniform() -> None:
    rng = np.random.default_rng(0)
    skewed = Counter(ZipfSampler(np.arange(100), 1.0).draw(rng, 20_000).tolist())
    assert skewed[0] > 1.7 * skewed[1] > 0  # weight 1 vs 1/2
    assert skewed[0] > 20 * skewed.get(99, 0.5)
    flat = Counter(ZipfSampler(np.arange(100), 0.0).draw(rng, 20_000).tolist())
    assert max(flat.values()) < 2 * min(flat.values())


def test_distinct_draws_have_no_duplicates_even_when_k_is_close_to_n() -> None:
    rng = np.random.default_rng(0)
    sampler = ZipfSampler(np.arange(60), 2.0)
    for k in (1, 10, 59):
        drawn = sampler.draw_distinct(rng, k)
        assert len(drawn) == len(set(drawn)) == k
    assert sorted(sampler.draw_distinct(rng, 60)) == list(range(60))
    assert len(sampler.draw_distinct(rng, 70)) == 70  # a catalogue smaller than k: repeats


def test_traffic_mixes_unknown_ids_at_the_configured_shares() -> None:
    cfg = TrafficConfig(candidates=20, unknown_user_share=0.3, unknown_item_share=0.1, seed=1)
    ids = _ids()
    traffic = UserTraffic(ids, cfg, np.random.default_rng(1))
    calls = [traffic.next_call() for _ in range(2000)]
    candidates = [c for call in calls for c in call.body["candidate_item_ids"]]
    item_share = sum(c.startswith(UNKNOWN_PREFIX) for c in candidates) / len(candidates)
    user_share = sum(call.unknown_user for call in calls) / len(calls)
    assert 0.08 < item_share < 0.12
    assert 0.2 < user_share < 0.4  # per session, sessions of ~5 requests: noisier
    for call in calls:
        body = call.body
        assert len(set(body["candidate_item_ids"])) == 20
        assert call.unknown_items == [
            i for i, c in enumerate(body["candidate_item_ids"]) if c not in ids.known_items
        ]
        assert call.unknown_user == (body["user_id"] not in ids.known_users)
        assert len(body["recent_item_ids"]) <= cfg.recent_items


def test_the_clicked_candidate_becomes_the_newest_recent_behavior() -> None:
    cfg = TrafficConfig(candidates=4, recent_items=3, session_requests=1000)
    traffic = UserTraffic(_ids(), cfg, np.random.default_rng(2))
    for _ in range(5):
        call = traffic.next_call()
        traffic.observe(call, [0.1, 0.9, 0.2, 0.3])
        assert traffic.recent[-1] == call.body["candidate_item_ids"][1]
        assert len(traffic.recent) <= 3
    assert traffic.next_call().body["recent_item_ids"] == traffic.recent


def _call() -> RankCall:
    body = {
        "user_id": "u1",
        "candidate_item_ids": ["i1", "x", "i2"],
        "recent_item_ids": ["y"],
        "deadline_ms": 0,
        "explain": False,
    }
    return RankCall(body, unknown_user=False, unknown_items=[1], unknown_recent=[0])


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({}, None),
        ({"scores": [0.5, 0.5]}, "2 scores for 3 candidates"),
        ({"scores": [0.5, float("nan"), 0.5]}, "a score outside [0, 1]"),
        ({"unknown_user": True}, "unknown_user is True, expected False"),
        ({"unknown_item_indices": []}, "unknown_item_indices do not match"),
        ({"unknown_recent_indices": [0, 1]}, "unknown_recent_indices do not match"),
    ],
)
def test_check_names_what_is_wrong_with_an_answer(change: dict, problem: str | None) -> None:
    answer = {
        "scores": [0.1, 0.2, 0.3],
        "unknown_user": False,
        "unknown_item_indices": [1],
        "unknown_recent_indices": [0],
    } | change
    found = _call().check(answer)
    assert found == problem if problem is None else found.startswith(problem)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown_item_share"):
        TrafficConfig(unknown_item_share=1.5)
    with pytest.raises(ValueError, match="candidates"):
        TrafficConfig(candidates=0)
