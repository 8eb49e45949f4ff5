"""The naive reference path: what serving the trained model "the obvious way" costs.

Per request: candidate and recent ids to vectors with a Python loop over a dict (item id ->
float32 row of the release's snapshot), the user's published behaviors from the same snapshot, then
the PyTorch scoring network of the training checkpoint, eager, one request per forward, no
batching; sync handlers in thread pools (gRPC's executor, FastAPI's `def` routes). The features are
the release's and the behaviors are cut as the service cuts them, so its scores equal the
service's (to ONNX/PyTorch parity); only the engineering differs, which is what the matrix shows.

A benchmark tool, not the service: it imports torch and the training code.

    python -m reaseq.bench.naive --release DIR --checkpoint ranker.pt --port 50300 --http-port 8300
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch
from fastapi import FastAPI

from reaseq.bench.serving import port_args, serve_until_signal
from reaseq.core import contract
from reaseq.core.release import MODEL_FILE, Snapshot, read_manifest
from reaseq.service.http_app import RANK_PATH, RankRequestBody, RankResponseBody
from reaseq.v1 import ranking_pb2, ranking_pb2_grpc

PARITY_TOLERANCE = 1e-4  # the export's own ONNX/PyTorch parity bound


@dataclass
class NaiveResult:
    scores: list[float]
    unknown_user: bool
    unknown_item_indices: list[int]
    unknown_recent_indices: list[int]


class NaiveScorer:
    """One release's features in Python dicts and its checkpoint's scoring network in PyTorch."""

    def __init__(self, release_dir: Path, checkpoint: Path, threads: int = 1) -> None:
        from reaseq.offline.train import load_checkpoint

        torch.set_num_threads(threads)  # as the service's ONNX Runtime: one intra-op thread
        self.manifest = read_manifest(release_dir)
        snapshot = Snapshot.open(release_dir, self.manifest.value_format)
        self.snapshot = snapshot
        self.items = {
            item_id: np.asarray(snapshot.item_vectors[row], dtype=np.float32)
            for row, item_id in enumerate(snapshot.item_ids.tolist())
        }
        self.users = {user_id: row for row, user_id in enumerate(snapshot.user_ids.tolist())}
        self.default_item = snapshot.default_item_vector.astype(np.float32)
        self.dim = snapshot.dim
        self.max_behaviors = self.manifest.max_behaviors
        model, _ = load_checkpoint(checkpoint)
        if model.cfg.item_dim != self.dim:
            raise ValueError(
                f"checkpoint {checkpoint} is not the model of release {self.manifest.release}: "
                f"its vectors have D={model.cfg.item_dim}, the release's D={self.dim}; pass the "
                "ranker.pt the release was exported from (--checkpoint)"
            )
        self.scorer = model.scorer.eval()
        self.side = bool(self.scorer.behavior_side)
        worst = self.parity_with_release(release_dir)
        if worst > PARITY_TOLERANCE:
            raise ValueError(
                f"checkpoint {checkpoint} is not the model of release {self.manifest.release}: "
                f"its scores differ from the release's model.onnx by up to {worst:.1e}; pass the "
                "ranker.pt the release was exported from (--checkpoint)"
            )

    def parity_with_release(self, release_dir: Path, seed: int = 0) -> float:
        """Max |PyTorch - release's ONNX| on random inputs: the checkpoint is the release's model,
        not one retrained since."""
        import onnxruntime as ort

        session = ort.InferenceSession(
            (release_dir / MODEL_FILE).read_bytes(), providers=["CPUExecutionProvider"]
        )
        rng = np.random.default_rng(seed)
        cand = rng.normal(size=(1, 16, self.dim)).astype(np.float32)
        beh = rng.normal(size=(1, 12, self.dim)).astype(np.float32)
        mask = np.ones((1, 12), dtype=np.float32)
        gaps = np.full((1, 12), contract.GAP_FIRST, dtype=np.int64)
        generated = np.zeros((1, 12), dtype=np.float32)
        feeds = {contract.CANDIDATES: cand, contract.BEHAVIORS: beh, contract.BEHAVIOR_MASK: mask}
        if self.side:
            feeds |= {contract.BEHAVIOR_GAP_BUCKETS: gaps, contract.BEHAVIOR_GENERATED: generated}
        (onnx_scores,) = session.run([contract.SCORES], feeds)
        torch_scores = self._forward(cand, beh, mask, gaps, generated)
        return float(np.abs(onnx_scores - torch_scores).max())

    def _forward(
        self,
        cand: np.ndarray,
        beh: np.ndarray,
        mask: np.ndarray,
        gaps: np.ndarray,
        generated: np.ndarray,
    ) -> np.ndarray:
        """Eager PyTorch on one batch: cand [B, C, D], beh [B, L, D], mask/gaps/generated [B, L]
        -> scores [B, C]."""
        inputs = [torch.from_numpy(cand), torch.from_numpy(beh), torch.from_numpy(mask)]
        if self.side:
            inputs += [torch.from_numpy(gaps), torch.from_numpy(generated)]
        with torch.inference_mode():
            return self.scorer(*inputs).numpy()

    def score(self, user_id: str, candidate_ids: list[str], recent_ids: list[str]) -> NaiveResult:
        """Scores for one request, the service's semantics: unknown candidates get the default
        vector, unknown recent items are dropped, behaviors = published then recent, cut to the
        last max_behaviors, and an empty history is one masked zero row."""
        candidates, unknown_items = [], []
        for i, item_id in enumerate(candidate_ids):
            vector = self.items.get(item_id)
            if vector is None:
                unknown_items.append(i)
                vector = self.default_item
            candidates.append(vector)
        recent, unknown_recent = [], []
        for i, item_id in enumerate(recent_ids):
            vector = self.items.get(item_id)
            if vector is None:
                unknown_recent.append(i)
            else:
                recent.append(vector)

        user_row = self.users.get(user_id)
        behaviors: list[np.ndarray] = []
        gaps: list[int] = []
        generated: list[float] = []
        if user_row is not None:
            vectors, user_gaps, user_generated = self.snapshot.sequence_of(user_row)
            behaviors += list(np.asarray(vectors, dtype=np.float32))
            gaps += [int(g) for g in user_gaps]
            generated += [float(g) for g in user_generated]
        behaviors += recent
        gaps += [contract.GAP_RECENT] * len(recent)
        generated += [0.0] * len(recent)
        behaviors = behaviors[-self.max_behaviors :]
        gaps, generated = gaps[-self.max_behaviors :], generated[-self.max_behaviors :]
        mask = [1.0] * len(behaviors)
        if not behaviors:
            behaviors, mask = [np.zeros(self.dim, dtype=np.float32)], [0.0]
            gaps, generated = [contract.GAP_UNKNOWN], [0.0]

        scores = self._forward(
            np.stack(candidates)[None],  # (1, C, D)
            np.stack(behaviors)[None],  # (1, L, D)
            np.array([mask], dtype=np.float32),  # (1, L)
            np.array([gaps], dtype=np.int64),
            np.array([generated], dtype=np.float32),
        )
        return NaiveResult(
            scores=scores[0].astype(float).tolist(),
            unknown_user=user_row is None,
            unknown_item_indices=unknown_items,
            unknown_recent_indices=unknown_recent,
        )

    @property
    def versions(self) -> tuple[str, str, str]:
        m = self.manifest
        return m.release, m.model_version, m.feature_version


class NaiveServicer(ranking_pb2_grpc.RankingServiceServicer):
    """Sync Rank: each call runs on one of the gRPC executor's threads."""

    def __init__(self, scorer: NaiveScorer) -> None:
        self.scorer = scorer

    def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.ServicerContext
    ) -> ranking_pb2.RankResponse:
        result = self.scorer.score(
            request.user_id, list(request.candidate_item_ids), list(request.recent_item_ids)
        )
        release, model_version, feature_version = self.scorer.versions
        return ranking_pb2.RankResponse(
            scores=result.scores,
            release=release,
            model_version=model_version,
            feature_version=feature_version,
            unknown_user=result.unknown_user,
            unknown_item_indices=result.unknown_item_indices,
            unknown_recent_indices=result.unknown_recent_indices,
        )


