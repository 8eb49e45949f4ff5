"""gRPC over TLS, and mutual TLS, with real certificates made by `openssl` for each test session
and real secure channels: a client that trusts the CA ranks, a plaintext client or one trusting
another CA cannot; with a client CA, only clients holding a certificate it signed get in. Files
that cannot work (missing, unreadable, not PEM, encrypted, a key of another certificate) stop
start-up with one line naming the setting, before any port is bound."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reaseq.bench.client import bench
from reaseq.service.access import Access
from reaseq.service.errors import AccessConfigError
from reaseq.service.grpc_server import SERVICE_NAME, build_grpc_server
from reaseq.service.ranking import Ranker
from reaseq.v1 import ranking_pb2, ranking_pb2_grpc
from tests.service.service_proc import ServiceProcess
from tests.service.tiny_service import ITEMS, USER, publish_tiny, tiny_settings

pytestmark = pytest.mark.anyio

TOKEN = "tls-test-token-0123456789abcdef"
RPC_TIMEOUT_S = 10


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for localhost / 127.0.0.1 and a client certificate
    it signed; a second CA with its own client; odd files for the start-up checks."""

    root: Path

    def __getattr__(self, name: str) -> Path:
        """`pki.other_ca_pem` is `<root>/other_ca.pem`."""
        if name.startswith("_"):
            raise AttributeError(name)
        stem, _, suffix = name.rpartition("_")
        return self.root / f"{stem}.{suffix}"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip


def make_leaf(folder: Path, name: str, ca: str, extensions: str) -> None:
    """A key and a certificate signed by `ca`, with the given X.509 v3 extensions."""
    (folder / f"{name}.ext").write_text(extensions + "\n")
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.fail(
            "the openssl command is needed to make test certificates: apt-get install openssl"
        )
    folder = tmp_path_factory.mktemp("pki")
    make_ca(folder, "ca")
    make_ca(folder, "other_ca")
    make_leaf(folder, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    make_leaf(folder, "client", "ca", "extendedKeyUsage=clientAuth")
    make_leaf(folder, "stranger", "other_ca", "extendedKeyUsage=clientAuth")
    openssl(
        "pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret", "-out", "encrypted.key",
        cwd=folder,
    )  # fmt: skip
    (folder / "junk.pem").write_text("not a certificate\n")
    return Pki(folder)


@pytest.fixture
def releases(tmp_path: Path) -> Path:
    return publish_tiny(tmp_path)


async def serve_grpc(releases: Path, **access: Any) -> tuple[Ranker, grpc.aio.Server, str]:
    ranker = await Ranker.open(tiny_settings(releases, **access), follow=False)
    server, port = build_grpc_server(ranker, "127.0.0.1", 0)
    await server.start()
    return ranker, server, f"localhost:{port}"


@pytest.fixture
async def tls_target(releases: Path, pki: Pki) -> AsyncIterator[str]:
    """A gRPC server speaking TLS only, with a token required too."""
    ranker, server, target = await serve_grpc(
        releases, grpc_tls_cert=pki.server_pem, grpc_tls_key=pki.server_key, auth_tokens=TOKEN
    )
    yield target
    await server.stop(None)
    await ranker.close()


@pytest.fixture
async def mtls_target(releases: Path, pki: Pki) -> AsyncIterator[str]:
    ranker, server, target = await serve_grpc(
        releases,
        grpc_tls_cert=pki.server_pem,
        grpc_tls_key=pki.server_key,
        grpc_tls_client_ca=pki.ca_pem,
    )
    yield target
    await server.stop(None)
    await ranker.close()


def credentials(
    ca: Path, client: tuple[Path, Path] | None = None, token: str | None = None
) -> grpc.ChannelCredentials:
    key, cert = (client[0].read_bytes(), client[1].read_bytes()) if client else (None, None)
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), key, cert)
    if token is not None:  # gRPC's own way to send `authorization: Bearer <token>`
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return creds


