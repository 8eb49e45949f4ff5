"""`reaseq experiment DATASET`: every variant x every seed on one split, then one report with
mean ± std, paired bootstrap intervals, sparsity buckets and cost (experiment_report.py).

Variants (`VARIANTS`, the one table): a ranker feature set plus PipelineConfig overrides, written
as a TOML file would write them. Any other feature set name (`id+text+gbr`) is a variant with no
overrides, and registered peers (below) are variants too.

What a seed changes, and what it does not:
* changes: the ranker's initialisation and batch order (`TrainConfig.seed`); a peer's own seed;
* does not: the split and the sampled negatives (`PrepareConfig.seed`, one value for every run:
  each run records the prepared data's fingerprint and a mismatch is refused), the item
  representations (MiniLM + PCA, the MAKR projector with `EncodeConfig.seed`) and the GBR model
  and its fill (`GBRTrainConfig.seed`, sampler seed). Those are built once per configuration and
  shared by every seed, because GBR training is the slow step; so ± is the ranker's training
  variance given the representations and GBR, not theirs.

MAKR knowledge is never generated here unless asked (`makr.generate`, default False in
`ExperimentConfig`): shipped and cached knowledge only, raw text for the other items, counted.

Resumable and kill-safe: a run is trained into `runs/<variant>/.seed<k>.tmp-<pid>` and renamed to
`runs/<variant>/seed<k>` when complete (result.json, test/val predictions as .npy, and for the
first seed the serving cost). A finished run is skipped when its configuration key matches, and
refused with a clear error when it does not (use another `--out`).

Peers: another model trained on the same prepared samples, reported in the same tables. A
`PeerTrainer` is called as `trainer(data, reps, seed, out_dir, train)`: `data` is the Prepared
dataset (fit on `split_samples(data, "train")`, stop early on "val", never read "test" labels),
`reps` maps each kind named in `needs` to its [n_items, d] matrix (row = item row), `out_dir` is
a folder kept with the run, `train` the ranker's TrainConfig (epochs, patience, max_behaviors:
the budget to match). It returns `PeerPredictions`: click probabilities for the "test" and "val"
frames of `split_samples`, row for row. With `calibrated=False` the runner fits the pipeline's
calibration on the validation predictions, as it does for the ranker. Plugging one in:

    def fuxictr_din_text(data, reps, seed, out_dir, train) -> PeerPredictions:
        r = train_fuxictr_din(data, reps["text"], seed, out_dir, epochs=train.epochs)
        return PeerPredictions(r.predictions["test"], r.predictions["val"], calibrated=False)

    register_peer("fuxictr-din+text", fuxictr_din_text, needs=("text",))
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from reaseq.offline.pipeline import PipelineConfig, apply_overrides, resolve_dataset
from reaseq.offline.prepare import Prepared
from reaseq.offline.representations import representation_kind, uses_gbr
from reaseq.offline.train import TrainConfig

if TYPE_CHECKING:
    from reaseq.models.ranker import Ranker
    from reaseq.offline.gbr.fill import FilledHistories

RESULT_FILE = "result.json"
TEST_PRED_FILE = "test_pred.npy"
VAL_PRED_FILE = "val_pred.npy"
STATE_FILE = "experiment.json"
TEST_SAMPLES_FILE = "test_samples.parquet"
RUNS_DIR = "runs"

Log = Callable[[str], None]


class ExperimentError(ValueError):
    """A problem with the experiment's inputs or its folder, with the fix in the message."""


@dataclass(frozen=True)
class Variant:
    features: str  # the ranker's feature set; "" for a peer
    overrides: Mapping = field(default_factory=dict)  # PipelineConfig keys, nested as in TOML
    note: str = ""
    peer: str | None = None  # a registered peer's name instead of the ranker


