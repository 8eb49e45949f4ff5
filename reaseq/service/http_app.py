"""HTTP transport: `POST /v1/rank` with the same semantics as gRPC, plus health and metrics.

The app is built by a factory so tests and `server.serve` can inject one shared, already-open
Ranker; run standalone, the lifespan opens one from settings and closes it on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from reaseq.service import metrics
from reaseq.service.errors import InvalidRequest, NotReady, ReaseqError
from reaseq.service.query import RankQuery, RankResult
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings

log = logging.getLogger(__name__)

RANK_PATH = "/v1/rank"


class RankRequestBody(BaseModel):
    """Mirrors `reaseq.v1.RankRequest`; content rules (sizes, ids) are checked by the ranker."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(description="User to rank for; unknown users have no published history.")
    candidate_item_ids: list[str] = Field(description="Items to score, 1..max_candidates.")
    recent_item_ids: list[str] = Field(
        default_factory=list, description="Real-time behaviors not yet published, oldest first."
    )
    deadline_ms: int = Field(0, ge=0, le=2**32 - 1, description="Per-request deadline; 0 = none.")

    def to_query(self) -> RankQuery:
        return RankQuery(
            user_id=self.user_id,
            candidate_item_ids=self.candidate_item_ids,
            recent_item_ids=self.recent_item_ids,
            deadline_ms=self.deadline_ms or None,
        )


class RankResponseBody(BaseModel):
    """Mirrors `reaseq.v1.RankResponse`."""

    scores: list[float] = Field(description="One CTR score per candidate, in request order.")
    release: str
    model_version: str
    feature_version: str
    unknown_user: bool
    unknown_item_indices: list[int] = Field(description="Candidates scored with the default.")
    unknown_recent_indices: list[int] = Field(description="Recent behaviors that were ignored.")
    degraded: bool = Field(False, description="A fallback answered; reserved, false for now.")

    @classmethod
    def from_result(cls, result: RankResult) -> RankResponseBody:
        return cls(**result.response_fields())


class ErrorBody(BaseModel):
    error: str = Field(description="Error kind, e.g. invalid_request, not_ready.")
    message: str = Field(description="What was wrong and how to fix it.")


class HealthBody(BaseModel):
    status: str


class ReadyBody(BaseModel):
    status: str
    release: str | None = None
    model_version: str | None = None
    feature_version: str | None = None


def get_ranker(request: Request) -> Ranker:
    """The app's Ranker; absent only if the lifespan did not run or failed to open one."""
    ranker: Ranker | None = request.app.state.ranker
    if ranker is None:
        raise NotReady("the ranker is not open yet; wait for start-up to finish")
    return ranker


RankerDep = Annotated[Ranker, Depends(get_ranker)]
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 503, 504)
}

router = APIRouter()


@router.post(RANK_PATH, response_model=RankResponseBody, responses=ERROR_RESPONSES)
async def rank(body: RankRequestBody, ranker: RankerDep) -> RankResponseBody:
    """Score the candidates for one user, in request order."""
    start = perf_counter()
    try:
        result = await ranker.rank(body.to_query())
    except ReaseqError as err:
        metrics.observe_error("http", err, perf_counter() - start)
        raise
    except Exception as exc:
        log.exception("unexpected error while ranking over HTTP")
        metrics.observe_error("http", exc, perf_counter() - start)
        raise ReaseqError("internal error while ranking; see the server logs") from exc
    metrics.observe_result("http", result, perf_counter() - start)
    return RankResponseBody.from_result(result)


@router.get("/healthz", response_model=HealthBody)
async def healthz() -> HealthBody:
    """Liveness: the process answers; readiness is separate so a restart is never the fix."""
    return HealthBody(status="ok")


@router.get("/readyz", response_model=ReadyBody, responses={503: {"model": ErrorBody}})
async def readyz(ranker: RankerDep) -> ReadyBody:
    """Readiness: a release is loaded and the feature store answers."""
    try:
        await ranker.check_ready()
    except ReaseqError:
        raise
    except Exception as exc:
        raise NotReady(f"readiness check failed: {exc}") from exc
    versions = ranker.active_versions()
    if versions is None:
        return ReadyBody(status="ready")
    release, model_version, feature_version = versions
    return ReadyBody(
        status="ready",
        release=release,
        model_version=model_version,
        feature_version=feature_version,
    )


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text exposition of the default registry."""
    ranker: Ranker | None = request.app.state.ranker
    metrics.sync_active_release(ranker.active_versions() if ranker is not None else None)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _reaseq_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ReaseqError)
    return JSONResponse(
        ErrorBody(error=exc.kind, message=exc.message).model_dump(), status_code=exc.http_status
    )


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Malformed bodies are the caller's fault: 400 (not 422) in the same shape as other errors."""
    assert isinstance(exc, RequestValidationError)
    err = InvalidRequest(_describe(exc))
    if request.url.path == RANK_PATH:
        metrics.observe_error("http", err)
    return await _reaseq_error_handler(request, err)


def _describe(exc: RequestValidationError) -> str:
    """`candidate_item_ids[3]: Input should be a valid string; ...` from pydantic's error list."""
    parts = []
    for error in exc.errors()[:5]:
        if error.get("type") == "json_invalid":
            return "the request body is not valid JSON"
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "invalid request body: " + "; ".join(parts)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open a Ranker from settings unless one was injected; close only what was opened here."""
    opened: Ranker | None = None
    if app.state.ranker is None:
        opened = await Ranker.open(app.state.settings or ServiceSettings())
        app.state.ranker = opened
    try:
        yield
    finally:
        if opened is not None:
            app.state.ranker = None
            await opened.close()


def create_app(ranker: Ranker | None = None, settings: ServiceSettings | None = None) -> FastAPI:
    """Build the HTTP app; inject `ranker` to share one with gRPC (or in tests)."""
    app = FastAPI(title="ReaSeq Serving", version="1", lifespan=lifespan)
    app.state.ranker = ranker
    app.state.settings = settings  # read only by the lifespan, and only when it opens a Ranker
    app.include_router(router)
    app.add_exception_handler(ReaseqError, _reaseq_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    return app
