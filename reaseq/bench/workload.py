"""The traffic of the load tests (locust's users, `reaseq soak`), drawn from a published release.

Pure numpy and `reaseq.core.release` (no locust, gevent or gRPC), so unit tests can import it
without gevent's monkey-patching, and both transports send the same kind of requests:

- users and items are drawn with Zipf-like popularity (weight 1 / rank**exponent), because a
  uniform draw would spread requests over cold rows and never show the hot-key behaviour of
  real traffic; users rank by published history length (active users ask more often);
- each simulated user runs sessions of a few requests; its `recent_item_ids` are the real-time
  behaviors the feature store has not seen yet: a few viewed items at session start, then the
  best-scored candidate of every answer ("clicked"), the newest last;
- a configurable share of user and item ids are not in the release, because callers send them
  (new users, new items) and the service must answer them as flagged non-errors.

`RankCall.check` then says what is wrong with an answer (scores or flags), so a load run also
catches wrong answers, not only failed ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reaseq.core.release import ACTIVE_FILE, Snapshot

UNKNOWN_PREFIX = "loadtest-unknown"  # ids no release holds (checked against the release)


@dataclass(frozen=True)
class TrafficConfig:
    """The knobs of the traffic; the locustfile fills them from its command-line options."""

    candidates: int = 50  # candidate items per request
    recent_items: int = 5  # at most this many recent_item_ids per request
    unknown_user_share: float = 0.05  # share of sessions whose user is not in the release
    unknown_item_share: float = 0.05  # share of candidate / recent ids not in the release
    zipf_exponent: float = 1.0  # popularity skew; 0 = uniform
    session_requests: float = 5.0  # mean requests per session (geometric)
    deadline_ms: int = 0  # the request's deadline_ms; 0 = none
    explain_share: float = 0.0  # share of requests with explain=true
    seed: int = 0

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")
        if self.recent_items < 0:
            raise ValueError(f"recent_items must be >= 0, got {self.recent_items}")
        for name in ("unknown_user_share", "unknown_item_share", "explain_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.zipf_exponent < 0:
            raise ValueError(f"zipf_exponent must be >= 0, got {self.zipf_exponent}")
        if self.session_requests < 1:
            raise ValueError(f"session_requests must be >= 1, got {self.session_requests}")
        if self.deadline_ms < 0:
            raise ValueError(f"deadline_ms must be >= 0, got {self.deadline_ms}")


def resolve_release_dir(path: Path) -> Path:
    """A release folder as given, or the active release of an embedded store folder (the one its
    ACTIVE file names), so the same path can be handed to the service and to the load test."""
    active = path / ACTIVE_FILE
    if active.is_file():
        return path / active.read_text().strip()
    return path


class ZipfSampler:
    """Draws indices 0..n-1 with weight 1 / rank**exponent, `order[0]` being rank 1."""

    def __init__(self, order: np.ndarray, exponent: float) -> None:
        ranks = np.empty(len(order), dtype=np.float64)
        ranks[order] = np.arange(1, len(order) + 1)
        weights = ranks**-exponent
        self.cdf = np.cumsum(weights / weights.sum())
        self.cdf[-1] = 1.0  # no draw may fall past the last index through rounding
        self.n = len(order)

    def draw(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """`k` indices, with repetition."""
        return np.searchsorted(self.cdf, rng.random(k), side="right")

    def draw_distinct(self, rng: np.random.Generator, k: int) -> list[int]:
        """`k` different indices (a candidate list has no duplicates), still popularity-skewed;
        topped up uniformly if the skew keeps repeating the same few; all n if k >= n, then
        repeats (a catalogue smaller than the candidate count)."""
        if k >= self.n:
            return [*rng.permutation(self.n).tolist(), *self.draw(rng, k - self.n).tolist()]
        chosen: dict[int, None] = {}
        for _ in range(4):
            chosen.update(dict.fromkeys(self.draw(rng, 2 * k).tolist()))
            if len(chosen) >= k:
                return list(chosen)[:k]
        for index in rng.permutation(self.n).tolist():
            chosen.setdefault(index)
            if len(chosen) == k:
                break
        return list(chosen)


@dataclass
class ReleaseIds:
    """The ids of one release and their popularity order."""

    user_ids: list[str]
    item_ids: list[str]
    user_order: np.ndarray  # user rows, most active first
    item_order: np.ndarray  # item rows, most popular first
    known_users: frozenset[str] = field(init=False)
    known_items: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        if not self.user_ids or not self.item_ids:
            raise ValueError("the release has no users or no items to draw from")
        self.known_users = frozenset(self.user_ids)
        self.known_items = frozenset(self.item_ids)

    @classmethod
    def from_release(cls, path: Path, seed: int = 0) -> ReleaseIds:
        """Users ordered by published history length (longest first, ties at random); items in
        a random order, since the snapshot stores behaviors as vectors, not item counts."""
        snap = Snapshot.open(resolve_release_dir(path))
        rng = np.random.default_rng(seed)
        lengths = np.diff(snap.user_offsets)
        user_order = np.lexsort((rng.random(len(lengths)), -lengths))
        return cls(
            user_ids=[str(u) for u in snap.user_ids],
            item_ids=[str(i) for i in snap.item_ids],
            user_order=user_order,
            item_order=rng.permutation(len(snap.item_ids)),
        )


@dataclass
class RankCall:
    """One request body and what a correct answer to it must say."""

    body: dict[str, Any]
    unknown_user: bool
    unknown_items: list[int]  # positions in candidate_item_ids not in the release
    unknown_recent: list[int]  # positions in recent_item_ids not in the release

    def check(self, answer: Mapping[str, Any]) -> str | None:
        """What is wrong with a 200 / OK answer, in one line, or None. The flags are exact: the
        service must flag every unknown id and no known one (the ids come from the release)."""
        scores: Sequence[float] = answer.get("scores", [])
        n = len(self.body["candidate_item_ids"])
        if len(scores) != n:
            return f"{len(scores)} scores for {n} candidates"
        if not all(0.0 <= s <= 1.0 for s in scores):  # NaN fails both comparisons
            return "a score outside [0, 1]"
        if bool(answer.get("unknown_user")) != self.unknown_user:
            return f"unknown_user is {answer.get('unknown_user')}, expected {self.unknown_user}"
        if sorted(answer.get("unknown_item_indices", [])) != self.unknown_items:
            return "unknown_item_indices do not match the candidates missing from the release"
        if sorted(answer.get("unknown_recent_indices", [])) != self.unknown_recent:
            return "unknown_recent_indices do not match the recent ids missing from the release"
        if self.body["explain"] and len(answer.get("explanations", [])) != n:
            return "explain=true but not one explanation per candidate"
        return None


def grpc_answer_fields(response: Any) -> dict[str, Any]:
    """A gRPC RankResponse's fields as the HTTP JSON spells them (what `RankCall.check` reads)."""
    return {
        "scores": list(response.scores),
        "unknown_user": response.unknown_user,
        "unknown_item_indices": list(response.unknown_item_indices),
        "unknown_recent_indices": list(response.unknown_recent_indices),
        "explanations": list(response.explanations),
    }


