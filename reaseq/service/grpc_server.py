"""gRPC transport: `reaseq.v1.RankingService/Rank`, the standard health service, and reflection.

With tokens configured (service/access.py) an interceptor checks `authorization` metadata before
any handler runs or any request byte is parsed; with TLS configured the port speaks TLS only.

The servicer only converts messages and maps errors; ranking semantics live in the Ranker, shared
with the HTTP transport. Rank takes the request as raw bytes and parses it itself, so bytes that are
not a RankRequest (or strings that are not UTF-8) are the caller's INVALID_ARGUMENT, counted like
any bad input, rather than grpcio's UNKNOWN with a logged traceback.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from reaseq.service import metrics
from reaseq.service.access import Access, TokenCheck
from reaseq.service.errors import CannotBind, InvalidRequest, ReaseqError, Unauthenticated
from reaseq.service.query import RankQuery, RankResult
from reaseq.service.ranking import Ranker
from reaseq.v1 import ranking_pb2

log = logging.getLogger(__name__)

SERVICE_NAME: str = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name
RANK_METHOD = f"/{SERVICE_NAME}/Rank"
TOKEN_HOW = "the metadata `authorization: Bearer <token>`"
HEALTH_REFRESH_S = 1.0
_background: set[asyncio.Task[None]] = set()  # strong references to the health refreshers


def to_query(request: ranking_pb2.RankRequest, time_remaining_s: float | None) -> RankQuery:
    """Proto -> RankQuery; the tighter of `deadline_ms` and the call's own deadline applies."""
    deadline_ms = request.deadline_ms or None
    if time_remaining_s is not None:
        # at least 1 ms: 0 would mean "no deadline"; the ranker then fails fast with its own error
        call_ms = max(1, math.floor(time_remaining_s * 1000))
        deadline_ms = call_ms if deadline_ms is None else min(deadline_ms, call_ms)
    return RankQuery(
        user_id=request.user_id,
        candidate_item_ids=list(request.candidate_item_ids),
        recent_item_ids=list(request.recent_item_ids),
        deadline_ms=deadline_ms,
        explain=request.explain,
    )


def to_response(result: RankResult) -> ranking_pb2.RankResponse:
    return ranking_pb2.RankResponse(**result.response_fields())


def parse_request(data: bytes) -> ranking_pb2.RankRequest:
    """Wire bytes -> RankRequest; anything unparseable is the caller's InvalidRequest."""
    try:
        return ranking_pb2.RankRequest.FromString(data)
    except DecodeError as err:
        why = (
            "a string field is not valid UTF-8"
            if "UTF-8" in str(err)
            else "the bytes are not protobuf wire format"
        )
        raise InvalidRequest(f"the request is not a valid reaseq.v1.RankRequest: {why}") from None


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, msg: str) -> NoReturn:
    await context.abort(code, msg)
    raise AssertionError("context.abort returned")  # it always raises


