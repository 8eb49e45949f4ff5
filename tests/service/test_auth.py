"""Bearer-token authentication on both transports, against real servers.

Off by default. With tokens: HTTP answers 401 + `WWW-Authenticate: Bearer` in the one error shape,
gRPC UNAUTHENTICATED, for a missing, malformed, wrong or unreadable (non-ASCII, control bytes)
credential; /healthz, the API description and gRPC reflection stay open, /readyz, /metrics and
gRPC health too unless `auth_protect_ops`; tokens come from `auth_tokens` and/or a file, are
checked at start-up, and never appear in a log line, an error message or the settings' repr.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from reaseq.bench.client import bench, bench_switch
from reaseq.service.access import Access, TokenCheck
from reaseq.service.errors import AccessConfigError
from reaseq.service.grpc_server import RANK_METHOD, SERVICE_NAME, build_grpc_server
from reaseq.service.http_app import RANK_PATH, create_app
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings
from reaseq.v1 import ranking_pb2, ranking_pb2_grpc
from tests.service.service_proc import ServiceProcess
from tests.service.tiny_service import ITEMS, RANK_BODY, USER, publish_tiny, tiny_settings

pytestmark = pytest.mark.anyio

TOKEN = secrets.token_urlsafe(32)
SECOND_TOKEN = secrets.token_hex(20)  # a second accepted token: rotation
WRONG = secrets.token_urlsafe(32)
ERROR_KEYS = {"error", "message"}


def errors_total(kind: str) -> float:
    return REGISTRY.get_sample_value("reaseq_errors_total", {"kind": kind}) or 0.0


def no_secret_in(text: str) -> None:
    for secret in (TOKEN, SECOND_TOKEN, WRONG):
        assert secret not in text, "a token leaked"


@pytest.fixture
def releases(tmp_path: Path) -> Path:
    return publish_tiny(tmp_path)


async def open_ranker(releases: Path, **access: Any) -> Ranker:
    ranker = await Ranker.open(tiny_settings(releases, **access), follow=False)
    assert ranker.is_ready()
    return ranker


@pytest.fixture
def protect_ops() -> bool:
    """auth_protect_ops of the `ranker` fixture; tests about it parametrize both values."""
    return False


BOTH_OPS = pytest.mark.parametrize("protect_ops", [False, True], ids=["ops-open", "ops-protected"])


@pytest.fixture
async def ranker(releases: Path, protect_ops: bool) -> AsyncIterator[Ranker]:
    opened = await open_ranker(
        releases, auth_tokens=f"{TOKEN}, {SECOND_TOKEN}", auth_protect_ops=protect_ops
    )
    yield opened
    await opened.close()


@pytest.fixture
async def http(ranker: Ranker) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(ranker))
    async with httpx.AsyncClient(transport=transport, base_url="http://reaseq.test") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --- settings ---------------------------------------------------------------------------------


def test_off_by_default(releases: Path) -> None:
    assert not TokenCheck.from_settings(tiny_settings(releases)).enabled
    assert not TokenCheck.from_settings(tiny_settings(releases, auth_tokens="")).enabled
    assert Access.from_settings(tiny_settings(releases)).describe() == (
        "no authentication, gRPC plaintext"
    )


def test_tokens_from_environment_and_file(
    releases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# mounted from a Secret\n\n  {SECOND_TOKEN}  \n")
    monkeypatch.setenv("REASEQ_AUTH_TOKENS", f" {TOKEN} ,")
    monkeypatch.setenv("REASEQ_AUTH_TOKENS_FILE", str(tokens_file))
    monkeypatch.setenv("REASEQ_AUTH_PROTECT_OPS", "true")
    settings = ServiceSettings(_env_file=None)  # type: ignore[call-arg]
    check = TokenCheck.from_settings(settings)
    assert check.protect_ops
    assert set(check.digests) == {
        hashlib.sha256(t.encode()).digest() for t in (TOKEN, SECOND_TOKEN)
    }
    no_secret_in(repr(check))
    for token in (TOKEN, SECOND_TOKEN):
        check.verify(f"Bearer {token}", "a header")  # accepted: no exception
    no_secret_in(repr(settings) + str(settings.model_dump()))
    access = Access.from_settings(settings)
    assert access.describe() == "bearer tokens required (2 accepted; ops too), gRPC plaintext"


@pytest.mark.parametrize(
    ("access", "needle"),
    [
        ({"auth_tokens": "short-token"}, "token 1 of 1 is 11 characters; use 16 to 4096"),
        ({"auth_tokens": f"{TOKEN},{TOKEN[:10]}"}, "token 2 of 2 is 10 characters"),
        ({"auth_tokens": f"{TOKEN[:20]} {TOKEN[20:]}"}, "characters a bearer token cannot carry"),
        ({"auth_tokens": f"{TOKEN}é"}, "characters a bearer token cannot carry"),
        ({"auth_tokens": " , "}, "auth_tokens (REASEQ_AUTH_TOKENS) is set but holds no token"),
        ({"auth_tokens_file": "missing"}, "auth_tokens_file missing: cannot read it"),
        ({"auth_tokens_file": "empty"}, "holds no token: authentication would accept nothing"),
        ({"auth_tokens_file": "latin1"}, "is not ASCII text"),
        ({"auth_protect_ops": True}, "auth_protect_ops is set but no token is configured"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unusable_token_settings_fail_at_start_up(
    releases: Path, tmp_path: Path, access: dict[str, Any], needle: str
) -> None:
    files = {"missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    files["latin1"] = tmp_path / "latin1"
    files["empty"].write_text("# nothing yet\n\n")
    files["latin1"].write_bytes(TOKEN.encode() + b"\xe9\n")
    if "auth_tokens_file" in access:
        access = {"auth_tokens_file": files[access["auth_tokens_file"]]}
    with pytest.raises(AccessConfigError) as info:
        Access.from_settings(tiny_settings(releases, **access))
    message = str(info.value).replace(str(tmp_path) + "/", "")
    assert needle in message, message
    no_secret_in(message)
    assert TOKEN[:10] not in message


async def test_the_tokens_file_is_read_at_start_up(releases: Path, tmp_path: Path) -> None:
    """Rotating means restarting: a token written to the file later is not accepted."""
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(TOKEN + "\n")
    ranker = await open_ranker(releases, auth_tokens_file=tokens_file)
    try:
        transport = httpx.ASGITransport(app=create_app(ranker))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            tokens_file.write_text(SECOND_TOKEN + "\n")
            old = await http.post(RANK_PATH, json=RANK_BODY, headers=bearer(TOKEN))
            assert old.status_code == 200
            new = await http.post(RANK_PATH, json=RANK_BODY, headers=bearer(SECOND_TOKEN))
            assert_unauthenticated(new, presented=True)
    finally:
        await ranker.close()


# --- HTTP -------------------------------------------------------------------------------------


def assert_unauthenticated(response: httpx.Response, presented: bool) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="reaseq"')
    assert ('error="invalid_token"' in challenge) == presented
    body = response.json()
    assert set(body) == ERROR_KEYS and body["error"] == "unauthenticated"
    assert "Authorization: Bearer <token>" in body["message"]
    no_secret_in(response.text)
    return body


@pytest.mark.parametrize(
    ("headers", "presented", "says"),
    [
        ({}, False, "this service needs a token"),
        ({"authorization": ""}, False, "this service needs a token"),
        (bearer(WRONG), True, "the bearer token is not valid"),
        (bearer(TOKEN[:-1]), True, "the bearer token is not valid"),
        (bearer(TOKEN + "x"), True, "the bearer token is not valid"),
        ({"authorization": f"Basic {TOKEN}"}, True, "not a bearer token"),
        ({"authorization": TOKEN}, True, "not a bearer token"),
        ({"authorization": "Bearer"}, True, "not a bearer token"),
        ({"authorization": "Bearer    "}, True, "not a bearer token"),
        ({"authorization": f"Bearer {TOKEN}".encode() + b"\xff\xfe"}, True, "not valid"),
        ({"authorization": "Bearer tökén-with-ümlauts".encode()}, True, "not valid"),
        ({"authorization": b"Bearer \x00\x01\x7f"}, True, "not valid"),
    ],
    ids=[
        "missing",
        "empty",
        "wrong",
        "prefix",
        "longer",
        "basic",
        "no-scheme",
        "scheme-only",
        "scheme-spaces",
        "invalid-utf8",
        "non-ascii",
        "control-bytes",
    ],
)
async def test_http_without_a_valid_token_is_401(
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, Any],
    presented: bool,
    says: str,
) -> None:
    before = errors_total("unauthenticated")
    with caplog.at_level(logging.DEBUG):
        response = await http.post(RANK_PATH, json=RANK_BODY, headers=headers)
    body = assert_unauthenticated(response, presented)
    assert says in body["message"]
    assert response.headers["connection"] == "close"
    assert errors_total("unauthenticated") == before + 1
    no_secret_in(caplog.text)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("token", [TOKEN, SECOND_TOKEN])
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_http_with_a_valid_token_ranks(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, token: str, scheme: str
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = await http.post(
            RANK_PATH, json=RANK_BODY, headers={"authorization": f"{scheme}  {token} "}
        )
    assert response.status_code == 200, response.text
    assert len(response.json()["scores"]) == 3
    no_secret_in(caplog.text)


async def test_http_checks_the_token_before_reading_the_body(http: httpx.AsyncClient) -> None:
    """An unauthenticated caller cannot make the service read (or parse) its body: a body over
    the limit is 401, not 413, and a malformed one is 401, not 400."""
    oversized = b"x" * (3 * 1024 * 1024)
    assert_unauthenticated(await http.post(RANK_PATH, content=oversized), presented=False)
    assert_unauthenticated(await http.post(RANK_PATH, content=b"{not json"), presented=False)
    response = await http.post(RANK_PATH, content=oversized, headers=bearer(TOKEN))
    assert response.status_code == 413


@BOTH_OPS
async def test_http_open_and_protected_paths(http: httpx.AsyncClient, protect_ops: bool) -> None:
    for path in ("/healthz", "/openapi.json", "/docs", "/docs/assets/swagger-ui.css"):
        assert (await http.get(path)).status_code == 200, path
    for path in ("/readyz", "/metrics"):
        response = await http.get(path)
        if protect_ops:
            assert_unauthenticated(response, presented=False)
            assert (await http.get(path, headers=bearer(TOKEN))).status_code == 200
        else:
            assert response.status_code == 200, path
    # an unknown path says nothing about what exists until the caller has a token
    assert_unauthenticated(await http.get("/v1/secret"), presented=False)
    response = await http.get("/v1/secret", headers=bearer(TOKEN))
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    response = await http.get(RANK_PATH, headers=bearer(TOKEN))
    assert response.status_code == 405


@BOTH_OPS
async def test_openapi_documents_the_bearer_scheme_where_it_applies(
    http: httpx.AsyncClient, protect_ops: bool
) -> None:
    spec = (await http.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    paths = spec["paths"]
    guarded = {path: "security" in next(iter(ops.values())) for path, ops in paths.items()}
    assert guarded == {RANK_PATH: True, "/readyz": protect_ops, "/healthz": False}
    for path, needs in guarded.items():
        op = next(iter(paths[path].values()))
        assert ("401" in op["responses"]) == needs
        if needs:
            assert op["security"] == [{"bearerAuth": []}]
            schema = op["responses"]["401"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}


async def test_openapi_without_tokens_has_no_security(releases: Path) -> None:
    spec = create_app(settings=tiny_settings(releases)).openapi()
    assert "securitySchemes" not in spec["components"]
    for ops in spec["paths"].values():
        for op in ops.values():
            assert "security" not in op and "401" not in op["responses"]


# --- gRPC -------------------------------------------------------------------------------------


@pytest.fixture
async def grpc_port(ranker: Ranker) -> AsyncIterator[int]:
    server, port = build_grpc_server(ranker, "127.0.0.1", 0)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


@pytest.fixture
async def channel(grpc_port: int) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
        yield ch


def rank_request() -> ranking_pb2.RankRequest:
    return ranking_pb2.RankRequest(user_id=USER, candidate_item_ids=ITEMS[:3])


def metadata(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", value),)


@pytest.mark.parametrize(
    ("sent", "says"),
    [
        ((), "this service needs a token"),
        (metadata(""), "this service needs a token"),
        (metadata(f"Bearer {WRONG}"), "the bearer token is not valid"),
        (metadata(f"Basic {TOKEN}"), "not a bearer token"),
        (metadata("Bearer"), "not a bearer token"),
        (metadata(f"Bearer {TOKEN} trailing"), "the bearer token is not valid"),
        ((("authorization-bin", TOKEN.encode()),), "this service needs a token"),
        ((("x-token", TOKEN),), "this service needs a token"),
    ],
    ids=["missing", "empty", "wrong", "basic", "scheme-only", "trailing", "binary-key", "other"],
)
async def test_grpc_without_a_valid_token_is_unauthenticated(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture, sent: Any, says: str
) -> None:
    stub = ranking_pb2_grpc.RankingServiceStub(channel)
    before = errors_total("unauthenticated")
    with caplog.at_level(logging.DEBUG), pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Rank(rank_request(), metadata=sent, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value.details()
    details = info.value.details() or ""
    assert says in details and "authorization: Bearer <token>" in details
    no_secret_in(details + caplog.text)
    assert errors_total("unauthenticated") == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_grpc_reads_no_request_without_a_token(channel: grpc.aio.Channel) -> None:
    """Bytes that are not a RankRequest: UNAUTHENTICATED without a token (never parsed),
    INVALID_ARGUMENT with one."""
    raw = channel.unary_unary(RANK_METHOD, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\xff\xff\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\xff\xff\xff\xff", metadata=metadata(f"Bearer {TOKEN}"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("token", [TOKEN, SECOND_TOKEN])
async def test_grpc_with_a_valid_token_ranks(channel: grpc.aio.Channel, token: str) -> None:
    stub = ranking_pb2_grpc.RankingServiceStub(channel)
    reply = await stub.Rank(rank_request(), metadata=metadata(f"Bearer {token}"), timeout=10)
    assert len(reply.scores) == 3


@BOTH_OPS
async def test_grpc_health_is_open_unless_ops_are_protected(
    channel: grpc.aio.Channel, protect_ops: bool
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    token = metadata(f"Bearer {TOKEN}")
    assert (await stub.Check(request, metadata=token, timeout=10)).status == serving
    if not protect_ops:
        assert (await stub.Check(request, timeout=10)).status == serving
        return
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    watch = stub.Watch(request, timeout=10)  # a server-streaming method is refused the same way
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await watch.read()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    watch = stub.Watch(request, metadata=token, timeout=10)
    assert (await watch.read()).status == serving
    watch.cancel()


async def test_grpc_reflection_stays_open(channel: grpc.aio.Channel) -> None:
    """The API description, like /openapi.json: a bidirectional stream, no token."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(timeout=10)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    await call.done_writing()
    names = {s.name for s in reply.list_services_response.service}
    assert SERVICE_NAME in names