class UserTraffic:
    """The requests of one simulated user: sessions of a few requests for one end user each."""

    def __init__(self, ids: ReleaseIds, cfg: TrafficConfig, rng: np.random.Generator) -> None:
        self.ids, self.cfg, self.rng = ids, cfg, rng
        self.users = ZipfSampler(ids.user_order, cfg.zipf_exponent)
        self.items = ZipfSampler(ids.item_order, cfg.zipf_exponent)
        self.user_id = ""
        self.recent: list[str] = []
        self.left = 0  # requests left in the current session

    def _unknown(self, kind: str) -> str:
        return f"{UNKNOWN_PREFIX}-{kind}-{int(self.rng.integers(1 << 62)):016x}"

    def _item_ids(self, rows: Sequence[int]) -> list[str]:
        """Item ids for these rows, each replaced by an unknown id with the configured share."""
        unknown = self.rng.random(len(rows)) < self.cfg.unknown_item_share
        return [
            self._unknown("item") if u else self.ids.item_ids[r]
            for r, u in zip(rows, unknown, strict=True)
        ]

    def _start_session(self) -> None:
        if self.rng.random() < self.cfg.unknown_user_share:
            self.user_id = self._unknown("user")
        else:
            self.user_id = self.ids.user_ids[int(self.users.draw(self.rng, 1)[0])]
        n_recent = int(self.rng.integers(0, self.cfg.recent_items + 1))
        self.recent = self._item_ids(self.items.draw(self.rng, n_recent).tolist())
        self.left = int(self.rng.geometric(1.0 / self.cfg.session_requests))

    def next_call(self) -> RankCall:
        """The next request of this user; a new session (a new end user) when one ends."""
        if self.left <= 0:
            self._start_session()
        self.left -= 1
        candidates = self._item_ids(self.items.draw_distinct(self.rng, self.cfg.candidates))
        recent = list(self.recent)
        known = self.ids.known_items
        return RankCall(
            body={
                "user_id": self.user_id,
                "candidate_item_ids": candidates,
                "recent_item_ids": recent,
                "deadline_ms": self.cfg.deadline_ms,
                "explain": bool(self.rng.random() < self.cfg.explain_share),
            },
            unknown_user=self.user_id not in self.ids.known_users,
            unknown_items=[i for i, c in enumerate(candidates) if c not in known],
            unknown_recent=[i for i, r in enumerate(recent) if r not in known],
        )

    def observe(self, call: RankCall, scores: Sequence[float]) -> None:
        """The user "clicks" the best-scored candidate: it becomes its newest recent behavior."""
        if self.cfg.recent_items == 0 or not scores:
            return
        best = max(range(len(scores)), key=scores.__getitem__)
        self.recent = [*self.recent, call.body["candidate_item_ids"][best]]
        self.recent = self.recent[-self.cfg.recent_items :]


def describe(cfg: TrafficConfig, ids: ReleaseIds) -> str:
    """One line for the run's log: what traffic this run sends."""
    weights = np.arange(1, len(ids.item_ids) + 1, dtype=np.float64) ** -cfg.zipf_exponent
    share = float(weights[: math.ceil(0.01 * len(weights))].sum() / weights.sum())
    return (
        f"{len(ids.user_ids)} users, {len(ids.item_ids)} items; {cfg.candidates} candidates, "
        f"<= {cfg.recent_items} recent; unknown users {cfg.unknown_user_share:.0%}, items "
        f"{cfg.unknown_item_share:.0%}; zipf {cfg.zipf_exponent} (top 1% of items get "
        f"{share:.0%} of draws)"
    )
