"""The offline pipeline: load -> prepare -> encode -> train and calibrate (per feature set) ->
report (with a reliability diagram) -> export -> publish. Each step writes into one artifacts
folder per dataset; `encode` is cached by content hash, so reruns skip the slowest step.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Callable
from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reaseq.offline.baselines import all_baselines
from reaseq.offline.calibration import plot_reliability
from reaseq.offline.datasets import load_dataset
from reaseq.offline.export import export_release
from reaseq.offline.gbr.job import GBRJobConfig, GBRRun, run_gbr
from reaseq.offline.makr.job import MakrConfig, knowledge_summaries
from reaseq.offline.metrics import constant_logloss, expected_calibration_error
from reaseq.offline.prepare import PrepareConfig, Prepared, prepare
from reaseq.offline.representations import build_representation, representation_kind, uses_gbr
from reaseq.offline.text_reps import EMBED_CACHE, TextRepConfig
from reaseq.offline.train import (
    CHECKPOINT_FILE,
    FEATURE_SETS,
    TrainConfig,
    save_checkpoint,
    train_ranker,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
KNOWN_DATASETS = {
    "amazon18-scientific": "amazon18-scientific",
    "scientific": "amazon18-scientific",
    "amazon14-office": "amazon14-office",
    "office": "amazon14-office",
    "ml-100k": "ml-100k",
}
RELIABILITY_FILE = "reliability.png"


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout, or $REASEQ_SHARED_DATA."""
    env = os.environ.get("REASEQ_SHARED_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def resolve_dataset(dataset: str, work_dir: Path) -> tuple[str, Path]:
    """A dataset argument -> (name, path): a known name in shared data, 'synthetic', or a path."""
    if dataset == "synthetic":
        from reaseq.offline import synthetic

        return "synthetic", synthetic.generate(work_dir / "raw")
    if dataset in KNOWN_DATASETS:
        name = KNOWN_DATASETS[dataset]
        path = shared_data_dir() / name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: set REASEQ_SHARED_DATA to the data folder")
        return name, path
    path = Path(dataset)
    if not path.exists():
        known = ", ".join(["synthetic", *KNOWN_DATASETS])
        raise FileNotFoundError(f"{dataset!r} is neither a path nor a known dataset ({known})")
    return path.name, path


@dataclass
class PipelineConfig:
    dataset: str = "synthetic"
    artifacts_dir: Path = Path("artifacts")
    features: tuple[str, ...] = FEATURE_SETS  # feature sets to train and report
    export_features: str = "id+text"  # the trained model that becomes the release
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    text: TextRepConfig = field(default_factory=TextRepConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    makr: MakrConfig = field(default_factory=MakrConfig)  # knowledge for id+makr / id+hybrid
    gbr: GBRJobConfig = field(default_factory=GBRJobConfig)  # for feature sets id+<kind>+gbr


def apply_overrides(target: object, values: dict, where: str = "config") -> None:
    """Set dataclass fields from a (nested) dict; unknown keys are an error, not ignored."""
    known = {f.name: f for f in fields(target)}  # type: ignore[arg-type]
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(known))}")
        current = getattr(target, key)
        if is_dataclass(current) and isinstance(value, dict):
            apply_overrides(current, value, f"{where}.{key}")
        elif isinstance(current, Path) and isinstance(value, str):
            setattr(target, key, Path(value))  # TOML has no path type
        else:
            setattr(target, key, tuple(value) if isinstance(current, tuple) else value)
    check = getattr(target, "__post_init__", None)
    if check is not None:  # the dataclass's own checks (and derived fields) see the new values
        try:
            check()
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def load_pipeline_config(path: Path, cfg: PipelineConfig | None = None) -> PipelineConfig:
    """A TOML file with the PipelineConfig fields: top-level keys and [prepare], [text], [train],
    [train.ranker] tables (see configs/pipeline.example.toml)."""
    cfg = cfg or PipelineConfig()
    with path.open("rb") as fh:
        values = tomllib.load(fh)
    apply_overrides(cfg, values, str(path))
    return cfg


@dataclass
class PipelineResult:
    name: str
    work_dir: Path
    report: dict
    release_dir: Path | None


Log = Callable[[str], None]
if TYPE_CHECKING:
    from rich.progress import Progress