def raw_grpc_call(port: int, path: str, authorization: bytes) -> dict[bytes, bytes]:
    """One unary call over plain HTTP/2 with an `authorization` value no gRPC client sends
    (grpcio refuses non-ASCII metadata); returns the response's trailers (grpc-status)."""
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    body = rank_request().SerializeToString()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", f"127.0.0.1:{port}".encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"authorization", authorization),
    ]
    conn.send_headers(1, headers)
    conn.send_data(1, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
    trailers: dict[bytes, bytes] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            assert data, "the server closed the connection without an answer"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    trailers |= dict(event.headers)  # Trailers-Only responses carry the status
                if isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream reset: {event.error_code}")
                if isinstance(event, h2.events.StreamEnded):
                    return trailers
            sock.sendall(conn.data_to_send())


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer " + TOKEN.encode() + b"\xff",
        "Bearer tökén".encode(),
        b"Bearer \xc3\x28\xa0\xa1",
        b"Bearer \x01\x02\x7f",
        b"\xff\xfe\xfd",
        "Bearer 令牌令牌令牌令牌令牌令牌".encode(),
    ],
    ids=["token-then-0xff", "utf8-non-ascii", "invalid-utf8", "control", "garbage", "cjk"],
)
async def test_grpc_garbage_metadata_is_unauthenticated_never_unknown(
    grpc_port: int, caplog: pytest.LogCaptureFixture, value: bytes
) -> None:
    with caplog.at_level(logging.DEBUG):
        trailers = await asyncio.to_thread(raw_grpc_call, grpc_port, RANK_METHOD, value)
    assert trailers.get(b"grpc-status") == str(grpc.StatusCode.UNAUTHENTICATED.value[0]).encode()
    server = [r for r in caplog.records if not r.name.startswith(("h2", "hpack"))]  # not ours
    no_secret_in(trailers.get(b"grpc-message", b"").decode(errors="replace"))
    no_secret_in(str([(r.getMessage(), r.exc_text) for r in server]))
    assert not [r.getMessage() for r in server if r.levelno >= logging.WARNING or r.exc_info]
    # the same raw path with the right token ranks: the helper sends what a client would
    ok = await asyncio.to_thread(raw_grpc_call, grpc_port, RANK_METHOD, f"Bearer {TOKEN}".encode())
    assert ok.get(b"grpc-status") == b"0", ok