class RankingServicer:
    """Converts messages and maps errors; one instance per server, sharing the app's Ranker."""

    def __init__(self, ranker: Ranker) -> None:
        self._ranker = ranker

    async def Rank(
        self, data: bytes, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        """`data` is the raw request: parsing here makes a malformed one an ordinary bad input."""
        start = perf_counter()
        try:
            request = parse_request(data)
            result = await self._ranker.rank(to_query(request, context.time_remaining()))
        except ReaseqError as err:
            metrics.observe_error("grpc", err, perf_counter() - start)
            await _abort(context, err.grpc_code, err.message)
        except Exception as exc:
            log.exception("unexpected error while ranking over gRPC")
            metrics.observe_error("grpc", exc, perf_counter() - start)
            await _abort(
                context, grpc.StatusCode.INTERNAL, "internal error while ranking; see server logs"
            )
        metrics.observe_result("grpc", result, perf_counter() - start)
        return to_response(result)


class ReadinessHealthServicer(health.aio.HealthServicer):
    """Standard health service whose status follows `ranker.is_ready()`.

    Check refreshes on every call, so probes are exact; a background task refreshes every second
    for Watch subscribers.
    """

    def __init__(self, ranker: Ranker) -> None:
        super().__init__()
        self._ranker = ranker

    async def refresh(self) -> None:
        ready = self._ranker.is_ready()
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self.set(service, status)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        await self.refresh()
        return await super().Check(request, context)

    async def watch_until_stopped(self, server: grpc.aio.Server) -> None:
        """Refresh every second until the server terminates, then report NOT_SERVING."""
        try:
            while True:
                try:
                    await self.refresh()
                except Exception:
                    log.exception("health refresh failed; retrying")
                # wait_for_termination returns True on timeout, False once the server stopped
                if not await server.wait_for_termination(timeout=HEALTH_REFRESH_S):
                    return
        finally:
            await self.enter_graceful_shutdown()


class _NoMetadataValues(logging.Filter):
    """grpcio logs a metadata value that is not UTF-8 whole, with a traceback, at ERROR, for every
    call that sends one: a credential in the log, and a log any client can flood. The value is
    read as Latin-1 and the call goes on (a token in it is then refused), so the record is
    dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Invalid encoding on")


_GRPC_CYTHON_LOG = logging.getLogger("grpc._cython.cygrpc")
if not any(isinstance(f, _NoMetadataValues) for f in _GRPC_CYTHON_LOG.filters):
    _GRPC_CYTHON_LOG.addFilter(_NoMetadataValues())


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid `authorization: Bearer <token>` with UNAUTHENTICATED.

    Reflection is always open (the API description), health unless `protect_ops`. A refused
    call is answered by a handler of the same kind that takes the request as raw bytes and never
    reads it, so nothing a caller without a token sends is parsed.
    """

    def __init__(self, tokens: TokenCheck) -> None:
        self._tokens = tokens
        self._open = {reflection.SERVICE_NAME}
        if not tokens.protect_ops:
            self._open.add(health.SERVICE_NAME)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.lstrip("/").partition("/")[0] in self._open:
            return handler  # an unknown method stays UNIMPLEMENTED
        values = [
            value
            for key, value in handler_call_details.invocation_metadata or ()
            if key == "authorization"
        ]
        try:
            first = values[0] if values else None
            self._tokens.verify(first if isinstance(first, str) else None, TOKEN_HOW)
        except Unauthenticated as err:
            if method == RANK_METHOD:
                metrics.observe_error("grpc", err)
            return _refusal(handler, err)
        return handler


def _refusal(handler: grpc.RpcMethodHandler, err: ReaseqError) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind that aborts with `err` at once."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> NoReturn:
        await _abort(context, err.grpc_code, err.message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await _abort(context, err.grpc_code, err.message)
        yield  # unreachable: makes this the async generator a streaming handler must be

    kinds = {
        (False, False): (grpc.unary_unary_rpc_method_handler, refuse),
        (True, False): (grpc.stream_unary_rpc_method_handler, refuse),
        (False, True): (grpc.unary_stream_rpc_method_handler, refuse_stream),
        (True, True): (grpc.stream_stream_rpc_method_handler, refuse_stream),
    }
    make, behavior = kinds[handler.request_streaming, handler.response_streaming]
    return make(behavior, request_deserializer=None, response_serializer=None)


def add_ranking_service(servicer: RankingServicer, server: grpc.aio.Server) -> None:
    """Register Rank with no request deserializer (the servicer parses), same method path."""
    handlers = {
        "Rank": grpc.unary_unary_rpc_method_handler(
            servicer.Rank,
            request_deserializer=None,
            response_serializer=ranking_pb2.RankResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def build_grpc_server(
    ranker: Ranker, host: str, port: int, access: Access | None = None
) -> tuple[grpc.aio.Server, int]:
    """Create (not start) the server; returns it and the bound port (port 0 picks a free one).

    `access` (tokens, TLS) defaults to what the ranker's settings say. Call from inside the
    running event loop: the health refresher is started as a task on it.
    """
    if access is None:
        access = Access.from_settings(ranker.settings)
    interceptors = [BearerTokenInterceptor(access.tokens)] if access.tokens.enabled else []
    # grpcio sets SO_REUSEPORT by default: a second server on the port would silently take half
    # the connections. Off, a taken port is a bind error instead.
    server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    add_ranking_service(RankingServicer(ranker), server)
    health_servicer = ReadinessHealthServicer(ranker)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if access.grpc_tls is None:
            bound = server.add_insecure_port(_address(host, port))
        else:  # the credentials were checked by Access: a failure here is the address's
            bound = server.add_secure_port(
                _address(host, port), access.grpc_tls.server_credentials()
            )
    except RuntimeError:  # grpcio >= 1.66 raises; older versions return 0
        bound = 0
    if bound == 0:
        raise CannotBind(
            f"gRPC cannot listen on {_address(host, port)}: the port is in use or the address "
            "is not local"
        )
    task = asyncio.get_running_loop().create_task(health_servicer.watch_until_stopped(server))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return server, bound