def build_naive_grpc_server(
    scorer: NaiveScorer, host: str, port: int, workers: int = 32
) -> tuple[grpc.Server, int]:
    """A sync gRPC server with a thread pool (the usual first gRPC server); not started."""
    pool = ThreadPoolExecutor(max_workers=workers)
    server = grpc.server(pool, options=[("grpc.so_reuseport", 0)])
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(NaiveServicer(scorer), server)
    return server, server.add_insecure_port(f"{host}:{port}")


def create_naive_app(scorer: NaiveScorer) -> FastAPI:
    """`POST /v1/rank` as a sync route (FastAPI runs it in its thread pool), plus `/healthz`."""
    app = FastAPI(title="reaseq naive", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(RANK_PATH, response_model=RankResponseBody)
    def rank(body: RankRequestBody) -> RankResponseBody:
        result = scorer.score(body.user_id, body.candidate_item_ids, body.recent_item_ids)
        release, model_version, feature_version = scorer.versions
        return RankResponseBody(
            scores=result.scores,
            release=release,
            model_version=model_version,
            feature_version=feature_version,
            unknown_user=result.unknown_user,
            unknown_item_indices=result.unknown_item_indices,
            unknown_recent_indices=result.unknown_recent_indices,
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = port_args(__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, required=True, help="release folder")
    parser.add_argument("--checkpoint", type=Path, required=True, help="ranker.pt of the release")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--workers", type=int, default=32, help="gRPC handler threads")
    args = parser.parse_args()
    try:
        scorer = NaiveScorer(args.release, args.checkpoint, args.threads)
    except (ValueError, FileNotFoundError) as err:  # a wrong path or checkpoint: one line
        raise SystemExit(f"error: {err}") from None
    server, _ = build_naive_grpc_server(scorer, args.host, args.port, args.workers)
    server.start()
    try:
        asyncio.run(serve_until_signal(create_naive_app(scorer), args.host, args.http_port))
    finally:
        server.stop(1.0)


if __name__ == "__main__":
    main()