# --- the bench client, and a whole server process ---------------------------------------------


async def test_bench_client_sends_the_token(grpc_port: int) -> None:
    target = f"127.0.0.1:{grpc_port}"
    args: dict[str, Any] = {"n_candidates": 3, "n_recent": 1, "requests": 6, "warmup": 0}
    report = await bench("grpc", target, [USER], ITEMS, token=TOKEN, **args)
    assert report["ok"] == 6 and report["errors"] == 0
    report = await bench("grpc", target, [USER], ITEMS, **args)
    assert report["ok"] == 0 and report["first_error"].startswith("UNAUTHENTICATED:")
    stats = await bench_switch(
        target, [USER], ITEMS, lambda: None, duration_s=1.0, switch_at_s=0.5, token=TOKEN,
        n_candidates=3, n_recent=1, concurrency=2,
    )  # fmt: skip
    assert stats["errors"] == 0 and stats["releases_seen"] == ["tiny"]


@pytest.fixture
def token_service(releases: Path, tmp_path: Path) -> Iterator[ServiceProcess]:
    """`reaseq serve` with its token in a file, as a mounted Secret gives it."""
    tokens_file = tmp_path / "secret" / "tokens"
    tokens_file.parent.mkdir()
    tokens_file.write_text(TOKEN + "\n")
    env = {"REASEQ_AUTH_TOKENS_FILE": str(tokens_file)}
    command = [sys.executable, "-m", "reaseq.cli", "serve"]
    proc = ServiceProcess(releases, tmp_path / "logs", env=env, command=command).start()
    try:
        proc.wait_alive()
        yield proc
    finally:
        proc.stop()


