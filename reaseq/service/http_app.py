"""HTTP transport: `POST /v1/rank` with the same semantics as gRPC, plus health and metrics.

The app is built by a factory so tests and `server.serve` can inject one shared, already-open
Ranker; run standalone, the lifespan opens one from settings and closes it on shutdown.

Every error, from a bad id to an unknown path, is answered in one `ErrorBody` shape; bodies over
`http_max_body_bytes` are refused (413) before they are read in full, let alone parsed; the OpenAPI
schema carries the bounds of the settings the app was built with and only the statuses it returns;
/docs serves Swagger UI from the installed package, so it works offline.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Annotated, Any

import swagger_ui_bundle
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reaseq.service import metrics
from reaseq.service.errors import InvalidRequest, NotReady, ReaseqError, RequestTooLarge
from reaseq.service.query import MAX_ID_LENGTH, RankLimits, RankQuery, RankResult
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings

log = logging.getLogger(__name__)

RANK_PATH = "/v1/rank"
DOCS_ASSETS = "/docs/assets"
# What `query._check_id` accepts, for the schema: 1..128 characters, not all whitespace, no NUL,
# CR or LF. The ranker enforces it (one rule for both transports); the schema only states it.
ID_PATTERN = r"^[^\x00\n\r]*[^\s][^\x00\n\r]*$"
Id = Annotated[  # schema only: the ranker's checks, and messages, are the same over gRPC
    str,
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": ID_PATTERN}
    ),
]


class RankRequestBody(BaseModel):
    """Mirrors `reaseq.v1.RankRequest`; content rules (sizes, ids) are checked by the ranker, and
    the schema's list bounds are filled from the app's settings (`_document_limits`)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # as the schema says: no `false` -> 0

    user_id: Id = Field(description="User to rank for; unknown users have no published history.")
    candidate_item_ids: list[Id] = Field(description="Items to score, in the order to return.")
    recent_item_ids: list[Id] = Field(
        default_factory=list, description="Real-time behaviors not yet published, oldest first."
    )
    deadline_ms: int = Field(
        0, ge=0, le=2**32 - 1, strict=False, description="Per-request deadline; 0 = none."
    )

    @field_validator("deadline_ms", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        """JSON Schema's integer: 50 and 50.0, but not `false` or "50" (which lax mode takes)."""
        if isinstance(value, bool | str):
            raise ValueError("Input should be a valid integer")
        return value

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
    """The one shape of every error answer, whatever its status."""

    error: str = Field(
        description="Error kind: invalid_request, request_too_large, not_ready, "
        "feature_store_unavailable, model_backend_unavailable, invalid_model_output, "
        "deadline_exceeded, internal, not_found, method_not_allowed."
    )
    message: str = Field(description="What was wrong and how to fix it.")


class HealthBody(BaseModel):
    status: str


class ReadyBody(BaseModel):
    status: str
    release: str | None = None
    model_version: str | None = None
    feature_version: str | None = None
    detail: str | None = Field(
        None, description="Set when serving differs from what was published (e.g. a fallback)."
    )


def get_ranker(request: Request) -> Ranker:
    """The app's Ranker; absent only if the lifespan did not run or failed to open one."""
    ranker: Ranker | None = request.app.state.ranker
    if ranker is None:
        raise NotReady("the ranker is not open yet; wait for start-up to finish")
    return ranker


RankerDep = Annotated[Ranker, Depends(get_ranker)]
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad input: malformed JSON, bad ids, sizes."},
    413: {"model": ErrorBody, "description": "Body over http_max_body_bytes; not read."},
    500: {"model": ErrorBody, "description": "Internal error, e.g. a non-finite model score."},
    503: {"model": ErrorBody, "description": "No release loaded, or a backend is down."},
    504: {"model": ErrorBody, "description": "The request's deadline passed."},
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


@router.get("/readyz", response_model=ReadyBody, responses={503: ERROR_RESPONSES[503]})
async def readyz(ranker: RankerDep) -> ReadyBody:
    """Readiness: a release is loaded and the feature store answers."""
    try:
        await ranker.check_ready()
    except ReaseqError:
        raise
    except Exception as exc:  # the details (addresses, exception types) are for the logs only
        log.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
        raise NotReady("readiness check failed; see the server logs") from exc
    detail = ranker.readiness_detail()
    versions = ranker.active_versions()
    if versions is None:
        return ReadyBody(status="ready", detail=detail)
    release, model_version, feature_version = versions
    return ReadyBody(
        status="ready",
        release=release,
        model_version=model_version,
        feature_version=feature_version,
        detail=detail,
    )


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text exposition of the default registry."""
    ranker: Ranker | None = request.app.state.ranker
    metrics.sync_active_release(ranker.active_versions() if ranker is not None else None)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI from the `swagger-ui-bundle-v2` package's files: no CDN, works offline."""
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - API",
        swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # else it calls validator.swagger.io
    )


