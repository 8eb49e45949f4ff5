"""The `triton` backend against a real tritonserver (the one inside the `nvidia-pytriton` wheel,
CPU, ONNX Runtime in its Python backend): same scores as in-process, Triton's dynamic batching,
the model loaded before a release switch and unloaded after draining, and a server killed under
load (fast UNAVAILABLE, or the in-process fallback) and restarted (recovery without restart)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from reaseq.core.release import MODEL_FILE
from reaseq.core.triton_config import committed_configs
from reaseq.offline.publish import EmbeddedPublisher
from reaseq.service import metrics
from reaseq.service.backend import OnnxRuntimeBackend
from reaseq.service.errors import ModelBackendUnavailable
from reaseq.service.query import RankQuery
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings
from reaseq.service.triton.backend import TritonBackend, TritonModels, TritonOptions
from reaseq.service.triton.server import TritonNotInstalled, TritonServer, binary_path
from reaseq.v1 import ranking_pb2, ranking_pb2_grpc
from tests.core.tiny_release import DIM, tiny_model
from tests.service.test_backend import random_requests

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.anyio


def test_committed_model_repository_matches_its_definition() -> None:
    for relative, text in committed_configs().items():
        path = ROOT / "model_repository" / relative
        assert path.read_text() == text, f"{path} is stale: run `reaseq triton repository`"


def _have_triton() -> bool:
    try:
        return binary_path().exists()
    except TritonNotInstalled:
        return False


def require_triton() -> None:
    """Skip without a tritonserver, unless REASEQ_REQUIRE_TRITON says it must be there (CI)."""
    if not _have_triton():
        if os.environ.get("REASEQ_REQUIRE_TRITON"):
            pytest.fail("REASEQ_REQUIRE_TRITON is set but tritonserver is not installed")
        pytest.skip("tritonserver not installed (`make setup` installs nvidia-pytriton)")


def settings_for(server: TritonServer, releases_dir: Path, **overrides) -> ServiceSettings:
    """The service on the embedded store, scoring through `server` (pip Triton: Python backend)."""
    fields = {
        "store": "embedded",
        "releases_dir": releases_dir,
        "backend": "triton",
        "triton_url": server.grpc_url,
        "triton_runtime": "python",
        "triton_timeout_s": 0.5,
    }
    return ServiceSettings(**(fields | overrides))


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    require_triton()
    server = TritonServer(tmp_path_factory.mktemp("triton-repo")).start()
    yield server
    server.stop()


def options(server: TritonServer, **kwargs) -> TritonOptions:
    return TritonOptions(url=server.grpc_url, runtime="python", **kwargs)


def is_loaded(server: TritonServer, name: str) -> bool:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return client.is_model_ready(name)
    finally:
        client.close()


@pytest.mark.parametrize("side_inputs", [True, False])
async def test_triton_scores_equal_in_process_scores_and_batches(triton, side_inputs) -> None:
    model = tiny_model(side_inputs)
    models = TritonModels(options(triton))
    backend = TritonBackend(models, model, OnnxRuntimeBackend(model))
    local = OnnxRuntimeBackend(model)
    requests = random_requests(DIM, n=16)
    for request in requests:  # one at a time, then all at once: Triton batches equal shapes
        np.testing.assert_allclose(
            await backend.score(*request), local.score_sync(*request), atol=1e-6
        )
    same_shape = [requests[1]] * 12
    answers = await asyncio.gather(*(backend.score(*r) for r in same_shape))
    for got in answers:
        np.testing.assert_allclose(got, local.score_sync(*requests[1]), atol=1e-6)
    assert is_loaded(triton, backend.name)
    await backend.close()
    await models.close()
    assert not is_loaded(triton, backend.name), "the last holder unloads the model"


async def test_triton_dynamic_batching_merges_concurrent_requests(triton) -> None:
    model = tiny_model(True)
    models = TritonModels(options(triton, queue_delay_us=20_000))
    backend = TritonBackend(models, model, OnnxRuntimeBackend(model))
    request = random_requests(DIM, n=2)[1]
    await backend.score(*request)
    await asyncio.gather(*(backend.score(*request) for _ in range(16)))
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    stats = client.get_inference_statistics(backend.name, as_json=True)["model_stats"][0]
    client.close()
    assert int(stats["inference_count"]) == 17
    assert int(stats["execution_count"]) < 17, "concurrent requests were merged into fewer runs"
    await backend.close()
    await models.close()


@pytest.fixture
def triton_settings(triton, releases_dir: Path) -> ServiceSettings:
    return settings_for(triton, releases_dir, release_poll_interval_s=0.1)


async def test_service_on_triton_answers_as_in_process(
    triton_settings: ServiceSettings, release_ids
) -> None:
    user, items = release_ids
    query = RankQuery(user, items, recent_item_ids=items[:3])
    on_triton = await Ranker.open(triton_settings, follow=False)
    local = await Ranker.open(triton_settings.model_copy(update={"backend": "local"}), follow=False)
    try:
        got, want = await on_triton.rank(query), await local.rank(query)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
        assert got.release == want.release and not got.degraded
        query.explain = True  # the attention output travels through Triton too
        got, want = await on_triton.rank(query), await local.rank(query)
        assert got.explanations == want.explanations or all(
            [b["position"] for b in g] == [b["position"] for b in w]
            for g, w in zip(got.explanations, want.explanations, strict=True)
        )
    finally:
        await on_triton.close()
        await local.close()


async def test_release_switch_loads_into_triton_first_and_unloads_after_draining(
    triton, triton_settings: ServiceSettings, releases_dir: Path, second_release: Path, release_ids
) -> None:
    user, items = release_ids
    ranker = await Ranker.open(triton_settings)
    first_model = ranker._active.model.name
    assert is_loaded(triton, first_model)
    loaded_at_switch: list[bool] = []
    original = ranker._warm_up

    async def warm_up(release):  # is the new model on Triton right before the swap?
        await original(release)
        loaded_at_switch.append(is_loaded(triton, release.model.name))

    ranker._warm_up = warm_up
    errors: list[Exception] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            try:
                await ranker.rank(RankQuery(user, items))
            except Exception as err:
                errors.append(err)

    clients = [asyncio.create_task(load()) for _ in range(4)]
    try:
        EmbeddedPublisher(releases_dir).publish(second_release)
        deadline = time.monotonic() + 30
        while ranker.active_versions()[0] != "second-release" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        second_model = ranker._active.model.name
        assert second_model != first_model
        assert loaded_at_switch == [True], "loaded into Triton before the switch"
        while is_loaded(triton, first_model) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not is_loaded(triton, first_model), "old model unloaded after draining"
        assert ranker.active_versions()[0] == "second-release"
    finally:
        stop.set()
        await asyncio.gather(*clients)
        await ranker.close()
    assert not errors, errors[:3]


async def _rank_until(ranker: Ranker, query: RankQuery, seconds: float) -> list:
    outcomes = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            await ranker.rank(query)
            outcomes.append(("ok", time.perf_counter() - started))
        except ModelBackendUnavailable as err:
            outcomes.append(("unavailable", time.perf_counter() - started, err.message))
        await asyncio.sleep(0.01)
    return outcomes


async def test_triton_killed_under_load_fails_fast_and_recovers_without_restart(
    tmp_path: Path, releases_dir: Path, release_ids
) -> None:
    require_triton()
    server = TritonServer(tmp_path / "repo").start()
    settings = settings_for(server, releases_dir)
    ranker = await Ranker.open(settings, follow=False)
    user, items = release_ids
    query = RankQuery(user, items)
    restarted = None
    try:
        await ranker.rank(query)
        under_load = asyncio.gather(*(_rank_until(ranker, query, 6.0) for _ in range(4)))
        await asyncio.sleep(1.0)
        server.kill()
        await asyncio.sleep(1.5)
        restarted = TritonServer(
            tmp_path / "repo",
            grpc_port=server.grpc_port,
            http_port=server.http_port,
            metrics_port=server.metrics_port,
        )
        await asyncio.to_thread(restarted.start)  # the clients keep running meanwhile
        outcomes = [o for client in await under_load for o in client]
        failures = [o for o in outcomes if o[0] == "unavailable"]
        assert failures, "requests during the outage were refused"
        # refused within triton_timeout_s (0.5 s), with a margin for a loaded CI machine
        assert max(o[1] for o in failures) < 1.5, "no hang"
        assert all("Triton" in o[2] for o in failures)
        # recovered: the restarted server got the model again, with no service restart
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                await ranker.rank(query)
                break
            except ModelBackendUnavailable:
                await asyncio.sleep(0.2)
        result = await ranker.rank(query)
        assert len(result.scores) == len(items)
    finally:
        await ranker.close()
        server.kill()
        if restarted is not None:
            restarted.stop()


async def test_triton_outage_with_local_fallback_keeps_answering(
    tmp_path: Path, releases_dir: Path, release_ids
) -> None:
    require_triton()
    server = TritonServer(tmp_path / "repo").start()
    settings = settings_for(server, releases_dir, triton_fallback="local")
    ranker = await Ranker.open(settings, follow=False)
    user, items = release_ids
    query = RankQuery(user, items)
    try:
        want = (await ranker.rank(query)).scores
        before = metrics.TRITON_FALLBACK._value.get()
        server.kill()
        for _ in range(5):
            answer = await ranker.rank(query)
            np.testing.assert_allclose(answer.scores, want, atol=1e-6)
            assert answer.degraded, "the response says a fallback answered"
        assert metrics.TRITON_FALLBACK._value.get() >= before + 5
    finally:
        await ranker.close()


async def test_grpc_caller_gets_unavailable_within_its_deadline_when_triton_is_down(
    tmp_path: Path, releases_dir: Path, release_ids
) -> None:
    """Triton down from the start: the service is not ready (nothing refused for good), gRPC
    callers get UNAVAILABLE fast; once Triton is up the service follows without a restart."""
    require_triton()
    from reaseq.service.grpc_server import build_grpc_server

    server = TritonServer(tmp_path / "repo")  # ports chosen, not started yet
    settings = settings_for(
        server, releases_dir, release_poll_interval_s=0.2, triton_load_timeout_s=2.0
    )
    ranker = await Ranker.open(settings)
    assert not ranker.is_ready()
    assert "Triton" in (ranker._last_problem or "")
    grpc_server, port = build_grpc_server(ranker, "127.0.0.1", 0)
    await grpc_server.start()
    user, items = release_ids
    request = ranking_pb2.RankRequest(user_id=user, candidate_item_ids=items)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            started = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Rank(request, timeout=5.0)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.perf_counter() - started < 1.0
            await asyncio.to_thread(server.start)
            deadline = time.monotonic() + 30
            while not ranker.is_ready() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            response = await stub.Rank(request, timeout=5.0)
            assert len(response.scores) == len(items)
    finally:
        await grpc_server.stop(None)
        await ranker.close()
        server.stop()


def test_the_release_model_file_is_what_triton_is_given(triton, pipeline_run) -> None:
    """The pushed bytes are the release's verified model file, named by its hash."""
    from reaseq.service.triton.backend import triton_model_name

    model_bytes = (pipeline_run.release_dir / MODEL_FILE).read_bytes()
    name = triton_model_name(model_bytes)
    assert name.startswith("reaseq_ranker-") and len(name) == len("reaseq_ranker-") + 16


def test_triton_device_gpu_pushes_gpu_instance_groups() -> None:
    """`triton_device = gpu` (the GPU overlay) asks Triton for KIND_GPU instances; the default
    stays on CPU, where the pip tritonserver runs."""
    from tritonclient.grpc import model_config_pb2 as mc

    from reaseq.core.triton_config import model_config
    from reaseq.service.ranking import triton_options

    for device, kind in (
        ("gpu", mc.ModelInstanceGroup.KIND_GPU),
        ("cpu", mc.ModelInstanceGroup.KIND_CPU),
    ):
        options = triton_options(ServiceSettings(backend="triton", triton_device=device))
        config = model_config(options.runtime, gpu=options.gpu, dim=8)
        assert [g.kind for g in config.instance_group] == [kind]
