"""Locust load test of the ranking service: an HTTP user and a gRPC user sending the same
release-drawn traffic (`reaseq/bench/workload.py`), so one run loads both transports of one
server.

    locust -f loadtest/locustfile.py --headless -u 32 -r 8 -t 5m \\
        -H http://127.0.0.1:8000 --grpc-target 127.0.0.1:50051 --release-dir "$RELEASES"

Every option below also reads a LOCUST_* environment variable (LOCUST_RELEASE_DIR, ...). Name a
class to load one transport only (`... HttpRankUser`). A request counts as failed when the
service answers anything but HTTP 200 / gRPC OK, or an answer whose scores or unknown-id flags
are wrong (`RankCall.check`), so `--exit-code-on-error 1` fails a run on either.

gRPC times here include grpc's gevent mode (the client side of locust's documented gRPC
pattern), which slows down when CPU is short. Measured on the 2-core dev machine: 16 gRPC users
alone, p50 7 ms; the same beside 16 HTTP users in one process, p50 100-130 ms; while 16 locust
HTTP users loaded the server, `reaseq bench` (asyncio client) measured gRPC p50 25 ms and HTTP
44 ms. So this file's gRPC users prove load without errors; gRPC latency is `reaseq bench`'s.
"""

from __future__ import annotations

import argparse
import logging
import time
from itertools import count
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import FastHttpUser, User, events, task
from locust.env import Environment

from reaseq.bench.workload import (
    RankCall,
    ReleaseIds,
    TrafficConfig,
    UserTraffic,
    describe,
    grpc_answer_fields,
)
from reaseq.v1 import ranking_pb2, ranking_pb2_grpc

# gRPC's C core must yield to gevent, or one blocked call stalls every simulated user; locust has
# monkey-patched the standard library by now, and no channel exists yet (the order it needs)
grpc_gevent.init_gevent()

GRPC_METHOD = "/reaseq.v1.RankingService/Rank"
_state: dict[str, Any] = {}  # the release's ids and the traffic config, loaded once per process
_user_numbers = count()  # each simulated user gets its own random stream


@events.init_command_line_parser.add_listener
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The traffic's knobs, as locust options with LOCUST_* environment fallbacks."""
    defaults = TrafficConfig()
    group = parser.add_argument_group("ReaSeq traffic")
    options: list[tuple[str, type, Any, str]] = [
        ("release-dir", str, "", "release folder, or embedded store folder (its ACTIVE release)"),
        ("grpc-target", str, "127.0.0.1:50051", "host:port of the gRPC server"),
        ("candidates", int, defaults.candidates, "candidate items per request"),
        ("recent-items", int, defaults.recent_items, "at most this many recent_item_ids"),
        ("unknown-user-share", float, defaults.unknown_user_share, "sessions of unknown users"),
        ("unknown-item-share", float, defaults.unknown_item_share, "unknown item ids (share)"),
        ("zipf-exponent", float, defaults.zipf_exponent, "popularity skew; 0 = uniform"),
        ("session-requests", float, defaults.session_requests, "mean requests per session"),
        ("deadline-ms", int, defaults.deadline_ms, "deadline_ms of each request; 0 = none"),
        ("explain-share", float, defaults.explain_share, "share of requests with explain"),
        ("think-ms", float, 100.0, "pause between a user's requests: uniform 0..N ms"),
        ("call-timeout-s", float, 10.0, "client-side timeout per call (both transports)"),
        ("seed", int, defaults.seed, "random seed of the traffic"),
        ("token", str, "", "bearer token of a service with REASEQ_AUTH_TOKENS set"),
    ]
    for name, kind, default, text in options:
        group.add_argument(
            f"--{name}",
            type=kind,
            default=default,
            env_var=f"LOCUST_{name.upper().replace('-', '_')}",  # configargparse
            help=f"{text} (default {'' if name == 'token' else repr(default)})",
        )


@events.init.add_listener
def load_release(environment: Environment, **_kwargs: Any) -> None:
    """Read the release's ids once, before any user starts: a wrong path stops the run at once
    (SystemExit passes through locust's event handling) instead of failing every request."""
    opts = environment.parsed_options
    if opts is None:  # locust used as a library: the caller sets _state itself
        return
    if not opts.release_dir:
        raise SystemExit("no release: pass --release-dir (or LOCUST_RELEASE_DIR)")
    try:
        cfg = TrafficConfig(
            candidates=opts.candidates,
            recent_items=opts.recent_items,
            unknown_user_share=opts.unknown_user_share,
            unknown_item_share=opts.unknown_item_share,
            zipf_exponent=opts.zipf_exponent,
            session_requests=opts.session_requests,
            deadline_ms=opts.deadline_ms,
            explain_share=opts.explain_share,
            seed=opts.seed,
        )
        ids = ReleaseIds.from_release(Path(opts.release_dir), seed=opts.seed)
    except Exception as err:  # a missing or broken release, or a bad option value
        raise SystemExit(f"load test setup failed: {err}") from err
    _state.update(cfg=cfg, ids=ids, think_s=opts.think_ms / 1000, timeout_s=opts.call_timeout_s)
    _state["grpc_target"] = opts.grpc_target
    # the token, as both transports send it (an empty one: the service's auth is off)
    _state["authorization"] = f"Bearer {opts.token}" if opts.token else ""
    logging.info("traffic: %s", describe(cfg, ids))


