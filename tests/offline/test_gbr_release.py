"""GBR in production: a pipeline run trains GBR, fills histories, trains the ranker on them, and
exports a release whose served sequences carry generated behaviors; the service, reading it from
Redis, feeds a generated position to the model of a served request, with real-time recent items
appended after it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reaseq.core import contract
from reaseq.core.keys import KeySchema
from reaseq.core.release import Snapshot, read_manifest
from reaseq.offline.gbr.fill import KEY_STRIDE
from reaseq.offline.pipeline import load_prepared
from reaseq.offline.publish import RedisPublisher
from reaseq.offline.train import CHECKPOINT_FILE, load_checkpoint
from reaseq.service.query import RankQuery
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings
from tests.offline.test_export import release_vs_pytorch


def filled(gbr_pipeline_run):
    """The filled histories the exported ranker was trained on (GBR reused from its cache)."""
    from reaseq.offline.pipeline import saved_histories

    work = gbr_pipeline_run.work_dir
    return load_prepared(work), saved_histories(work, "id+text+gbr", log=lambda _m: None)


def test_the_gbr_run_reports_what_the_issue_asks(gbr_pipeline_run) -> None:
    report = gbr_pipeline_run.report
    assert set(report["results"]) == {"id+text", "id+text+gbr"}
    gbr = report["gbr"]["text"]
    assert gbr["validation"]["val_ib_ppl"] > 1 and 0 <= gbr["validation"]["val_ib_acc"] <= 1
    assert (
        set(gbr["recovery"]["gbr"]) == {"hr@1", "hr@10"} == set(gbr["recovery"]["neighbour_mean"])
    )
    assert gbr["locate"]["slots"] > 0 and gbr["fill"]["generated"] > 0
    assert gbr["seconds_per_epoch_median"] > 0
    text = (gbr_pipeline_run.work_dir / "report.md").read_text()
    assert "GBR over `text`" in text and "recovery of a hidden behavior" in text


def test_the_release_publishes_generated_behaviors_and_reproduces_pytorch(gbr_pipeline_run):
    release = gbr_pipeline_run.release_dir
    manifest = read_manifest(release)
    assert manifest.value_format == 2 and manifest.features == "id+text+gbr"
    snap = Snapshot.open(release)
    assert snap.user_generated.sum() == manifest.metrics["generated_behaviors"] > 0
    model, _ = load_checkpoint(
        gbr_pipeline_run.work_dir / "models" / "id+text+gbr" / CHECKPOINT_FILE
    )
    data, histories = filled(gbr_pipeline_run)
    diff = release_vs_pytorch(model, data, release, histories)
    print(f"GBR release (float16) vs PyTorch on filled histories: max abs diff {diff:.2e}")
    assert diff < 5e-3
    # a served generated behavior is the exported tower applied to its latent
    users = np.arange(len(data.user_ids))
    rows, _ = histories.lookup(users, np.diff(data.beh_offsets))
    assert (rows > data.n_items).sum() == manifest.metrics["generated_behaviors"]
    any_user = int(np.flatnonzero((rows > data.n_items).any(axis=1))[0])
    generated_rows = rows[any_user][rows[any_user] > data.n_items] - data.n_items - 1
    latents = torch.from_numpy(histories.generated[generated_rows])
    expected = model.items.generated_vectors(latents).numpy().astype(np.float16)
    served = snap.sequence_of(any_user)
    np.testing.assert_array_equal(served.vectors[served.generated == 1], expected)
    # the generated vectors belong to this user's whole-log prefix
    key = any_user * KEY_STRIDE + int(np.diff(data.beh_offsets)[any_user])
    assert set(histories.key_of_generated[generated_rows].tolist()) == {key}


@pytest.mark.anyio
async def test_a_generated_position_reaches_the_model_of_a_served_request(
    gbr_pipeline_run, redis_client, redis_server, model_feeds
) -> None:
    release = gbr_pipeline_run.release_dir
    published = RedisPublisher(redis_client, KeySchema("gbr")).publish(release)
    snap = Snapshot.open(release)
    user_row = next(u for u in range(len(snap.user_ids)) if snap.sequence_of(u).generated.any())
    sequence = snap.sequence_of(user_row)
    settings = ServiceSettings(
        store="redis", redis_url=redis_server.url, redis_namespace="gbr", batch_max_size=1
    )
    ranker = await Ranker.open(settings, follow=False)
    items = snap.item_ids.tolist()
    try:
        model_feeds.clear()
        query = RankQuery(str(snap.user_ids[user_row]), items[:3], recent_item_ids=items[3:5])
        result = await ranker.rank(query)
    finally:
        await ranker.close()
    assert result.release == published
    (feeds,) = model_feeds
    n = len(sequence.vectors)
    generated = feeds[contract.BEHAVIOR_GENERATED][0]
    gaps = feeds[contract.BEHAVIOR_GAP_BUCKETS][0]
    behaviors = feeds[contract.BEHAVIORS][0]
    keep = min(n + 2, read_manifest(release).max_behaviors)
    assert len(generated) == keep
    # published sequence first (its generated flags and vectors as published), then the recent
    published_part = slice(0, keep - 2)
    np.testing.assert_array_equal(generated[published_part], sequence.generated[-(keep - 2) :])
    assert generated[published_part].max() == 1.0
    np.testing.assert_array_equal(
        behaviors[published_part], sequence.vectors[-(keep - 2) :].astype(np.float32)
    )
    assert gaps[-2:].tolist() == [contract.GAP_RECENT] * 2
    assert generated[-2:].tolist() == [0.0, 0.0]
    row = {item: i for i, item in enumerate(items)}
    np.testing.assert_array_equal(
        behaviors[-2:], snap.item_vectors[[row[i] for i in items[3:5]]].astype(np.float32)
    )


def test_reaseq_export_of_a_gbr_model_publishes_its_generated_behaviors(gbr_pipeline_run) -> None:
    """`reaseq export --features id+text+gbr` rebuilds the fill from the recorded configuration:
    the same generated behaviors as the pipeline's own export, and value sizes as the codec
    writes them."""
    from typer.testing import CliRunner

    from reaseq.cli import app
    from reaseq.core.values import snapshot_values

    work = gbr_pipeline_run.work_dir
    args = ["export", work.name, "--features", "id+text+gbr", "--artifacts", str(work.parent)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    folder = max((work / "exports").iterdir(), key=lambda p: p.stat().st_mtime)
    ours, pipeline = read_manifest(folder), read_manifest(gbr_pipeline_run.release_dir)
    assert ours.metrics["generated_behaviors"] == pipeline.metrics["generated_behaviors"] > 0
    assert ours.feature_version == pipeline.feature_version  # the same vectors, byte for byte
    sizes = [
        len(v) for name, v in snapshot_values(Snapshot.open(folder)) if name.startswith(b"user:")
    ]
    assert ours.metrics["user_value_bytes_max"] == max(sizes)
    assert ours.metrics["user_value_bytes_mean"] == pytest.approx(np.mean(sizes))
