"""The GBR job as the pipeline and `reaseq gbr` run it: train (or reuse) the mask predictor for one
item representation, report its quality, and fill every sample's history and every user's log.

Artifacts live in `<work>/gbr/<representation>/<key>/`, where the key hashes the configuration,
the representation matrix and the behavior log, so a changed input trains a new model and an
unchanged one reuses the checkpoint (or continues it, if the run was killed).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reaseq.offline.gbr.evaluate import recovery
from reaseq.offline.gbr.fill import FillConfig, FilledHistories, fill_histories
from reaseq.offline.gbr.learned_locator import learned_votes, locator_recovery, train_locator
from reaseq.offline.gbr.locate import PairRules, gap_votes, locate_report
from reaseq.offline.gbr.train import GBRTrainConfig, resume_identity, train_gbr
from reaseq.offline.prepare import Prepared

REPORT_FILE = "gbr_report.json"


@dataclass
class GBRJobConfig:
    train: GBRTrainConfig = field(default_factory=GBRTrainConfig)
    fill: FillConfig = field(default_factory=FillConfig)


@dataclass
class GBRRun:
    histories: FilledHistories
    report: dict
    out_dir: Path


def run_key(data: Prepared, reps: np.ndarray, cfg: GBRJobConfig) -> str:
    identity = resume_identity(asdict(cfg.train))
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(reps, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(data.beh_items).tobytes())
    digest.update(np.ascontiguousarray(data.beh_offsets).tobytes())
    return digest.hexdigest()[:12]


def run_gbr(
    data: Prepared,
    reps: np.ndarray,
    kind: str,
    work: Path,
    cfg: GBRJobConfig,
    max_len: int,
    log: Callable[[str], None] = print,
    on_batch: Callable[[int, int], None] | None = None,
) -> GBRRun:
    """Train or reuse, evaluate, locate and fill; the report is also written beside the model."""
    out_dir = work / "gbr" / kind / run_key(data, reps, cfg)
    started = time.perf_counter()
    result = train_gbr(
        data,
        reps,
        cfg.train,
        out_dir,
        on_epoch=lambda row: log(f"[gbr {kind}] " + json.dumps(row)),
        on_batch=on_batch,
    )
    model, scale = result.model, result.scale
    train_s = time.perf_counter() - started
    rec = recovery(data, model, scale, reps, cfg.train.val_users, cfg.train.seed, cfg.fill.sampler)
    locate = cfg.fill.locate
    started = time.perf_counter()
    window = model.cfg.max_len
    locator, features = train_locator(
        data, reps, window, cfg.train.val_users, cfg.train.seed, locate.cf_window
    )
    locators = locator_recovery(
        data,
        window,
        cfg.train.val_users,
        cfg.train.seed,
        locator,
        features,
        PairRules(data, locate),
    )
    if locate.method == "learned":
        votes = learned_votes(data, locator, features, locate.learned_threshold)
    else:
        votes = gap_votes(data, locate)
    locators["seconds"] = round(time.perf_counter() - started, 1)
    stats = locate_report(data, votes, locate)
    started = time.perf_counter()
    histories = fill_histories(data, model, scale, reps, votes, cfg.fill, max_len)
    fill_s = time.perf_counter() - started
    report = {
        "representation": kind,
        "device": result.device,
        "epochs": len(result.history),
        "seconds_per_epoch_median": round(result.seconds_per_epoch, 4),
        "train_seconds": round(train_s, 3),  # tiny runs finish in < 0.05 s
        "validation": result.best,
        "recovery": rec,
        "locate": stats,
        "locator_recovery": locators,
        "fill": {
            "prefixes": len(histories.keys),
            "generated": len(histories.generated),
            "seconds": round(fill_s, 3),
        },
        "out_dir": str(out_dir),
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str))
    return GBRRun(histories, report, out_dir)