class RankUser(User):
    """What both transports share: the traffic, the think time and the "click" feedback."""

    abstract = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        rng = np.random.default_rng([_state["cfg"].seed, next(_user_numbers)])
        self.traffic = UserTraffic(_state["ids"], _state["cfg"], rng)

    def wait_time(self) -> float:
        return float(self.traffic.rng.uniform(0.0, _state["think_s"]))


class HttpRankUser(FastHttpUser, RankUser):
    """POST /v1/rank over keep-alive HTTP (locust's geventhttpclient-based FastHttpUser)."""

    host = "http://127.0.0.1:8000"  # -H / --host overrides it

    def __init__(self, environment: Environment) -> None:
        # read by FastHttpUser.__init__ when it builds the client
        self.network_timeout = self.connection_timeout = _state["timeout_s"]
        super().__init__(environment)

    @task
    def rank(self) -> None:
        call = self.traffic.next_call()
        headers = {"Authorization": auth} if (auth := _state["authorization"]) else None
        with self.client.post(
            "/v1/rank", json=call.body, name="/v1/rank", headers=headers, catch_response=True
        ) as response:
            if response.status_code != 200:  # 0: no answer at all (refused, timed out)
                detail = (response.text or str(response.error or ""))[:200]
                response.failure(f"HTTP {response.status_code}: {' '.join(detail.split())}")
                return
            answer = response.json()
            problem = call.check(answer)
            if problem is not None:
                response.failure(problem)
                return
            response.success()
        self.traffic.observe(call, answer["scores"])


class RpcFailed(Exception):
    """A non-OK gRPC status as one line, "CODE: details": locust groups failures by their text,
    and a raw RpcError's text carries a timestamp, so each would be a failure of its own."""


class WrongAnswer(Exception):
    """An OK answer that `RankCall.check` refused."""


class RankingGrpcClient:
    """The Rank stub wrapped as locust documents for other protocols: every call fires a
    `request` event with its time, size and exception (None when OK and correct)."""

    def __init__(self, environment: Environment, target: str, timeout_s: float) -> None:
        self.environment, self.timeout_s = environment, timeout_s
        self.channel = grpc.insecure_channel(target)
        self.stub = ranking_pb2_grpc.RankingServiceStub(self.channel)

    def rank(self, call: RankCall) -> dict[str, Any] | None:
        """The answer's fields, or None when the call failed (already reported to locust)."""
        request = ranking_pb2.RankRequest(**call.body)
        exception: Exception | None = None
        answer: dict[str, Any] | None = None
        length = 0
        start = time.perf_counter()
        try:
            metadata = (("authorization", auth),) if (auth := _state["authorization"]) else None
            response = self.stub.Rank(request, timeout=self.timeout_s, metadata=metadata)
        except grpc.RpcError as err:
            elapsed_ms = (time.perf_counter() - start) * 1000
            exception = RpcFailed(f"{err.code().name}: {' '.join(str(err.details()).split())}")
        else:
            elapsed_ms = (time.perf_counter() - start) * 1000
            length = response.ByteSize()
            answer = grpc_answer_fields(response)
            problem = call.check(answer)
            if problem is not None:
                exception, answer = WrongAnswer(problem), None
        self.environment.events.request.fire(
            request_type="grpc",
            name=GRPC_METHOD,
            response_time=elapsed_ms,
            response_length=length,
            response=answer,
            context={},
            exception=exception,
        )
        return answer

    def close(self) -> None:
        self.channel.close()


class GrpcRankUser(RankUser):
    """reaseq.v1.RankingService/Rank over one insecure channel per simulated user."""

    def on_start(self) -> None:
        self.client = RankingGrpcClient(
            self.environment, _state["grpc_target"], _state["timeout_s"]
        )

    def on_stop(self) -> None:
        self.client.close()

    @task
    def rank(self) -> None:
        call = self.traffic.next_call()
        answer = self.client.rank(call)
        if answer is not None:
            self.traffic.observe(call, answer["scores"])
