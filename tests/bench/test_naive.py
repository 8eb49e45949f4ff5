"""The naive path scores what the service scores (the same release, the same semantics for unknown
users, unknown items and the behavior cut), and refuses a checkpoint that is not the release's."""

import numpy as np
import pytest
import torch

from reaseq.bench.matrix import default_checkpoint
from reaseq.bench.naive import NaiveScorer
from reaseq.core.release import Snapshot
from reaseq.offline.train import CHECKPOINT_FILE
from reaseq.service.query import RankQuery

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def naive(pipeline_run) -> NaiveScorer:
    return NaiveScorer(pipeline_run.release_dir, default_checkpoint(pipeline_run.release_dir))


def test_the_default_checkpoint_is_the_one_beside_the_exports(pipeline_run) -> None:
    expected = pipeline_run.work_dir / "models" / "id+text" / CHECKPOINT_FILE
    assert default_checkpoint(pipeline_run.release_dir) == expected.resolve()


async def test_naive_scores_equal_the_service_scores(naive, ranker, pipeline_run) -> None:
    snapshot = Snapshot.open(pipeline_run.release_dir)
    items = [str(i) for i in snapshot.item_ids]
    lengths = np.diff(snapshot.user_offsets)
    with_history = str(snapshot.user_ids[int(lengths.argmax())])
    rng = np.random.default_rng(0)
    max_len = naive.max_behaviors

    def some(n: int) -> list[str]:
        return [items[i] for i in rng.choice(len(items), n)]

    queries = [
        RankQuery(with_history, some(50), some(10)),  # published + recent
        RankQuery(with_history, some(30), some(max_len + 5)),  # recent alone fill the window
        RankQuery(with_history, some(5)),  # published only
        RankQuery("no-such-user", some(20), some(3)),  # recent only
        RankQuery("no-such-user", some(4)),  # no history at all: one masked row
        RankQuery(with_history, [items[0], "no-such-item"], ["no-such-item", items[1]]),
    ]
    for query in queries:
        served = await ranker.rank(query)
        mine = naive.score(query.user_id, query.candidate_item_ids, query.recent_item_ids)
        assert np.abs(np.array(served.scores) - np.array(mine.scores)).max() < 1e-4
        assert mine.unknown_user == served.unknown_user
        assert mine.unknown_item_indices == served.unknown_item_indices
        assert mine.unknown_recent_indices == served.unknown_recent_indices
    assert naive.versions == ranker.active_versions()


def test_a_checkpoint_that_is_not_the_release_model_is_refused(pipeline_run, tmp_path) -> None:
    ckpt = torch.load(default_checkpoint(pipeline_run.release_dir), weights_only=False)
    for name, value in ckpt["state_dict"].items():
        if name.startswith("scorer.head") and value.is_floating_point():
            value.add_(0.5)
    retrained = tmp_path / CHECKPOINT_FILE
    torch.save(ckpt, retrained)
    with pytest.raises(ValueError, match="is not the model of release"):
        NaiveScorer(pipeline_run.release_dir, retrained)