def _error_response(err: ReaseqError) -> JSONResponse:
    return JSONResponse(
        ErrorBody(error=err.kind, message=err.message).model_dump(), status_code=err.http_status
    )


async def _reaseq_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ReaseqError)
    return _error_response(exc)


def _is_json(request: Request) -> bool:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Malformed bodies are the caller's fault: 400 (not 422) in the same shape as other errors."""
    assert isinstance(exc, RequestValidationError)
    if request.url.path == RANK_PATH and not _is_json(request):
        err = InvalidRequest("the request body must be JSON sent as Content-Type: application/json")
    else:
        err = InvalidRequest(_describe(exc))
    if request.url.path == RANK_PATH:
        metrics.observe_error("http", err)
    return _error_response(err)


_HTTP_KINDS = {404: "not_found", 405: "method_not_allowed"}


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette/FastAPI's own errors (404, 405, unparseable bodies) in the one error shape."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI could not parse the body (e.g. JSON nested too deep)
        err: ReaseqError = InvalidRequest(
            "the request body is not valid JSON (malformed, or nested too deeply)"
        )
        if request.url.path == RANK_PATH:
            metrics.observe_error("http", err)
    else:
        err = ReaseqError(str(exc.detail))
        err.http_status = exc.status_code
        err.kind = _HTTP_KINDS.get(exc.status_code, f"http_{exc.status_code}")
    response = _error_response(err)
    for name, value in (exc.headers or {}).items():  # e.g. Allow on 405
        response.headers[name] = value
    return response


async def _internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug outside the ranking path: the caller gets the error shape, the log the traceback."""
    return _error_response(ReaseqError("internal error; see the server logs"))


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


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` get 413 before the app sees them.

    A declared Content-Length over the limit is refused unread; otherwise (chunked, or a length
    that lies) bytes are counted as they arrive and reading stops at the limit. A body within the
    limit is buffered here and handed on whole, which the JSON parser needs anyway.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "").strip()
        if declared and not (declared.isascii() and declared.isdigit()):
            bad = InvalidRequest("Content-Length is not a number")
            await self._refuse(scope, receive, send, bad)
            return
        if declared and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, self._too_large(f"{int(declared)} declared"))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left mid-body: nobody to answer
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send, self._too_large("more sent"))
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    def _too_large(self, seen: str) -> RequestTooLarge:
        return RequestTooLarge(
            f"the request body is over the limit of {self.max_bytes} bytes ({seen}): "
            "split it into smaller requests"
        )

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, err: ReaseqError) -> None:
        if scope.get("path") == RANK_PATH:
            metrics.observe_error("http", err)
        response = _error_response(err)
        response.headers["connection"] = "close"  # the unread rest of the body is not wanted
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields the buffered body once, then defers to the server (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _document_limits(app: FastAPI, limits: RankLimits) -> dict[str, Any]:
    """The OpenAPI schema, with the request bounds of this app's settings and without the 422
    FastAPI documents by default (bad input is 400 here, in `ErrorBody`)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    spec = FastAPI.openapi(app)
    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            op.get("responses", {}).pop("422", None)
    schemas = spec.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    props = schemas[RankRequestBody.__name__]["properties"]
    props["candidate_item_ids"].update(minItems=1, maxItems=limits.max_candidates)
    props["candidate_item_ids"]["description"] += f" 1..{limits.max_candidates} ids."
    props["recent_item_ids"].update(maxItems=limits.max_recent_behaviors)
    props["recent_item_ids"]["description"] += f" At most {limits.max_recent_behaviors} ids."
    app.openapi_schema = spec
    return spec


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
    """Build the HTTP app; inject `ranker` to share one with gRPC (or in tests).

    Limits (body size, schema bounds) come from `settings`, else from the ranker's, else from the
    defaults, so the schema always states what this app enforces.
    """
    if settings is None:
        settings = ranker.settings if ranker is not None else ServiceSettings()
    app = FastAPI(
        title="ReaSeq Serving", version="1", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.ranker = ranker
    app.state.settings = settings  # read only by the lifespan, and only when it opens a Ranker
    app.include_router(router)
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), "docs-assets")
    app.add_exception_handler(ReaseqError, _reaseq_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _internal_error_handler)
    app.add_middleware(BodyLimit, max_bytes=settings.http_max_body_bytes)
    limits = RankLimits(settings.max_candidates, settings.max_recent_behaviors)
    app.openapi = lambda: _document_limits(app, limits)  # type: ignore[method-assign]
    return app
