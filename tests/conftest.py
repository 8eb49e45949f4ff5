"""Shared fixtures: a real redis-server on a free loopback port, and one small pipeline run on
synthetic data whose exported release the service tests publish and serve."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A real redis-server process we can stop and restart on the same port (outage tests)."""

    def __init__(
        self, workdir: Path, password: str | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install -y redis-server")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.password = password
        self.extra_args = extra_args  # more redis-server options, kept across restarts
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "no",
                "--enable-debug-command",  # DEBUG SLEEP: a real stalled server for deadline tests
                "local",
                *(["--requirepass", self.password] if self.password else []),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer):
    import redis

    if redis_server.proc is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):  # -> Iterator[LocalRedisCluster]
    """A real Redis Cluster of 3 masters for the session: cluster-enabled redis-server processes
    on free loopback ports joined by `redis-cli --cluster create`, stopped at the end."""
    from reaseq.bench.local_redis import LocalRedisCluster

    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is not installed: apt-get install -y redis-server")
    # a killed master is flagged failed within seconds; a busy 2-core machine is no reason to
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"), 3, node_timeout_ms=3000)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_client(redis_cluster):  # -> Iterator[redis.cluster.RedisCluster]
    """A cluster client on an emptied cluster whose masters are all up (a test that stops one
    starts it again, this makes sure)."""
    from reaseq.core.redis_cluster import sync_client

    if any(node.proc is None for node in redis_cluster.nodes):
        for node in redis_cluster.nodes:
            if node.proc is None:
                node.start()
        redis_cluster.wait_ok()
    client = sync_client(redis_cluster.url, None, timeout_s=10)
    client.flushall()  # every master
    yield client
    client.close()


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory):
    """One small, real pipeline run (synthetic data, MiniLM text, a few epochs)."""
    from reaseq.offline.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(dataset="synthetic", artifacts_dir=tmp_path_factory.mktemp("artifacts"))
    cfg.train.epochs = 4
    cfg.train.ranker.max_behaviors = 20
    return run_pipeline(cfg, log=lambda _msg: None)


@pytest.fixture(scope="session")
def gbr_pipeline_run(tmp_path_factory: pytest.TempPathFactory):
    """A small real pipeline run whose release is `id+text+gbr`: GBR trained, filled, exported."""
    from reaseq.models.gbr import GBRConfig
    from reaseq.offline.gbr.locate import LocateConfig
    from reaseq.offline.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(
        dataset="synthetic",
        artifacts_dir=tmp_path_factory.mktemp("gbr-artifacts"),
        features=("id+text", "id+text+gbr"),
        export_features="id+text+gbr",
    )
    cfg.train.epochs = 3
    cfg.train.ranker.max_behaviors = 24
    cfg.gbr.train.epochs = 2
    cfg.gbr.train.threads = 1
    cfg.gbr.train.model = GBRConfig(d_model=32, n_layers=1, n_heads=2, ff_dim=64, max_len=24)
    cfg.gbr.fill.locate = LocateConfig(min_votes=1, max_slots=2, window=10)
    return run_pipeline(cfg, log=lambda _msg: None)


@pytest.fixture
def releases_dir(tmp_path: Path, pipeline_run) -> Path:
    """An embedded store with the pipeline's release published and active."""
    from reaseq.offline.publish import EmbeddedPublisher

    target = tmp_path / "releases"
    EmbeddedPublisher(target).publish(pipeline_run.release_dir)
    return target


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def service_settings(releases_dir: Path):
    from reaseq.service.settings import ServiceSettings

    return ServiceSettings(store="embedded", releases_dir=releases_dir, release_poll_interval_s=0.2)


@pytest.fixture
async def ranker(service_settings):
    from reaseq.service.ranking import Ranker

    opened = await Ranker.open(service_settings)
    assert opened.is_ready(), "the fixture release did not load"
    yield opened
    await opened.close()


@pytest.fixture
def release_ids(releases_dir: Path) -> tuple[str, list[str]]:
    """(a user with published behaviors, ten known item ids) of the active release."""
    from reaseq.core.release import ACTIVE_FILE, Snapshot

    snap = Snapshot.open(releases_dir / (releases_dir / ACTIVE_FILE).read_text().strip())
    lengths = snap.user_offsets[1:] - snap.user_offsets[:-1]
    return str(snap.user_ids[int(lengths.argmax())]), [str(i) for i in snap.item_ids[:10]]


@pytest.fixture(scope="session")
def second_release(pipeline_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, different release: the pipeline's model with perturbed weights, exported again."""
    import torch

    from reaseq.offline.export import export_release
    from reaseq.offline.pipeline import load_prepared
    from reaseq.offline.train import CHECKPOINT_FILE, load_checkpoint

    model, _ = load_checkpoint(pipeline_run.work_dir / "models" / "id+text" / CHECKPOINT_FILE)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    data = load_prepared(pipeline_run.work_dir)
    out = tmp_path_factory.mktemp("exports2")
    return export_release(model, data, out, "id+text", {}, release="second-release")


@pytest.fixture(scope="session")
def knowledge_release(pipeline_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline's model exported again with MAKR knowledge for the first ten items: plain,
    non-ASCII, over-long and lone-surrogate texts (what an LLM can write)."""
    from reaseq.offline.export import export_release
    from reaseq.offline.pipeline import load_prepared
    from reaseq.offline.train import CHECKPOINT_FILE, load_checkpoint

    model, _ = load_checkpoint(pipeline_run.work_dir / "models" / "id+text" / CHECKPOINT_FILE)
    data = load_prepared(pipeline_run.work_dir)
    ids = [str(i) for i in data.items["item_id"][:10]]
    knowledge = {
        item_id: f"stapler {n}. Brand: Acme. For: fastening paper." for n, item_id in enumerate(ids)
    }
    knowledge[ids[1]] = "Füller für Büro, 万年筆 🖋"
    knowledge[ids[2]] = "word " * 200  # cut to MAX_KNOWLEDGE_CHARS at a word
    knowledge[ids[3]] = "broken \ud800 text"  # a lone surrogate: replaced, never published
    knowledge[ids[4]] = "   "  # blank: no knowledge
    out = tmp_path_factory.mktemp("exports-knowledge")
    return export_release(
        model, data, out, "id+text", {}, release="knowledge-release", knowledge=knowledge
    )


@pytest.fixture
def model_feeds(monkeypatch):  # -> list[dict[str, np.ndarray]]
    """Every feed dict ONNX Runtime is given, as it is given (after batching and padding)."""
    import numpy as np
    import onnxruntime as ort

    calls: list[dict] = []
    original = ort.InferenceSession.run

    def spy(self, output_names, input_feed, run_options=None):
        calls.append({k: np.array(v) for k, v in input_feed.items()})
        return original(self, output_names, input_feed, run_options)

    monkeypatch.setattr(ort.InferenceSession, "run", spy)
    return calls