def without_service_settings() -> dict[str, str]:
    """This environment minus REASEQ_* (PYTHONPATH stays: the subprocess imports this tree)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("REASEQ_")}


@pytest.mark.timeout(180)
def test_a_served_process_enforces_the_token_and_never_logs_it(
    token_service: ServiceProcess, releases: Path, tmp_path: Path
) -> None:
    url = token_service.base_url
    response = httpx.post(f"{url}{RANK_PATH}", json=RANK_BODY, timeout=10)
    assert response.status_code == 401 and response.headers["www-authenticate"]
    response = httpx.post(f"{url}{RANK_PATH}", json=RANK_BODY, headers=bearer(TOKEN), timeout=10)
    assert response.status_code == 200, response.text
    # the CLI's bench: the token from $REASEQ_TOKEN over gRPC; none over HTTP fails in words
    grpc_target = f"127.0.0.1:{token_service.grpc_port}"
    for transport, target, token in (("grpc", grpc_target, TOKEN), ("http", url, None)):
        command = [sys.executable, "-m", "reaseq.cli", "bench", "--transport", transport]
        command += ["--target", target, "--ids-from", str(releases / "tiny"), "--requests", "5"]
        command += ["--candidates", "3", "--recent", "1"]
        env = without_service_settings() | ({"REASEQ_TOKEN": token} if token else {})
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        if token:
            assert done.returncode == 0, done.stdout + done.stderr
            assert '"errors": 0' in done.stdout
        else:
            assert done.returncode == 1, done.stdout + done.stderr
            assert "5 requests failed; first: HTTP 401" in done.stderr, done.stderr
    token_service.stop()
    log = token_service.stderr()
    assert "bearer tokens required (1 accepted; ops open), gRPC plaintext" in log
    no_secret_in(log)
    assert "Traceback" not in log


@pytest.mark.timeout(60)
def test_a_bad_token_setting_stops_start_up_with_one_line(releases: Path, tmp_path: Path) -> None:
    env = {"REASEQ_AUTH_TOKENS": f"{TOKEN},{TOKEN[:8]}"}
    proc = ServiceProcess(releases, tmp_path / "logs", env=env).start()
    try:
        assert proc.wait_exit(50) == 2, proc.stderr()
    finally:
        proc.stop()
    log = proc.stderr()
    assert "token 2 of 2 is 8 characters" in log, log
    assert "Traceback" not in log and "serving" not in log
    no_secret_in(log)
    assert TOKEN[:8] not in log


@pytest.fixture(scope="module")
def protected_service(
    pipeline_run: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A real server with the pipeline's release (explanations too), tokens and protected ops."""
    from reaseq.offline.publish import EmbeddedPublisher

    store = tmp_path_factory.mktemp("auth-st") / "releases"
    EmbeddedPublisher(store).publish(pipeline_run.release_dir)
    env = {"REASEQ_AUTH_TOKENS": TOKEN, "REASEQ_AUTH_PROTECT_OPS": "true"}
    proc = ServiceProcess(store, tmp_path_factory.mktemp("auth-st-logs"), env=env).start()
    try:
        proc.wait_alive()
        yield proc
    finally:
        proc.stop()