async def rank(channel: grpc.aio.Channel) -> ranking_pb2.RankResponse:
    stub = ranking_pb2_grpc.RankingServiceStub(channel)
    request = ranking_pb2.RankRequest(user_id=USER, candidate_item_ids=ITEMS[:3])
    return await stub.Rank(request, timeout=RPC_TIMEOUT_S)


async def rank_fails(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rank(channel)
    return info.value


async def test_a_client_trusting_the_ca_ranks_over_tls(tls_target: str, pki: Pki) -> None:
    async with grpc.aio.secure_channel(tls_target, credentials(pki.ca_pem, token=TOKEN)) as ch:
        assert len((await rank(ch)).scores) == 3
        health = health_pb2_grpc.HealthStub(ch)
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        reply = await health.Check(request, timeout=RPC_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.secure_channel(tls_target, credentials(pki.ca_pem)) as ch:
        assert (await rank_fails(ch)).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_plaintext_and_untrusting_clients_cannot_connect(tls_target: str, pki: Pki) -> None:
    async with grpc.aio.insecure_channel(tls_target) as ch:
        assert (await rank_fails(ch)).code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.secure_channel(tls_target, credentials(pki.other_ca_pem)) as ch:
        err = await rank_fails(ch)
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()


async def test_bench_client_reaches_a_tls_service_with_a_token(tls_target: str, pki: Pki) -> None:
    args: dict[str, Any] = {"n_candidates": 3, "n_recent": 1, "requests": 6, "warmup": 0}
    report = await bench("grpc", tls_target, [USER], ITEMS, token=TOKEN, tls_ca=pki.ca_pem, **args)
    assert report["ok"] == 6 and report["errors"] == 0, report["first_error"]
    report = await bench("grpc", tls_target, [USER], ITEMS, token=TOKEN, **args)
    assert report["ok"] == 0 and report["first_error"].startswith("UNAVAILABLE")


async def test_mutual_tls_admits_only_clients_the_ca_signed(mtls_target: str, pki: Pki) -> None:
    client = (pki.client_key, pki.client_pem)
    async with grpc.aio.secure_channel(mtls_target, credentials(pki.ca_pem, client)) as ch:
        assert len((await rank(ch)).scores) == 3
    async with grpc.aio.secure_channel(mtls_target, credentials(pki.ca_pem)) as ch:
        assert (await rank_fails(ch)).code() == grpc.StatusCode.UNAVAILABLE
    stranger = (pki.stranger_key, pki.stranger_pem)
    async with grpc.aio.secure_channel(mtls_target, credentials(pki.ca_pem, stranger)) as ch:
        assert (await rank_fails(ch)).code() == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_are_described(releases: Path, pki: Pki) -> None:
    tls = {"grpc_tls_cert": pki.server_pem, "grpc_tls_key": pki.server_key}
    assert Access.from_settings(tiny_settings(releases, **tls)).describe() == (
        "no authentication, gRPC TLS"
    )
    mutual = Access.from_settings(tiny_settings(releases, grpc_tls_client_ca=pki.ca_pem, **tls))
    assert mutual.describe() == "no authentication, gRPC TLS (mutual)"


BAD_TLS = [
    ({"cert": "server_pem"}, "grpc_tls_key is not set: gRPC TLS needs both"),
    ({"key": "server_key"}, "grpc_tls_cert is not set: gRPC TLS needs both"),
    ({"client_ca": "ca_pem"}, "grpc_tls_client_ca is set without grpc_tls_cert"),
    ({"cert": "missing_pem", "key": "server_key"}, "grpc_tls_cert {missing_pem}: cannot read it"),
    ({"cert": "server_pem", "key": "missing_key"}, "grpc_tls_key {missing_key}: cannot read it"),
    (
        {"cert": "junk_pem", "key": "server_key"},
        "grpc_tls_cert {junk_pem} holds no PEM certificate",
    ),
    ({"cert": "server_pem", "key": "junk_pem"}, "grpc_tls_key {junk_pem} holds no PEM private key"),
    ({"cert": "server_key", "key": "server_key"}, "holds no PEM certificate"),
    ({"cert": "server_pem", "key": "server_pem"}, "holds no PEM private key"),
    (
        {"cert": "server_pem", "key": "client_key"},
        "grpc_tls_key {client_key} does not belong to the certificate in grpc_tls_cert",
    ),
    ({"cert": "server_pem", "key": "encrypted_key"}, "{encrypted_key} is encrypted; gRPC needs"),
    (
        {"cert": "server_pem", "key": "server_key", "client_ca": "junk_pem"},
        "grpc_tls_client_ca {junk_pem} holds no PEM CA certificate",
    ),
    (
        {"cert": "server_pem", "key": "server_key", "client_ca": "missing_pem"},
        "grpc_tls_client_ca {missing_pem}: cannot read it",
    ),
]


@pytest.mark.parametrize(("files", "needle"), BAD_TLS)
def test_unusable_tls_files_fail_at_start_up(
    releases: Path, pki: Pki, files: dict[str, str], needle: str
) -> None:
    settings = tiny_settings(
        releases, **{f"grpc_tls_{setting}": getattr(pki, name) for setting, name in files.items()}
    )
    with pytest.raises(AccessConfigError) as info:
        Access.from_settings(settings)
    names = {name: getattr(pki, name) for name in files.values()}
    assert needle.format(**names) in str(info.value), str(info.value)


@pytest.mark.timeout(120)
def test_a_key_of_another_certificate_stops_the_server_with_one_line(
    releases: Path, pki: Pki, tmp_path: Path
) -> None:
    env = {"REASEQ_GRPC_TLS_CERT": str(pki.server_pem), "REASEQ_GRPC_TLS_KEY": str(pki.client_key)}
    # the HTTP port is taken too: the TLS files are checked before any port is bound
    with socket.create_server(("127.0.0.1", 0)) as taken:
        http_port = taken.getsockname()[1]
        proc = ServiceProcess(releases, tmp_path / "logs", http_port, env=env).start()
        try:
            assert proc.wait_exit(60) == 2, proc.stderr()
        finally:
            proc.stop()
    lines = [line for line in proc.stderr().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "does not belong to the certificate in grpc_tls_cert" in lines[0]


@pytest.mark.timeout(180)
def test_reaseq_serve_with_tls_and_a_token_and_the_bench_cli(
    releases: Path, pki: Pki, tmp_path: Path
) -> None:
    env = {
        "REASEQ_GRPC_TLS_CERT": str(pki.server_pem),
        "REASEQ_GRPC_TLS_KEY": str(pki.server_key),
        "REASEQ_AUTH_TOKENS": TOKEN,
    }
    command = [sys.executable, "-m", "reaseq.cli", "serve"]
    proc = ServiceProcess(releases, tmp_path / "logs", env=env, command=command).start()
    try:
        proc.wait_alive()
        target = f"localhost:{proc.grpc_port}"
        request = ranking_pb2.RankRequest(user_id=USER, candidate_item_ids=ITEMS[:2])
        with grpc.secure_channel(target, credentials(pki.ca_pem, token=TOKEN)) as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            assert len(stub.Rank(request, timeout=RPC_TIMEOUT_S).scores) == 2
        with grpc.insecure_channel(target) as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Rank(request, timeout=RPC_TIMEOUT_S)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        bench_cli = [sys.executable, "-m", "reaseq.cli", "bench", "--target", target]
        bench_cli += ["--tls-ca", str(pki.ca_pem), "--ids-from", str(releases / "tiny")]
        bench_cli += ["--requests", "5", "--candidates", "3", "--recent", "1"]
        bench_env = {k: v for k, v in os.environ.items() if not k.startswith("REASEQ_")}
        bench_env["REASEQ_TOKEN"] = TOKEN
        done = subprocess.run(bench_cli, env=bench_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and '"errors": 0' in done.stdout, done.stdout + done.stderr
    finally:
        proc.stop()
    assert "(ready=True; bearer tokens required (1 accepted; ops open), gRPC TLS)" in proc.stderr()
    assert "Traceback" not in proc.stderr() and TOKEN not in proc.stderr()
