"""The whole server as a real process (`python -m reaseq.service.server`): uvicorn's own HTTP
handling (headers, chunked bodies), the offline /docs page, and one server per port."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reaseq.service.settings import ServiceSettings
from tests.service.service_proc import ServiceProcess, largest_valid_request

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def published(pipeline_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded store with the pipeline's release active, shared by this module's servers."""
    from reaseq.offline.publish import EmbeddedPublisher

    target = tmp_path_factory.mktemp("proc-releases") / "releases"
    EmbeddedPublisher(target).publish(pipeline_run.release_dir)
    return target


@pytest.fixture(scope="module")
def service(published: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(published, tmp_path_factory.mktemp("proc-logs")).start()
    try:
        proc.wait_alive()
        yield proc
    finally:
        proc.stop()


def test_responses_do_not_name_the_server_software(service: ServiceProcess) -> None:
    with httpx.Client(base_url=service.base_url, timeout=10) as http:
        for response in (
            http.get("/healthz"),
            http.get("/no/such/path"),
            http.post("/v1/rank", content=b"{", headers=JSON),
        ):
            assert "server" not in response.headers, dict(response.headers)


def test_docs_work_offline(service: ServiceProcess) -> None:
    """/docs references nothing outside the service, and every asset it names loads."""
    with httpx.Client(base_url=service.base_url, timeout=10) as http:
        page = http.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert not re.findall(r"https?://", page.text), "the page still names an outside URL"
        urls = set(re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text))
        urls |= set(re.findall(r"""url:\s*["']([^"']+)["']""", page.text))
        assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls)
        assert "/openapi.json" in urls
        for url in urls:
            asset = http.get(url)
            assert asset.status_code == 200 and asset.content, url
        bundle = next(u for u in urls if u.endswith("swagger-ui-bundle.js"))
        assert "javascript" in http.get(bundle).headers["content-type"]
        assert "SwaggerUIBundle" in page.text


def test_oversized_bodies_are_413_over_real_http(
    service: ServiceProcess, release_ids: tuple[str, list[str]]
) -> None:
    limit = ServiceSettings(_env_file=None).http_max_body_bytes  # the default the server runs
    too_big = b'{"user_id": "u1", "candidate_item_ids": ["' + b"i" * limit + b'"]}'
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        declared = http.post("/v1/rank", content=too_big, headers=JSON)
        assert declared.status_code == 413, declared.text[:200]
        assert declared.json()["error"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no length known up front: Transfer-Encoding: chunked
            for start in range(0, len(too_big), 64 * 1024):
                yield too_big[start : start + 64 * 1024]

        streamed = http.post("/v1/rank", content=chunks(), headers=JSON)
        assert streamed.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413, streamed.text[:200]
        assert streamed.json()["error"] == "request_too_large"

        largest = largest_valid_request(ServiceSettings(_env_file=None), release_ids[0])
        ok = http.post("/v1/rank", content=largest, headers=JSON)
        assert ok.status_code == 200, ok.text[:200]
        assert http.get("/healthz").status_code == 200  # and the server is still fine


def stderr_lines(proc: ServiceProcess) -> list[str]:
    return [line for line in proc.stderr().splitlines() if line.strip()]


CLI = [str(Path(sys.executable).with_name("reaseq")), "serve"]


@pytest.mark.parametrize("entry", ["module", "cli"])
@pytest.mark.parametrize("clash", ["http", "grpc"])
def test_a_second_server_on_a_taken_port_exits_with_one_clear_line(
    service: ServiceProcess, tmp_path: Path, clash: str, entry: str
) -> None:
    taken = service.http_port if clash == "http" else service.grpc_port
    ports = {f"{clash}_port": taken}
    command = CLI if entry == "cli" else None
    second = ServiceProcess(service.releases_dir, tmp_path, command=command, **ports).start()
    try:
        code = second.wait_exit(timeout_s=60)
        assert code is not None, f"a second server started on the taken {clash} port {taken}"
    finally:
        second.stop()
    assert code == 2
    lines = stderr_lines(second)
    assert "Traceback" not in second.stderr(), second.stderr()
    naming = [line for line in lines if f":{taken}" in line]
    assert len(naming) == 1, lines
    transport = {"http": "HTTP", "grpc": "gRPC"}[clash]
    assert f"{transport} port 127.0.0.1:{taken} is already in use" in naming[0], lines
    assert len(lines) == 1, lines  # ports are bound before anything else is logged

    # the first server still owns its ports and answers on both
    assert httpx.get(f"{service.base_url}/healthz", timeout=5).status_code == 200
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_accepted_connections_send_small_responses_without_delay() -> None:
    """TCP_NODELAY on every accepted connection: without it each small HTTP response waited
    for the client's delayed ACK (~40 ms per request, seen in the benchmark)."""
    import socket

    from reaseq.service.server import bind_tcp

    listener = bind_tcp("127.0.0.1", 0, "HTTP")
    try:
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        accepted.close()
        client.close()
    finally:
        listener.close()