@pytest.mark.timeout(180, func_only=True)  # setup may train the session's pipeline first
def test_schemathesis_with_a_token_and_without_one(
    protected_service: ServiceProcess, tmp_path: Path
) -> None:
    """The schema of a protected service holds with the token sent, and `ignored_auth` checks
    that every operation declaring the bearer scheme refuses calls without a valid token."""
    from tests.service.test_openapi import CHECKS

    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary, "schemathesis is not installed: pip install -e '.[dev]'"
    config = tmp_path / "schemathesis.toml"
    config.write_text(  # as in test_openapi.py: a 1 ms deadline's 504 is documented
        '[checks.not_a_server_error]\nexpected-statuses = ["2xx", "3xx", "4xx", "504"]\n'
        '[checks.negative_data_rejection]\nexpected-statuses = ["400", "413"]\n'
    )
    command = [binary, "--config-file", str(config), "--no-color", "run"]
    command += [f"{protected_service.base_url}/openapi.json"]
    command += ["--checks", ",".join((*CHECKS, "ignored_auth"))]
    command += ["--phases", "examples,coverage,fuzzing", "--max-examples", "30", "--seed", "1"]
    command += ["--workers", "2", "--request-timeout", "10"]
    command += ["--header", f"Authorization: Bearer {TOKEN}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=170, cwd=tmp_path)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert protected_service.proc is not None and protected_service.proc.poll() is None
    log = protected_service.stderr()
    assert "Traceback" not in log, log[-3000:]
    no_secret_in(log)
