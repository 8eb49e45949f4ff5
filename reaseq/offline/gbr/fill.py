"""Job `gbr fill`: behavior histories with GBR-generated positions, as the ranker and the release
read them.

A sample sees a prefix of its user's log (its first `hist_end` behaviors). Its filled history is
that prefix with `[FILL]` slots where the locator puts them *within the prefix*, each filled by the
sampler from the prefix alone, so no slot knows the sample's own item or anything later. The
release's served sequence is the same thing for the whole log (hist_end = every behavior).

Rows in a filled history: an item row in [0, n_items), `n_items` for padding, and
`n_items + 1 + g` for generated vector g of `generated` (the ranker's item tower maps it to
`[generated-id vector ‖ adapter(latent)]`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from reaseq.core.contract import GAP_UNKNOWN
from reaseq.models.gbr import MaskPredictor
from reaseq.offline.gbr.locate import GapVotes, LocateConfig, slots_in_prefix
from reaseq.offline.gbr.sampler import SamplerConfig, denoise
from reaseq.offline.gbr.train import length_batches
from reaseq.offline.prepare import Prepared

KEY_STRIDE = 1 << 32  # key = user_row * KEY_STRIDE + hist_end


@dataclass
class FillConfig:
    locate: LocateConfig = field(default_factory=LocateConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    batch_size: int = 256


@dataclass
class FilledHistories:
    """Right-aligned histories [K, L] for the sorted prefix keys, with generated vectors."""

    n_items: int
    keys: np.ndarray  # int64 [K], sorted
    rows: np.ndarray  # int64 [K, L]
    gaps: np.ndarray  # uint8 [K, L]
    generated: np.ndarray  # float32 [G, R], in the representation's own scale
    nearest: np.ndarray  # int64 [G]: nearest catalog row, for inspection
    key_of_generated: np.ndarray  # int64 [G]: the prefix each generated vector belongs to

    def lookup(self, user_rows: np.ndarray, hist_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, gaps) of the given samples' prefixes; every prefix must have been filled."""
        keys = np.asarray(user_rows, np.int64) * KEY_STRIDE + np.asarray(hist_ends, np.int64)
        at = np.searchsorted(self.keys, keys)
        if len(keys) and (
            at.max(initial=0) >= len(self.keys)
            or (self.keys[np.minimum(at, len(self.keys) - 1)] != keys).any()
        ):
            raise KeyError("a sample's prefix was not filled")
        return self.rows[at], self.gaps[at]

    def for_samples(self, samples: pd.DataFrame, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """The `train.Histories` protocol: the ranker reads filled histories like plain ones."""
        if max_len != self.rows.shape[1]:
            raise ValueError(f"histories were filled for L={self.rows.shape[1]}, not {max_len}")
        return self.lookup(samples["user_row"].to_numpy(), samples["hist_end"].to_numpy())


def sample_prefixes(data: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user_row, hist_end) of every sample, plus every user's whole log (serving)."""
    users = np.concatenate([data.samples["user_row"].to_numpy(), np.arange(len(data.user_ids))])
    ends = np.concatenate([data.samples["hist_end"].to_numpy(), np.diff(data.beh_offsets)]).astype(
        np.int64
    )
    keys = np.unique(users.astype(np.int64) * KEY_STRIDE + ends)
    return keys // KEY_STRIDE, keys % KEY_STRIDE


def fill_histories(
    data: Prepared,
    model: MaskPredictor,
    scale: float,
    reps: np.ndarray,
    votes: GapVotes,
    cfg: FillConfig,
    max_len: int,
    user_rows: np.ndarray | None = None,
    hist_ends: np.ndarray | None = None,
) -> FilledHistories:
    """Fill the prefixes (default: every sample's and every user's whole log); `max_len` is the
    ranker's history length (the predictor reads its own, shorter or not, window)."""
    if user_rows is None or hist_ends is None:
        user_rows, hist_ends = sample_prefixes(data)
    keys = user_rows.astype(np.int64) * KEY_STRIDE + hist_ends.astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys, user_rows, hist_ends = keys[order], user_rows[order], hist_ends[order]
    n, ctx = data.n_items, model.cfg.max_len
    reach = cfg.locate.window + cfg.locate.max_slots  # how far back a slot can sit
    if reach > min(max_len, ctx):
        raise ValueError(
            f"locate window + max_slots ({reach}) must fit the ranker's history ({max_len}) and "
            f"the predictor's window ({ctx})"
        )
    buckets = data.gap_buckets()
    rows = np.full((len(keys), max_len), n, dtype=np.int64)
    gaps = np.full((len(keys), max_len), GAP_UNKNOWN, dtype=np.uint8)
    # per prefix with slots: its predictor window (items, gaps, which positions are slots)
    windows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    for k, (u, h) in enumerate(zip(user_rows, hist_ends, strict=True)):
        start = int(data.beh_offsets[u])
        end = start + int(h)
        slots = slots_in_prefix(votes.votes, start, end, cfg.locate, votes.threshold)
        lo = max(start, end - max(max_len, ctx))
        positions = np.arange(lo, end)
        seq_items = data.beh_items[positions].astype(np.int64)
        seq_gaps = buckets[positions]
        if len(slots):
            at = np.searchsorted(positions, slots)
            seq_items = np.insert(seq_items, at, -1)
            seq_gaps = np.insert(seq_gaps, at, GAP_UNKNOWN)
        keep = min(max_len, len(seq_items))
        if keep:
            rows[k, max_len - keep :] = seq_items[-keep:]  # -1 marks a slot until filled
            gaps[k, max_len - keep :] = seq_gaps[-keep:]
        if len(slots):
            windows.append((k, seq_items[-ctx:], seq_gaps[-ctx:], seq_items[-ctx:] < 0))

    generated, nearest, owners = _denoise_windows(model, scale, reps, windows, cfg, rows, n)
    return FilledHistories(n, keys, rows, gaps, generated, nearest, keys[owners])


def _denoise_windows(
    model: MaskPredictor,
    scale: float,
    reps: np.ndarray,
    windows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    cfg: FillConfig,
    rows: np.ndarray,
    n_items: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the sampler over the windows in length-sorted batches; write generated row ids into
    `rows` (the -1 placeholders, in order) and return (latents, nearest, owner prefix index)."""
    device = next(model.parameters()).device
    catalog = torch.from_numpy(np.asarray(reps, np.float32) / scale).to(device)
    rep_dim = catalog.shape[1]
    latents, nearest, owners = [], [], []
    lengths = np.asarray([len(w[1]) for w in windows])
    batches = length_batches(lengths, cfg.batch_size, np.random.default_rng(cfg.sampler.seed))
    for batch in sorted(batches, key=lambda b: int(b.min()) if len(b) else 0):
        width = int(lengths[batch].max())
        items = np.full((len(batch), width), -1, dtype=np.int64)
        gap = np.zeros((len(batch), width), dtype=np.int64)
        valid = np.zeros((len(batch), width), dtype=bool)
        slot = np.zeros((len(batch), width), dtype=bool)
        for j, w in enumerate(batch):
            _, seq_items, seq_gaps, seq_slots = windows[w]
            m = len(seq_items)
            items[j, :m], gap[j, :m], valid[j, :m], slot[j, :m] = (
                seq_items,
                seq_gaps,
                True,
                seq_slots,
            )
        t_items = torch.from_numpy(items).to(device)
        x = catalog[t_items.clamp(min=0)] * torch.from_numpy(valid & ~slot).to(device)[..., None]
        out = denoise(
            model,
            x,
            torch.from_numpy(gap).to(device),
            torch.from_numpy(valid).to(device),
            torch.from_numpy(slot).to(device),
            catalog,
            cfg.sampler,
        )
        lat = (out.latents * scale).cpu().numpy()
        near = out.nearest.cpu().numpy()
        for j, w in enumerate(batch):
            cols = np.flatnonzero(slot[j])
            latents.append(lat[j, cols])
            nearest.append(near[j, cols])
            owners.append(np.full(len(cols), windows[w][0]))
    if not latents:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros((0, rep_dim), dtype=np.float32), empty, empty
    owner = np.concatenate(owners)
    # generated ids follow the order of prefixes then columns, like the -1 placeholders in rows
    order = np.argsort(owner, kind="stable")
    generated = np.concatenate(latents)[order].astype(np.float32)
    near = np.concatenate(nearest)[order]
    owner = owner[order]
    placeholders = np.argwhere(rows == -1)  # row-major: by prefix, then column
    # a slot that fell out of the ranker's window (it can't: slots are recent) would misalign
    counts = np.bincount(owner, minlength=len(rows))
    in_window = np.bincount(placeholders[:, 0], minlength=len(rows))
    if not np.array_equal(counts, in_window):
        raise RuntimeError("generated slots and history placeholders disagree")
    rows[placeholders[:, 0], placeholders[:, 1]] = n_items + 1 + np.arange(len(placeholders))
    return generated, near, owner
