"""The ranking core: validate, read features, score, and follow the active release.

Both transports call `Ranker.rank`. A request takes a reference to the release that is active when
it starts and finishes on it, so a switch never mixes a new model with old vectors; the switch
itself is one reference assignment after the new release has been loaded, checked and warmed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np

from reaseq.core import contract
from reaseq.core.codec import UserBehaviors
from reaseq.core.redis_cluster import key_schema
from reaseq.core.release import ReleaseCheckError
from reaseq.service import metrics
from reaseq.service.backend import (
    DEGRADED,
    MicroBatcher,
    ModelBackend,
    ModelBackendError,
    ModelInputs,
    OnnxRuntimeBackend,
    execution_providers,
)
from reaseq.service.errors import (
    DeadlineExceeded,
    ExplainUnavailable,
    InvalidModelOutput,
    NotReady,
    ReaseqError,
)
from reaseq.service.explain import behavior_info, join_knowledge, top_attended
from reaseq.service.logs import log_throttled
from reaseq.service.query import (
    AttendedBehavior,
    RankLimits,
    RankQuery,
    RankResult,
    validate_query,
)
from reaseq.service.releases import (
    EmbeddedReleaseSource,
    LoadedRelease,
    RedisReleaseSource,
    ReleaseSource,
    make_push_client,
    make_redis_client,
)
from reaseq.service.settings import ServiceSettings
from reaseq.service.triton.backend import TritonBackend, TritonModels, TritonOptions

log = logging.getLogger(__name__)
CLOSE_WAIT_S = 5.0  # how long close() waits for the release poller and watcher to stop
T = TypeVar("T")


def assemble(
    release: LoadedRelease,
    published: UserBehaviors,
    recent: np.ndarray,
    candidates: np.ndarray,
) -> ModelInputs:
    """Model inputs for one request: behaviors = published (real or generated) then the
    request's recent items (GAP_RECENT: the store knows no gap for them; never generated), all
    three cut together to the last max_behaviors; an empty history becomes one masked zero row
    (the model needs L >= 1) with GAP_UNKNOWN and flag 0."""
    max_len = release.manifest.max_behaviors
    behaviors = np.concatenate([published.vectors, recent])[-max_len:]
    recent_gaps = np.full(len(recent), contract.GAP_RECENT, dtype=np.int64)
    gaps = np.concatenate([published.gap_buckets.astype(np.int64), recent_gaps])[-max_len:]
    generated = np.concatenate([published.generated.astype(np.float32), np.zeros(len(recent))])
    generated = generated[-max_len:].astype(np.float32)
    mask = np.ones(len(behaviors), dtype=np.float32)
    if len(behaviors) == 0:
        behaviors = np.zeros((1, release.manifest.vector_dim), dtype=np.float32)
        mask = np.zeros(1, dtype=np.float32)
        gaps = np.full(1, contract.GAP_UNKNOWN, dtype=np.int64)
        generated = np.zeros(1, dtype=np.float32)
    return ModelInputs(candidates[None], behaviors[None], mask[None], gaps[None], generated[None])


def triton_options(settings: ServiceSettings) -> TritonOptions:
    return TritonOptions(
        url=settings.triton_url,
        runtime=settings.triton_runtime,
        timeout_s=settings.triton_timeout_s,
        load_timeout_s=settings.triton_load_timeout_s,
        max_batch_size=settings.triton_max_batch_size,
        queue_delay_us=settings.triton_queue_delay_us,
        instances=settings.triton_instances,
        gpu=settings.triton_device == "gpu",
        intra_op_threads=settings.onnx_intra_op_threads,
    )


async def _within(awaitable: Awaitable[T], deadline: float | None, stage: str) -> T:
    """Await with the request's remaining time; past it, a DeadlineExceeded naming the stage.
    `asyncio.timeout`, not `wait_for`: no extra task per stage (it showed in the profile)."""
    if deadline is None:
        return await awaitable
    remaining = deadline - time.perf_counter()
    try:
        if remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):
            return await awaitable
    except TimeoutError:
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never started: no "was never awaited" warning
        raise DeadlineExceeded(f"request deadline passed while {stage}") from None


class Ranker:
    def __init__(self, source: ReleaseSource, settings: ServiceSettings) -> None:
        self.source = source
        self.settings = settings
        self.limits = RankLimits(settings.max_candidates, settings.max_recent_behaviors)
        self._active: LoadedRelease | None = None
        self._refusals: dict[str, str] = {}  # release -> why it failed its checks (not retried)
        self._pointer: str | None = None  # the release the active pointer named at last look
        self._poller: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None  # the source's pointer push, if it has one
        self._pointer_moved = asyncio.Event()  # set by a push: check the pointer now
        self._closing = False
        self._refresh_lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task, str] = {}  # previous releases draining after a switch
        self._last_problem: str | None = None  # why the last pointer check / load failed
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._triton = None
        if settings.backend == "triton":  # one client and one set of hosted models per service
            self._triton = TritonModels(triton_options(settings))

    @classmethod
    async def open(cls, settings: ServiceSettings, follow: bool = True) -> Ranker:
        """Build from settings, load the active release if there is one, start following it.
        A device that cannot run here (`model_device = cuda` without CUDA) fails right here."""
        execution_providers(settings.model_device)
        if settings.store == "redis":
            password = (
                settings.redis_password.get_secret_value() if settings.redis_password else None
            )
            client = make_redis_client(settings.redis_url, password, settings.redis_timeout_s)
            keys = key_schema(settings.redis_namespace, settings.redis_url)
            push_client = None
            # keyspace notifications come only from the node holding the key: a cluster polls
            if settings.release_push == "auto" and not keys.cluster:
                timeout_s = settings.redis_timeout_s
                push_client = make_push_client(settings.redis_url, password, timeout_s)
            source: ReleaseSource = RedisReleaseSource(
                client, keys, push_client, configure_server=settings.release_push_configure_server
            )
        else:
            source = EmbeddedReleaseSource(settings.releases_dir)
        ranker = cls(source, settings)
        try:
            await ranker.refresh()
        except ReaseqError as err:
            ranker._last_problem = err.message
            log.warning("no release loaded at start-up: %s", err.message)
        if follow:
            ranker._poller = asyncio.create_task(ranker._follow())
            ranker._watcher = asyncio.create_task(ranker._watch())
        return ranker

    async def close(self) -> None:
        self._closing = True  # the poller also stops on this if a cancel is lost in a timeout race
        tasks = {t for t in (self._poller, self._watcher) if t is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
        with contextlib.suppress(ReaseqError):
            await self.source.clear_in_use(self.instance)
        if self._active:
            await self._active.close()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._triton is not None:
            await self._triton.close()
        await self.source.close()

    # --- release following -------------------------------------------------------------------

    async def _follow(self) -> None:
        """Check the pointer every poll interval, and at once when the source pushes a change;
        polling never stops, since a push can be lost (a notification sent while reconnecting)."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.release_poll_interval_s):
                    await self._pointer_moved.wait()
            self._pointer_moved.clear()
            try:
                await self.refresh()
                if self._active is not None:
                    await self.source.mark_in_use(self.instance, self._held())
            except ReaseqError as err:
                self._last_problem = err.message
                log.warning("release pointer check failed: %s", err.message)
            except Exception:  # keep following whatever happens; the old release keeps serving
                log.exception("release refresh crashed")

    async def _watch(self) -> None:
        """Run the source's pointer push (if it has one) for as long as the ranker follows."""
        try:
            await self.source.watch_pointer(self._pointer_moved.set)
        except Exception:  # push is an optimisation: polling carries on without it
            log.exception("release push stopped; polling only")

    async def refresh(self) -> bool:
        """Switch to the release the pointer names, if it differs and passes its checks.

        With nothing loaded and the named release refused, serve the best kept release that
        passes instead (said in the log, `/readyz` and `reaseq_release_fallback`): a bad pointer
        at start-up must not mean 503 until someone fixes it."""
        async with self._refresh_lock:
            target = self._pointer = await self.source.active_release()
            current = self._active.manifest.release if self._active else None
            switched = False
            if target is not None and target != current:
                if target not in self._refusals:
                    switched = await self._switch_to(target, current)
                if not switched and self._active is None:
                    switched = await self._fall_back(target)
            metrics.RELEASE_FALLBACK.set(self.readiness_detail() is not None)
            return switched

    async def _switch_to(self, target: str, current: str | None) -> bool:
        """Load, check and warm up `target`, then swap it in; False if it was refused."""
        started = time.perf_counter()
        try:
            candidate = await self.source.load(target, self._make_backend)
        except (ReleaseCheckError, ModelBackendError, ValueError) as err:
            self._refuse(target, err, current)
            return False
        try:
            await self._warm_up(candidate)
            # mark first, so no publisher's GC removes what we are about to serve
            await self.source.mark_in_use(self.instance, {*self._held(), target})
        except Exception as err:
            await candidate.close()  # never switched to: free its model and workers
            if isinstance(err, ReleaseCheckError | ModelBackendError | ValueError):
                self._refuse(target, err, current)
                return False
            raise
        # requests that started on the previous release hold their own reference to it and
        # finish on it; its ONNX session and mmaps are freed when the last of them is done
        previous, self._active = self._active, candidate
        self._last_problem = None
        if previous is not None:  # drains its in-flight requests, then frees its workers
            drain = asyncio.create_task(previous.drain_and_close())
            self._retiring[drain] = previous.manifest.release
        metrics.record_switch(
            *candidate.versions,
            seconds=time.perf_counter() - started,
            created_at=candidate.manifest.created_at,
        )
        log.info("switched release %s -> %s", current, target)
        return True

    async def _fall_back(self, refused: str) -> bool:
        """Nothing is served and the named release was refused: try the kept ones, best first."""
        for release in await self.source.fallbacks():
            if release == refused or release in self._refusals:
                continue
            if await self._switch_to(release, None):
                log.warning(
                    "the pointer names %s, which was refused (%s); serving %s instead, the most "
                    "recently activated kept release that passes its checks",
                    refused,
                    self._refusals[refused],
                    release,
                )
                return True
        self._last_problem = f"release {refused} refused: {self._refusals[refused]}"
        if len(self._refusals) > 1:
            self._last_problem += f" (and {len(self._refusals) - 1} kept releases refused too)"
        return False

    def _held(self) -> set[str]:
        """Releases this instance still reads from: the active one and those still draining."""
        self._retiring = {t: r for t, r in self._retiring.items() if not t.done()}
        active = {self._active.manifest.release} if self._active else set()
        return active | set(self._retiring.values())

    def _refuse(self, target: str, err: Exception, current: str | None) -> None:
        self._refusals[target] = str(err)
        self._last_problem = f"release {target} refused: {err}"
        metrics.RELEASES_REFUSED.inc()
        log.error("refused release %s: %s; still serving %s", target, err, current)

    def _make_backend(self, model_bytes: bytes) -> ModelBackend:
        """Called in a worker thread with verified model bytes; ONNX Runtime checks the model
        against the contract whichever backend then hosts it."""
        onnx = OnnxRuntimeBackend(
            model_bytes,
            self.settings.onnx_intra_op_threads,
            inline=self.settings.model_inline,
            device=self.settings.model_device,
        )
        if self._triton is not None:
            fallback = self.settings.triton_fallback == "local"
            return TritonBackend(self._triton, model_bytes, onnx, fallback=fallback)
        if self.settings.batch_max_size <= 1:
            return onnx
        return MicroBatcher(onnx, self.settings.batch_max_size, self.settings.batch_workers)

    async def _warm_up(self, release: LoadedRelease) -> None:
        dim = release.manifest.vector_dim
        cand = np.zeros((1, 8, dim), dtype=np.float32)
        beh = np.zeros((1, 4, dim), dtype=np.float32)
        ones = np.ones((1, 4), dtype=np.float32)
        gaps = np.full((1, 4), contract.GAP_FIRST, dtype=np.int64)  # a real bucket, not padding
        scores = await release.model.score(cand, beh, ones, gaps, np.zeros_like(ones))
        if scores.shape != (1, 8) or not np.isfinite(scores).all():
            raise ReleaseCheckError(f"release {release.manifest.release}: warm-up gave bad scores")

    # --- serving -----------------------------------------------------------------------------

    def is_ready(self) -> bool:
        return self._active is not None

    def readiness_detail(self) -> str | None:
        """A note for `/readyz` when serving is not as the pointer asks (a fallback, or a switch
        refused while the old release keeps serving); None when all is as published."""
        active = self._active.manifest.release if self._active else None
        pointer = self._pointer
        if active is None or pointer is None or pointer == active:
            return None
        why = self._refusals.get(pointer)
        if why is None:
            return f"the pointer names {pointer}, not loaded yet; serving {active}"
        return f"the pointer names {pointer}, which was refused ({why}); serving {active} instead"

    def active_versions(self) -> tuple[str, str, str] | None:
        return self._active.versions if self._active else None

    def _not_ready(self) -> NotReady:
        why = f" (last problem: {self._last_problem})" if self._last_problem else ""
        return NotReady(f"no release is loaded{why}: publish one with `reaseq publish`")

    async def check_ready(self) -> None:
        release = self._active
        if release is None:
            raise self._not_ready()
        await release.features.ping()

    async def ready_now(self) -> bool:
        """What `/readyz` would answer now (any failure of the check is 503 there too); the
        `reaseq_ready` gauge, refreshed at each scrape."""
        try:
            await self.check_ready()
        except Exception:
            return False
        return True

    async def rank(self, query: RankQuery) -> RankResult:
        started = time.perf_counter()
        validate_query(query, self.limits)
        release = self._active  # this request finishes on this release, whatever switches later
        if release is None:
            raise self._not_ready()
        release.in_flight += 1  # held until done: a switch waits for it before freeing
        try:
            return await self._rank_on(release, query, started)
        finally:
            release.in_flight -= 1

    def _explanations(
        self,
        release: LoadedRelease,
        published: UserBehaviors,
        recent_ids: list[str],
        attention: np.ndarray,
    ) -> list[list[AttendedBehavior]]:
        names = release.features.name_behaviors(published.vectors)
        names = ["" if g else n for n, g in zip(names, published.generated, strict=True)]
        info = behavior_info(
            names,
            published.generated,
            published.gap_buckets,
            recent_ids,
            release.manifest.max_behaviors,
        )
        return top_attended(attention[0], info, self.settings.explain_top_k)

    async def _rank_on(
        self, release: LoadedRelease, query: RankQuery, started: float
    ) -> RankResult:
        deadline = started + query.deadline_ms / 1000 if query.deadline_ms else None

        n_cand = len(query.candidate_item_ids)
        fetched = await _within(
            release.features.fetch(query.user_id, query.candidate_item_ids + query.recent_item_ids),
            deadline,
            "reading features",
        )
        t_features = time.perf_counter()

        candidates = fetched.items[:n_cand]
        cand_found = fetched.items_found[:n_cand]
        candidates[~cand_found] = release.features.default_item
        recent_found = fetched.items_found[n_cand:]
        recent = fetched.items[n_cand:][recent_found]
        inputs = assemble(release, fetched.published, recent, candidates)
        DEGRADED.set(False)
        explanations = candidate_knowledge = None
        if query.explain:
            if not release.model.explains:
                raise ExplainUnavailable(
                    f"release {release.manifest.release} has a model without attention output "
                    "(exported before explanations); re-export it, or rank without explain"
                )
            scores, attention = await _within(release.model.explain(*inputs), deadline, "scoring")
            found_recent = [query.recent_item_ids[i] for i in np.flatnonzero(recent_found)]
            explanations = self._explanations(release, fetched.published, found_recent, attention)
            candidate_knowledge = await _within(
                join_knowledge(release.features, explanations, query.candidate_item_ids),
                deadline,
                "reading item knowledge",
            )
        else:
            scores = await _within(release.model.score(*inputs), deadline, "scoring")
        t_model = time.perf_counter()
        if not np.isfinite(scores).all():  # never a NaN/Inf as a score (JSON would say null)
            bad = int((~np.isfinite(scores[0])).sum())
            log_throttled(
                "non-finite",
                "release %s scored %d of %d candidates non-finite",
                release.manifest.release,
                bad,
                n_cand,
            )
            raise InvalidModelOutput(
                f"the model produced {bad} non-finite scores of {n_cand}; nothing was returned"
            )

        rel, model_version, feature_version = release.versions
        return RankResult(
            scores=scores[0].astype(float).tolist(),
            release=rel,
            model_version=model_version,
            feature_version=feature_version,
            unknown_user=not fetched.user_found,
            unknown_item_indices=np.flatnonzero(~cand_found).tolist(),
            unknown_recent_indices=np.flatnonzero(~recent_found).tolist(),
            degraded=DEGRADED.get(),
            explanations=explanations,
            candidate_knowledge=candidate_knowledge,
            timings={
                "features": t_features - started,
                "model": t_model - t_features,
                "total": t_model - started,
            },
        )