DIN = {"train": {"ranker": {"attention": "din"}}}
WARM = {"gbr": {"train": {"model": {"warm_start": "minilm"}}}}
LEARNED = {"gbr": {"fill": {"locate": {"method": "learned"}}}}
FULL = "id+makr+gbr"
VARIANTS: dict[str, Variant] = {
    "id": Variant("id", note="item and user IDs only"),
    "id+text": Variant("id+text", note="+ MiniLM + PCA of the item text"),
    "id+makr": Variant("id+makr", note="+ MAKR knowledge through the CF-aligned projector"),
    "id+hybrid": Variant("id+hybrid", note="+ [knowledge ‖ raw text], instance term"),
    "full": Variant(FULL, note="id+makr with GBR-filled histories"),
    "full-din": Variant(FULL, DIN, "full, DIN MLP target attention instead of dot-product"),
    "full-warm": Variant(FULL, WARM, "full, GBR warm-started from MiniLM-L6 (d = 384)"),
    "full-learned": Variant(FULL, LEARNED, "full, learned [FILL] locator"),
    "full-alt": Variant(
        FULL,
        {"train": DIN["train"], "gbr": WARM["gbr"] | LEARNED["gbr"]},
        "full with all three alternatives at once",
    ),
}
DEFAULT_VARIANTS = tuple(VARIANTS)
FULL_FAMILY = tuple(name for name in VARIANTS if name.startswith("full"))
DEFAULT_COMPARISONS = (("full", "id+text"), ("full", "id"), ("full", "fuxictr-din"))


# -- peers ----------------------------------------------------------------------------------
@dataclass
class PeerPredictions:
    test: np.ndarray  # [S_test] click probabilities, split_samples(data, "test") order
    val: np.ndarray | None = None  # [S_val], split_samples(data, "val") order
    calibrated: bool = True  # False: the runner calibrates on `val` (then required)
    best_epoch: int | None = None
    info: dict = field(default_factory=dict)  # anything worth keeping in result.json


class PeerTrainer(Protocol):
    def __call__(
        self,
        data: Prepared,
        reps: Mapping[str, np.ndarray],
        seed: int,
        out_dir: Path,
        train: TrainConfig,
    ) -> PeerPredictions: ...


@dataclass(frozen=True)
class Peer:
    trainer: PeerTrainer
    needs: tuple[str, ...] = ()  # representation kinds the trainer reads
    note: str = ""


PEERS: dict[str, Peer] = {}


def register_peer(
    name: str, trainer: PeerTrainer, needs: tuple[str, ...] = (), note: str = ""
) -> None:
    """Make `name` a variant; registered peers join the default variant list."""
    if name in VARIANTS:
        raise ValueError(f"{name!r} is a ranker variant; give the peer another name")
    for kind in needs:
        representation_kind(f"id+{kind}")  # raises on an unknown kind
    PEERS[name] = Peer(trainer, tuple(needs), note or f"peer {name}")


def split_samples(data: Prepared, split: str) -> pd.DataFrame:
    """A split's samples in the order every prediction array of the experiment follows."""
    return data.samples[data.samples["split"] == split].reset_index(drop=True)


# -- configuration --------------------------------------------------------------------------
@dataclass
class ExperimentConfig:
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    variants: tuple[str, ...] = ()  # () = DEFAULT_VARIANTS + registered peers
    seeds: tuple[int, ...] = (0, 1, 2)
    out_dir: Path | None = None  # None: <artifacts>/<dataset>/experiment
    comparisons: tuple[tuple[str, str], ...] = DEFAULT_COMPARISONS  # (a, b): GAUC a - b
    bootstrap: int = 1000  # user resamples per comparison
    bootstrap_seed: int = 0
    cost: bool = True  # export, embedded publish and model-only latency, once per variant
    latency_seconds: float = 1.0  # timed phase of the model-only benchmark
    user_buckets: tuple[int, ...] = (0, 3, 6, 11, 21)  # lower edges, train-period behaviors
    popularity_buckets: int = 4  # quantile buckets of train-period item popularity
    # False: MAKR knowledge from the shipped file and the cache only (whatever the pipeline
    # config says); items without it are encoded from their raw text, and the report counts them
    makr_generate: bool = False

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ExperimentError("seeds: at least one, no repeats")
        if self.bootstrap < 1 or self.popularity_buckets < 1 or self.latency_seconds <= 0:
            raise ExperimentError("bootstrap and popularity_buckets >= 1, latency_seconds > 0")


def resolve_variants(names: tuple[str, ...]) -> dict[str, Variant]:
    """Names -> variants: the table, registered peers, or any valid feature set."""
    out = {}
    for name in names or (*DEFAULT_VARIANTS, *PEERS):
        if name in VARIANTS:
            out[name] = VARIANTS[name]
        elif name in PEERS:
            out[name] = Variant("", note=PEERS[name].note, peer=name)
        else:
            try:
                representation_kind(name)
                uses_gbr(name)
            except ValueError:
                known = ", ".join([*VARIANTS, *PEERS])
                raise ExperimentError(
                    f"unknown variant {name!r}; known: {known}, or a feature set such as "
                    "id+text+gbr"
                ) from None
            out[name] = Variant(name, note="feature set as named")
    return out