def run_pipeline(
    cfg: PipelineConfig,
    log: Log = print,
    export: bool = True,
    progress: Progress | None = None,
) -> PipelineResult:
    """Run every step; `progress` (a rich Progress) gets one bar per training run."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    name, path = resolve_dataset(cfg.dataset, cfg.artifacts_dir / "synthetic")
    work = cfg.artifacts_dir / name
    work.mkdir(parents=True, exist_ok=True)

    raw = load_dataset(path, name=name)
    log(raw.report.summary())
    data = prepare(raw, cfg.prepare)
    data.save(work / "prepared", extra={"load_report": asdict(raw.report)})
    timings["prepare_s"] = time.perf_counter() - t0
    log(f"prepared: {json.dumps(data.summary())}")

    reps: dict[str, np.ndarray] = {}
    for kind in dict.fromkeys(filter(None, map(representation_kind, cfg.features))):
        t = time.perf_counter()
        reps[kind] = build_representation(kind, data, work, cfg.text, makr=cfg.makr)
        timings[f"encode_{kind}_s"] = time.perf_counter() - t
        log(f"item representations '{kind}' {reps[kind].shape} in {time.perf_counter() - t:.1f}s")

    gbr_runs: dict[str, GBRRun] = {}
    for kind in dict.fromkeys(representation_kind(f) for f in cfg.features if uses_gbr(f)):
        t = time.perf_counter()
        bar = progress.add_task(f"gbr {kind}", total=None) if progress else None

        def on_gbr_batch(done: int, total: int, bar=bar) -> None:
            if progress is not None and bar is not None:
                progress.update(bar, completed=done, total=total)

        gbr_runs[kind] = run_gbr(
            data, reps[kind], kind, work, cfg.gbr, cfg.train.ranker.max_behaviors, log, on_gbr_batch
        )
        if progress is not None and bar is not None:
            progress.remove_task(bar)
        timings[f"gbr_{kind}_s"] = time.perf_counter() - t
        log(f"GBR over '{kind}': {json.dumps(gbr_runs[kind].report['fill'])}")

    results = {}
    histories_of = {}
    for features in cfg.features:
        t = time.perf_counter()
        train_cfg = _copy_train(cfg.train, features)
        bar = progress.add_task(f"train {features}", total=None) if progress else None

        def on_batch(done: int, total: int, bar=bar) -> None:
            if progress is not None and bar is not None:
                progress.update(bar, completed=done, total=total)

        kind = representation_kind(features)
        if uses_gbr(features):
            histories_of[features] = gbr_runs[kind].histories
        result = train_ranker(
            data,
            reps[kind] if kind else None,
            train_cfg,
            on_epoch=lambda row, f=features: log(f"[{f}] {_fmt(row)}"),
            on_batch=on_batch,
            histories=histories_of.get(features),
        )
        if progress is not None and bar is not None:
            progress.remove_task(bar)
        save_checkpoint(result, train_cfg, work / "models" / features / CHECKPOINT_FILE)
        results[features] = result
        timings[f"train_{features}_s"] = time.perf_counter() - t
        log(f"[{features}] test {_fmt(result.metrics['test'])} (best epoch {result.best_epoch})")

    split = data.samples["split"]
    train_labels = data.samples.loc[split == "train", "label"].to_numpy()
    report = {
        "dataset": name,
        "protocol": data.protocol,
        "data": data.summary(),
        "constant_predictor": {
            "train_positive_rate": float(train_labels.mean()),
            "test_logloss": constant_logloss(
                train_labels, data.samples.loc[split == "test", "label"].to_numpy()
            ),
        },
        "results": {
            f: {
                "test": r.metrics["test"],
                "test_uncalibrated": r.metrics["test_uncalibrated"],
                "val": r.metrics["val"],
                "val_uncalibrated": r.metrics["val_uncalibrated"],
                "calibration": r.calibration.to_dict(),
                "test_ece": {k: expected_calibration_error(v) for k, v in r.reliability.items()},
                "test_reliability": r.reliability,
                "best_epoch": r.best_epoch,
                "train_seconds": round(r.seconds, 1),
            }
            for f, r in results.items()
        },
        "baselines": all_baselines(data, load_text_embeddings(work)),
        "gbr": {kind: run.report for kind, run in gbr_runs.items()},
        "config": _jsonable(asdict(cfg)),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    if results:
        panels = {f"ranker {f}": r.reliability for f, r in results.items()}
        png = plot_reliability(panels, work / RELIABILITY_FILE, f"{name}: test reliability")
        report["reliability_png"] = str(png)
    release_dir = None
    if export and cfg.export_features in results:
        chosen = results[cfg.export_features]
        metrics = {f"test_{k}": v for k, v in chosen.metrics["test"].items() if k != "n"}
        metrics["test_logloss_uncalibrated"] = chosen.metrics["test_uncalibrated"]["logloss"]
        release_dir = export_release(
            chosen.model,
            data,
            work / "exports",
            cfg.export_features,
            metrics,
            histories=histories_of.get(cfg.export_features),
            knowledge=knowledge_summaries(work, cfg.makr.llm.model),
        )
        report["release"] = release_dir.name
    report["timings"]["total_s"] = round(time.perf_counter() - t0, 1)
    (work / "report.json").write_text(json.dumps(report, indent=2))
    (work / "report.md").write_text(render_report(report))
    return PipelineResult(name, work, report, release_dir)


def render_report(report: dict) -> str:
    const = report["constant_predictor"]
    lines = [
        f"# {report['dataset']} — {report['protocol']}",
        "",
        "| model | test AUC | test GAUC | test LogLoss uncalibrated -> calibrated "
        "| calibration (scale, bias) | val AUC | best epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for features, r in report["results"].items():
        t, u, v, c = r["test"], r["test_uncalibrated"], r["val"], r["calibration"]
        lines.append(
            f"| ranker `{features}` | {t['auc']:.4f} | {t['gauc']:.4f} "
            f"| {u['logloss']:.4f} -> {t['logloss']:.4f} "
            f"| {c['method']} ({c['scale']:.3f}, {c['bias']:+.3f}) "
            f"| {v['auc']:.4f} | {r['best_epoch']} |"
        )
    lines.append(
        f"| constant {const['train_positive_rate']:.4f} (train positive rate) | 0.5 | 0.5 "
        f"| {const['test_logloss']:.4f} | | | |"
    )
    for name, t in report["baselines"].items():
        lines.append(f"| baseline {name} | {t['auc']:.4f} | {t['gauc']:.4f} | n/a | | | |")
    lines += [
        "",
        "Calibration is fitted on validation only; it is monotone, so AUC and GAUC are those of",
        "the uncalibrated scores. Baselines score ranks, not probabilities: LogLoss n/a.",
        f"reliability diagram: {report.get('reliability_png', 'n/a')}",
        f"samples: {report['data']['samples']}",
        f"timings (s): {report['timings']}",
        "",
    ]
    return "\n".join(lines + render_gbr(report.get("gbr", {})))


def render_gbr(runs: dict) -> list[str]:
    """The GBR section of report.md: locator statistics, IB metrics, recovery vs the baseline."""
    lines = []
    for kind, r in runs.items():
        v, rec, loc = r["validation"], r["recovery"], r["locate"]
        lines += [
            f"## GBR over `{kind}` ({r['device']}, {r['epochs']} epochs, "
            f"{r['seconds_per_epoch_median']} s/epoch median)",
            "",
            f"- validation IB-PPL {v.get('val_ib_ppl', float('nan')):.1f}, "
            f"IB-ACC {v.get('val_ib_acc', float('nan')):.4f} ({v.get('val_masked', 0)} masked)",
        ]
        if rec.get("cases"):
            g, b = rec["gbr"], rec["neighbour_mean"]
            lines.append(
                f"- recovery of a hidden behavior ({rec['cases']} users, {rec['catalog']} items): "
                f"GBR HR@1 {g['hr@1']:.4f} HR@10 {g['hr@10']:.4f}; neighbour mean "
                f"HR@1 {b['hr@1']:.4f} HR@10 {b['hr@10']:.4f}"
            )
        lr = r.get("locator_recovery", {})
        if lr.get("cases"):
            lines.append(
                f"- locating a hidden behavior ({lr['cases']} windows, "
                f"{lr['gaps_per_window_mean']:.1f} gaps each): HR@1 / HR@3 learned "
                f"{lr['learned']['hr@1']:.3f} / {lr['learned']['hr@3']:.3f}, heuristic "
                f"{lr['heuristic']['hr@1']:.3f} / {lr['heuristic']['hr@3']:.3f}, chance "
                f"{lr['chance']['hr@1']:.3f} / {lr['chance']['hr@3']:.3f}"
            )
        lines += [
            f"- [FILL] slots ({loc['config']['method']} locator): {loc['slots']} over "
            f"{loc['users']} users' served logs "
            f"({loc['slots_per_user_mean']} per user); rule fire rate over all gaps "
            f"{loc['rule_fire_rate_over_all_gaps']}; timestamps: {loc['timestamps']}",
            f"- filled {r['fill']['prefixes']} prefixes with {r['fill']['generated']} generated "
            f"behaviors in {r['fill']['seconds']} s",
            "",
        ]
    return lines


def saved_histories(work: Path, features: str, log: Log = print):
    """The histories a trained `features` ranker of this artifacts folder was trained on: None
    for the plain log; for `+gbr`, GBR again with the configuration report.json recorded (its
    checkpoint is reused, the fill is recomputed), so an export publishes what training saw."""
    if not uses_gbr(features):
        return None
    report = work / "report.json"
    if not report.exists():
        raise FileNotFoundError(f"{report} not found: run `reaseq pipeline` with {features}")
    saved = json.loads(report.read_text())["config"]
    cfg = PipelineConfig()
    apply_overrides(cfg.gbr, saved["gbr"], "report.json gbr")
    kind = representation_kind(features)
    reps_file = work / "reps" / kind / "item_reps.npy"
    data = load_prepared(work)
    max_len = saved["train"]["ranker"]["max_behaviors"]
    return run_gbr(
        data, np.load(reps_file, allow_pickle=False), kind, work, cfg.gbr, max_len, log
    ).histories


def load_text_embeddings(work: Path) -> np.ndarray | None:
    path = work / "reps" / "text" / EMBED_CACHE
    return np.load(path, allow_pickle=False) if path.exists() else None


def load_prepared(work: Path) -> Prepared:
    return Prepared.load(work / "prepared")


def _copy_train(cfg: TrainConfig, features: str) -> TrainConfig:
    copy = deepcopy(cfg)
    copy.features = features
    return copy


def _fmt(row: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
