"""A response recomputed from a release's own files, without any service code: what the served
model input and scores must be (both value formats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from reaseq.core import contract
from reaseq.core.release import MODEL_FILE, Snapshot, read_manifest


def offline_feeds(
    release_dir: Path, user_id: str, candidates: list[str], recent=()
) -> dict[str, np.ndarray]:
    """All five model inputs: published behaviors (with their buckets and flags), then the known
    recent items (GAP_RECENT, not generated), the last max_behaviors of them."""
    snap = Snapshot.open(release_dir)
    manifest = read_manifest(release_dir)
    rows = {item: row for row, item in enumerate(snap.item_ids.tolist())}
    users = snap.user_ids.tolist()
    if user_id in users:
        vectors, gaps, flags = snap.sequence_of(users.index(user_id))
    else:
        vectors, gaps, flags = np.zeros((0, snap.dim)), np.zeros(0), np.zeros(0)
    recent_vecs = np.array([snap.item_vectors[rows[i]] for i in recent if i in rows])
    n_recent = len(recent_vecs)
    last = manifest.max_behaviors
    beh = np.concatenate([vectors, recent_vecs.reshape(-1, snap.dim)])[-last:].astype(np.float32)
    gap = np.concatenate([gaps, np.full(n_recent, contract.GAP_RECENT)])[-last:].astype(np.int64)
    gen = np.concatenate([flags, np.zeros(n_recent)])[-last:].astype(np.float32)
    mask = np.ones(len(beh), np.float32)
    if len(beh) == 0:
        beh, mask = np.zeros((1, snap.dim), np.float32), np.zeros(1, np.float32)
        gap, gen = np.zeros(1, np.int64), np.zeros(1, np.float32)
    cand = np.stack(
        [snap.item_vectors[rows[i]] if i in rows else snap.default_item_vector for i in candidates]
    ).astype(np.float32)
    return {
        contract.CANDIDATES: cand[None],
        contract.BEHAVIORS: beh[None],
        contract.BEHAVIOR_MASK: mask[None],
        contract.BEHAVIOR_GAP_BUCKETS: gap[None],
        contract.BEHAVIOR_GENERATED: gen[None],
    }


def offline_scores(release_dir: Path, user_id: str, candidates: list[str], recent=()) -> np.ndarray:
    """Scores of `offline_feeds`, fed to the model as far as it declares the inputs."""
    session = ort.InferenceSession((release_dir / MODEL_FILE).read_bytes())
    feeds = offline_feeds(release_dir, user_id, candidates, recent)
    declared = {i.name for i in session.get_inputs()}
    return session.run([contract.SCORES], {k: v for k, v in feeds.items() if k in declared})[0][0]