def variant_config(base: PipelineConfig, variant: Variant, name: str) -> PipelineConfig:
    cfg = deepcopy(base)
    apply_overrides(cfg, deepcopy(dict(variant.overrides)), f"variant {name}")
    return cfg


# what changes speed, or is derived from the data, but does not change results
_RUNTIME_KEYS = {"threads", "device", "rep_dim", "n_items", "rep_in_dim"}


def _strip(value):
    """A config dict without _RUNTIME_KEYS, at any depth."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _RUNTIME_KEYS}
    return value


def relevant_config(cfg: PipelineConfig, variant: Variant) -> dict:
    """What a run's result depends on (besides the data and the seed)."""
    parts: dict = {"prepare": asdict(cfg.prepare)}
    kinds: list[str] = []
    if variant.peer is not None:
        parts["peer"] = variant.peer
        kinds = list(PEERS[variant.peer].needs)
    else:
        parts["features"] = variant.features
        train = {k: v for k, v in asdict(cfg.train).items() if k not in ("features", "seed")}
        parts["train"] = _strip(train)
        kind = representation_kind(variant.features)
        kinds = [kind] if kind else []
        if uses_gbr(variant.features):
            # the GBR model's own seeds stay in: they are configuration, not the run's seed
            parts["gbr"] = _strip(asdict(cfg.gbr))
    if kinds:
        parts["text"] = asdict(cfg.text)
    if set(kinds) & {"makr", "hybrid"}:
        parts["makr"] = {
            "model": cfg.makr.llm.model,
            "output": cfg.makr.output,
            "generate": cfg.makr.generate,
            "encode": asdict(cfg.makr.encode),
        }
    return json.loads(json.dumps(parts, default=str))


def run_key(relevant: dict, seed: int, fingerprint: str) -> str:
    raw = json.dumps([relevant, seed, fingerprint], sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def data_fingerprint(data: Prepared) -> str:
    """The split, the negatives and the behavior log: equal for every run of one experiment."""
    digest = hashlib.sha256(data.protocol.encode())
    for column in ("user_row", "item_row", "label", "hist_end"):
        digest.update(np.ascontiguousarray(data.samples[column].to_numpy()).tobytes())
    digest.update("\n".join(data.samples["split"].astype(str)).encode())
    digest.update(np.ascontiguousarray(data.beh_items).tobytes())
    digest.update(np.ascontiguousarray(data.beh_offsets).tobytes())
    digest.update("\n".join(data.items["item_id"].astype(str)).encode())
    return digest.hexdigest()[:16]


def reps_fingerprint(reps: np.ndarray | None) -> str | None:
    if reps is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(reps, np.float32).tobytes()).hexdigest()[:16]


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the runner -----------------------------------------------------------------------------
@dataclass
class ExperimentResult:
    out_dir: Path
    report: dict
    trained: list[tuple[str, int]]  # runs trained by this call
    skipped: list[tuple[str, int]]  # finished before this call
    failed: dict[str, str]  # "variant/seed" -> error


