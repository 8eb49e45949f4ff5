"""Prometheus metrics of the ranking service, in the default registry.

Both transports and the ranker record through the helpers below, so metric names and label values
live in one place and dashboards see the same series whichever transport served a request.
"""

from __future__ import annotations

import datetime as dt
import math
import threading

from prometheus_client import Counter, Gauge, Histogram

from reaseq.service.errors import ReaseqError
from reaseq.service.query import RankResult

# 0.5 ms .. 1 s: feature reads sit near the bottom, a full request well under the top.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
)
CANDIDATE_BUCKETS = (1, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 2000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SWITCH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter(
    "reaseq_requests",
    "Rank requests by transport and outcome (ok or error kind).",
    ["transport", "outcome"],
)
STAGE_LATENCY = Histogram(
    "reaseq_stage_latency_seconds",
    "Latency of one Rank request per stage (features, model, total).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
CANDIDATES = Histogram(
    "reaseq_candidates_per_request",
    "Candidate items scored per successful request.",
    buckets=CANDIDATE_BUCKETS,
)
BATCH_SIZE = Histogram(
    "reaseq_batch_size",
    "Requests merged into one model call by the micro-batcher.",
    buckets=BATCH_BUCKETS,
)
UNKNOWN_ITEMS = Counter(
    "reaseq_unknown_items", "Candidates without features, scored with the default item vector."
)
UNKNOWN_USERS = Counter("reaseq_unknown_users", "Requests whose user had no published behaviors.")
ERRORS = Counter("reaseq_errors", "Failed Rank requests by error kind.", ["kind"])
ACTIVE_RELEASE = Gauge(
    "reaseq_active_release",
    "1 for the release currently served, labelled with its versions.",
    ["release", "model_version", "feature_version"],
)
RELEASE_SWITCHES = Counter(
    "reaseq_release_switches", "Times the service switched to a newly published release."
)
RELEASE_SWITCH_SECONDS = Histogram(
    "reaseq_release_switch_seconds",
    "Time to load, check and warm up a release before switching to it.",
    buckets=SWITCH_BUCKETS,
)
RELEASE_LAST_SWITCH = Gauge(
    "reaseq_release_last_switch_timestamp_seconds",
    "Unix time of the last release switch (time since = time() - this).",
)
ACTIVE_RELEASE_CREATED = Gauge(
    "reaseq_active_release_created_timestamp_seconds",
    "Unix time the served release was created (its manifest's created_at): the same on every "
    "instance and across restarts, so time() - this is the release's age.",
)
READY = Gauge(
    "reaseq_ready",
    "1 when /readyz would answer 200 (a release is loaded and its store answers), checked at "
    "each scrape; else 0.",
)
RELEASE_PUSH_SUBSCRIBED = Gauge(
    "reaseq_release_push_subscribed",
    "1 while subscribed to the Redis keyspace notifications of the active pointer (a publish is "
    "seen at once); 0 while only polling finds it (push off, unavailable, or reconnecting).",
)
RELEASE_FALLBACK = Gauge(
    "reaseq_release_fallback",
    "1 while the service serves a release other than the one the pointer names (refused).",
)
RELEASES_REFUSED = Counter(
    "reaseq_releases_refused", "Published releases refused because they failed their checks."
)
TRITON_FALLBACK = Counter(
    "reaseq_triton_fallback",
    "Model calls scored in-process because Triton failed (triton_fallback = local).",
)

_release_lock = threading.Lock()
_active: tuple[str, str, str] | None = None


def observe_result(transport: str, result: RankResult, total_s: float | None = None) -> None:
    """Record one successful request; `total_s` (measured by the transport) wins over timings."""
    REQUESTS.labels(transport=transport, outcome="ok").inc()
    for stage, seconds in result.timings.items():
        if stage != "total":
            STAGE_LATENCY.labels(stage=stage).observe(seconds)
    total = total_s if total_s is not None else result.timings.get("total")
    if total is not None:
        STAGE_LATENCY.labels(stage="total").observe(total)
    CANDIDATES.observe(len(result.scores))
    if result.unknown_item_indices:
        UNKNOWN_ITEMS.inc(len(result.unknown_item_indices))
    if result.unknown_user:
        UNKNOWN_USERS.inc()


def error_kind(err: BaseException) -> str:
    """The `kind` label of an error; anything that is not a ReaseqError is `internal`."""
    return err.kind if isinstance(err, ReaseqError) else "internal"


def observe_error(transport: str, err: BaseException, total_s: float | None = None) -> None:
    """Record one failed request under its error kind (also counted in requests_total)."""
    kind = error_kind(err)
    REQUESTS.labels(transport=transport, outcome=kind).inc()
    ERRORS.labels(kind=kind).inc()
    if total_s is not None:
        STAGE_LATENCY.labels(stage="total").observe(total_s)


def observe_batch(n_requests: int) -> None:
    """Record how many requests the micro-batcher merged into one model call."""
    BATCH_SIZE.observe(n_requests)


def set_active_release(release: str, model_version: str, feature_version: str) -> None:
    """Point the active-release gauge at these versions; idempotent, so callers may repeat it."""
    global _active
    versions = (release, model_version, feature_version)
    with _release_lock:
        if versions == _active:
            return
        ACTIVE_RELEASE.clear()
        ACTIVE_RELEASE.labels(*versions).set(1)
        _active = versions


def record_switch(
    release: str,
    model_version: str,
    feature_version: str,
    seconds: float | None = None,
    created_at: str | None = None,
) -> None:
    """The ranker switched releases: count it, time it, and repoint the active-release gauges
    (`created_at` is the manifest's, so the release's age survives a restart of the service)."""
    RELEASE_SWITCHES.inc()
    RELEASE_LAST_SWITCH.set_to_current_time()
    if seconds is not None:
        RELEASE_SWITCH_SECONDS.observe(seconds)
    if created_at is not None:
        ACTIVE_RELEASE_CREATED.set(created_timestamp(created_at))
    set_active_release(release, model_version, feature_version)


def created_timestamp(created_at: str) -> float:
    """A manifest's ISO 8601 `created_at` as Unix time; NaN (no age, no alert) if it does not
    parse, since a label-free timestamp must not stop a release that passed its checks."""
    try:
        return dt.datetime.fromisoformat(created_at).timestamp()
    except ValueError:
        return math.nan


def clear_active_release() -> None:
    """Drop the active-release series (nothing loaded), so no stale version is reported."""
    global _active
    with _release_lock:
        ACTIVE_RELEASE.clear()
        _active = None


def sync_active_release(versions: tuple[str, str, str] | None) -> None:
    """Mirror `Ranker.active_versions()` into the gauge; called before each scrape."""
    if versions is None:
        clear_active_release()
    else:
        set_active_release(*versions)