class Experiment:
    """Prepare once; representations and GBR once per configuration, built only when a run
    that needs them is not finished yet; then every (variant, seed)."""

    def __init__(self, cfg: ExperimentConfig, log: Log = print) -> None:
        self.cfg, self.log = cfg, log
        self.variants = resolve_variants(cfg.variants)
        base = deepcopy(cfg.pipeline)
        base.makr.generate = cfg.makr_generate
        self.configs = {name: variant_config(base, v, name) for name, v in self.variants.items()}
        self._reps: dict[str, tuple[np.ndarray, dict] | Exception] = {}
        self._gbr: dict[str, tuple[FilledHistories, dict] | Exception] = {}

    # -- stages, cached in memory for this process -------------------------------------------
    def representation(self, kind: str, cfg: PipelineConfig) -> tuple[np.ndarray, dict]:
        """(reps, info: encode seconds, knowledge coverage, LLM hours of that knowledge)."""
        key = json.dumps([kind, asdict(cfg.text), asdict(cfg.makr)], default=str)
        if key not in self._reps:
            try:
                self._reps[key] = self._build_representation(kind, cfg)
            except Exception as err:  # every run that needs it fails the same way, once
                self._reps[key] = err
        got = self._reps[key]
        if isinstance(got, Exception):
            raise got
        return got

    def _build_representation(self, kind: str, cfg: PipelineConfig) -> tuple[np.ndarray, dict]:
        from reaseq.offline.representations import build_representation
        from reaseq.offline.text_reps import REPS_SUMMARY

        started = time.perf_counter()
        reps = build_representation(kind, self.data, self.work, cfg.text, makr=cfg.makr)
        info: dict = {"kind": kind, "encode_seconds": round(time.perf_counter() - started, 2)}
        if kind in ("makr", "hybrid"):
            from reaseq.offline.makr.job import load_knowledge

            summary = json.loads((self.work / "reps" / kind / REPS_SUMMARY).read_text())
            folder = self.work / "makr" / Path(cfg.makr.llm.model).stem
            records = load_knowledge(folder)
            catalog = set(self.data.items["item_id"].astype(str))
            used = [r for r in records.values() if r["item_id"] in catalog and r.get("card")]
            info |= {
                "items": self.data.n_items,
                "items_without_knowledge": summary["items_without_card"],
                "llm_model": cfg.makr.llm.model,
                "llm_hours": round(sum(float(r.get("seconds", 0.0)) for r in used) / 3600, 3),
            }
        self.log(f"representation {kind} {reps.shape} {json.dumps(info)}")
        return reps, info

    def gbr(self, kind: str, reps: np.ndarray, cfg: PipelineConfig) -> tuple[FilledHistories, dict]:
        """(FilledHistories, info: GBR training and fill seconds)."""
        key = json.dumps(
            [kind, reps_fingerprint(reps), asdict(cfg.gbr), cfg.train.ranker.max_behaviors],
            default=str,
        )
        if key not in self._gbr:
            try:
                self._gbr[key] = self._run_gbr(kind, reps, cfg)
            except Exception as err:
                self._gbr[key] = err
        got = self._gbr[key]
        if isinstance(got, Exception):
            raise got
        return got

    def _run_gbr(
        self, kind: str, reps: np.ndarray, cfg: PipelineConfig
    ) -> tuple[FilledHistories, dict]:
        from reaseq.offline.gbr.job import run_gbr
        from reaseq.offline.gbr.train import REPORT_FILE as TRAIN_REPORT

        max_len = cfg.train.ranker.max_behaviors
        gbr_cfg = deepcopy(cfg.gbr)  # training sets derived fields (rep_dim) on its config
        run = run_gbr(self.data, reps, kind, self.work, gbr_cfg, max_len, self.log)
        trained = json.loads((run.out_dir / TRAIN_REPORT).read_text())
        info = {
            "out_dir": str(run.out_dir),
            "device": run.report["device"],
            "epochs": run.report["epochs"],
            # summed over the checkpoint's epochs: the same figure when a later process reuses it
            "train_seconds": round(sum(r["seconds"] for r in trained["history"]), 3),
            "fill_seconds": run.report["fill"]["seconds"],
            "generated": run.report["fill"]["generated"],
            "slots_per_user_mean": run.report["locate"]["slots_per_user_mean"],
        }
        return run.histories, info

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> ExperimentResult:
        from reaseq.offline.datasets import load_dataset
        from reaseq.offline.prepare import prepare

        pipe = self.cfg.pipeline
        dataset, path = resolve_dataset(pipe.dataset, pipe.artifacts_dir / "synthetic")
        self.work = pipe.artifacts_dir / dataset
        self.out = self.cfg.out_dir or self.work / "experiment"
        raw = load_dataset(path, name=dataset)
        self.data = prepare(raw, pipe.prepare)
        self.fingerprint = data_fingerprint(self.data)
        self._open_folder(dataset)

        keys = {  # before anything runs: no stage can change a configuration it hashes
            (name, seed): run_key(relevant_config(self.configs[name], v), seed, self.fingerprint)
            for name, v in self.variants.items()
            for seed in self.cfg.seeds
        }
        finished = {run for run in keys if (self.run_dir(*run) / RESULT_FILE).exists()}
        for run in sorted(finished):  # refuse a mismatch before training anything
            self._check_finished(self.run_dir(*run), keys[run])
        trained, failed = [], {}
        for run, key in keys.items():
            if run in finished:
                continue
            name, seed = run
            self.log(f"[{name} seed {seed}] training")
            try:
                self._train(name, self.variants[name], seed, key)
            except Exception as err:  # the other runs go on; a rerun retries this one
                failed[f"{name}/{seed}"] = f"{type(err).__name__}: {err}"
                self.log(f"[{name} seed {seed}] FAILED {failed[f'{name}/{seed}']}")
                continue
            trained.append(run)
        skipped = [run for run in keys if run in finished]

        from reaseq.offline.experiment_report import build_report, write_report

        report = build_report(self, failed)
        write_report(report, self.out)
        return ExperimentResult(self.out, report, trained, skipped, failed)

    def _open_folder(self, name: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        state_path = self.out / STATE_FILE
        if state_path.exists():
            state = json.loads(state_path.read_text())
            if state["fingerprint"] != self.fingerprint:
                raise ExperimentError(
                    f"{self.out} holds runs on other prepared data (fingerprint "
                    f"{state['fingerprint']}, now {self.fingerprint}): use another --out"
                )
        else:
            _write_json(
                state_path,
                {"dataset": name, "protocol": self.data.protocol, "fingerprint": self.fingerprint},
            )
        samples = split_samples(self.data, "test")[["user_row", "item_row", "label"]]
        samples.to_parquet(self.out / TEST_SAMPLES_FILE, index=False)
        for stale in (self.out / RUNS_DIR).glob("*/.seed*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # runs killed before they finished

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.out / RUNS_DIR / variant / f"seed{seed}"

    def _check_finished(self, done: Path, key: str) -> None:
        saved = json.loads((done / RESULT_FILE).read_text())
        if saved.get("key") != key:
            raise ExperimentError(
                f"{done} was trained with another configuration or other data; remove that "
                "folder to retrain it, or use another --out"
            )

    def _train(self, name: str, variant: Variant, seed: int, key: str) -> None:
        final = self.run_dir(name, seed)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cfg = self.configs[name]
        started = time.perf_counter()
        if variant.peer is not None:
            record = self._train_peer(variant, cfg, seed, tmp)
        else:
            record = self._train_ranker(name, variant, cfg, seed, tmp)
        record |= {
            "variant": name,
            "features": variant.features,
            "peer": variant.peer,
            "seed": seed,
            "key": key,
            "data_fingerprint": self.fingerprint,
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
        _write_json(tmp / RESULT_FILE, record)
        os.replace(tmp, final)  # the run exists only once it is complete
        t = record["test"]
        self.log(
            f"[{name} seed {seed}] test AUC {t['auc']:.4f} GAUC {t['gauc']:.4f} "
            f"LogLoss {t['logloss']:.4f}"
        )

    def _train_ranker(
        self, name: str, variant: Variant, cfg: PipelineConfig, seed: int, out: Path
    ) -> dict:
        from reaseq.offline.train import train_ranker

        kind = representation_kind(variant.features)
        reps, upstream = None, {}
        if kind:
            reps, upstream["representation"] = self.representation(kind, cfg)
        histories = None
        if uses_gbr(variant.features):
            assert kind is not None and reps is not None  # uses_gbr implies a representation
            histories, upstream["gbr"] = self.gbr(kind, reps, cfg)
        train_cfg = deepcopy(cfg.train)
        train_cfg.features, train_cfg.seed = variant.features, seed
        result = train_ranker(
            self.data,
            reps,
            train_cfg,
            on_epoch=lambda row: self.log(f"[{name} seed {seed}] " + _fmt(row)),
            histories=histories,
        )
        np.save(out / TEST_PRED_FILE, result.predictions["test"])
        np.save(out / VAL_PRED_FILE, result.predictions["val"])
        record = {
            "test": result.metrics["test"],
            "test_uncalibrated": result.metrics["test_uncalibrated"],
            "val": result.metrics["val"],
            "val_uncalibrated": result.metrics["val_uncalibrated"],
            "calibration": result.calibration.to_dict(),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "history": result.history,
            "train_seconds": round(result.seconds, 2),
            "threads": train_cfg.threads,
            "reps_fingerprint": reps_fingerprint(reps),
            "upstream": upstream,
        }
        if self.cfg.cost and seed == min(self.cfg.seeds):
            record["cost"] = self._serving_cost(result.model, variant.features, histories, out)
        return record

    def _serving_cost(
        self, model: Ranker, features: str, histories: FilledHistories | None, out: Path
    ) -> dict:
        """Export the run's model as a release, publish it into an empty embedded store, and
        time the model alone in the service's ONNX Runtime backend (1 thread, one request of
        200 candidates x 100 behaviors per call). Keeps model.onnx, drops the snapshot."""
        from reaseq.bench.model import bench_model
        from reaseq.core.release import MANIFEST_FILE, MODEL_FILE
        from reaseq.offline.export import export_release
        from reaseq.offline.publish import EmbeddedPublisher

        started = time.perf_counter()
        release = export_release(
            model, self.data, out / "export", features, metrics={}, histories=histories
        )
        export_s = time.perf_counter() - started
        started = time.perf_counter()
        store = out / "store"
        published = EmbeddedPublisher(store).publish(release, activate=True)
        publish_s = time.perf_counter() - started
        (row,) = bench_model(
            release, "cpu", (1,), 200, 100, seconds=self.cfg.latency_seconds, threads=1
        )
        cost = {
            "export_seconds": round(export_s, 2),
            "publish_seconds_embedded": round(publish_s, 2),
            "store_bytes_embedded": folder_bytes(store / published),
            "model_bytes": (release / MODEL_FILE).stat().st_size,
            "latency_ms_per_request": round(row.ms_per_call, 4),
            # one thread serves one request at a time: core-seconds per 1,000 requests
            "core_seconds_per_1000_requests": round(row.ms_per_call, 3),
            "latency_shape": "1 request x 200 candidates x 100 behaviors, 1 thread, CPU",
        }
        shutil.copy(release / MODEL_FILE, out / MODEL_FILE)
        shutil.copy(release / MANIFEST_FILE, out / MANIFEST_FILE)
        shutil.rmtree(out / "export")
        shutil.rmtree(store)
        return cost

    def _train_peer(self, variant: Variant, cfg: PipelineConfig, seed: int, out: Path) -> dict:
        from reaseq.offline.calibration import fit_calibration
        from reaseq.offline.metrics import ctr_metrics

        assert variant.peer is not None
        peer = PEERS[variant.peer]
        reps, upstream = {}, {}
        for kind in peer.needs:
            reps[kind], upstream[f"representation_{kind}"] = self.representation(kind, cfg)
        started = time.perf_counter()
        got = peer.trainer(self.data, reps, seed, out / "peer", deepcopy(cfg.train))
        seconds = time.perf_counter() - started
        frames = {s: split_samples(self.data, s) for s in ("val", "test")}
        preds = {"test": got.test, "val": got.val}
        for split, frame in frames.items():
            p = preds[split]
            if p is None:
                continue
            p = np.asarray(p, np.float64)
            if p.shape != (len(frame),) or not (np.isfinite(p) & (p >= 0) & (p <= 1)).all():
                raise ExperimentError(
                    f"peer {variant.peer}: {split} predictions must be {len(frame)} "
                    "probabilities in [0, 1], in split_samples order"
                )
            preds[split] = p
        record: dict = {"best_epoch": got.best_epoch, "peer_info": got.info, "upstream": upstream}
        if not got.calibrated:
            if preds["val"] is None:
                raise ExperimentError(f"peer {variant.peer}: calibrated=False needs val scores")
            logit = {s: _logit(p) for s, p in preds.items() if p is not None}
            calibration = fit_calibration(
                logit["val"], frames["val"]["label"].to_numpy(), cfg.train.calibration
            )
            record["calibration"] = calibration.to_dict()
            for split, frame in frames.items():
                record[f"{split}_uncalibrated"] = ctr_metrics(
                    frame["user_row"].to_numpy(), frame["label"].to_numpy(), preds[split]
                )
            preds = {s: calibration.probabilities(z) for s, z in logit.items()}
        for split, frame in frames.items():
            if preds[split] is not None:
                record[split] = ctr_metrics(
                    frame["user_row"].to_numpy(), frame["label"].to_numpy(), preds[split]
                )
                np.save(out / (TEST_PRED_FILE if split == "test" else VAL_PRED_FILE), preds[split])
        record["train_seconds"] = round(seconds, 2)
        return record


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _fmt(row: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def run_experiment(cfg: ExperimentConfig, log: Log = print) -> ExperimentResult:
    return Experiment(cfg, log).run()
