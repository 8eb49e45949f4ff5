"""GBR variants against the same ranker without GBR, on one machine, from a pipeline's artifacts:

    python -m reaseq.offline.gbr.compare ARTIFACTS/DATASET --variants small,cold384,warm384 \
        --seeds 0,1,2 --device cuda --threads 16 --out results.json

Each variant trains (or reuses) its mask predictor and fills the histories; then `id+text` and
`id+text+gbr` rankers are trained with each seed. `small` is configs/gbr.toml's model; `cold384`
and `warm384` are the warm-start comparison (d = 384, 6 layers, identical settings; warm copies
MiniLM-L6). Results are written after every step, so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from reaseq.models.gbr import GBRConfig
from reaseq.offline.gbr.job import GBRJobConfig, run_gbr
from reaseq.offline.gbr.train import GBRTrainConfig
from reaseq.offline.prepare import Prepared
from reaseq.offline.train import TrainConfig, train_ranker


def variant(name: str, device: str) -> GBRTrainConfig:
    models = {  # model, lr, batch, max epochs: as measured in the README
        "small": (GBRConfig(), 1e-3, 64, 60),
        "cold384": (GBRConfig(d_model=384, n_layers=6, n_heads=12, ff_dim=1536), 3e-4, 128, 20),
        "warm384": (GBRConfig(warm_start="minilm"), 3e-4, 128, 20),
    }
    model, lr, batch, epochs = models[name]
    return GBRTrainConfig(
        model=model, epochs=epochs, patience=4, lr=lr, batch_size=batch, device=device
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a pipeline's artifacts/<dataset> folder")
    parser.add_argument("--variants", default="small")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("gbr_compare.json"))
    args = parser.parse_args()

    data = Prepared.load(args.work / "prepared")
    reps = np.load(args.work / "reps" / "text" / "item_reps.npy", allow_pickle=False)
    results: dict = {"work": str(args.work)}
    seeds = [int(s) for s in args.seeds.split(",")]

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=1, default=str))

    def ranker(histories, seed: int) -> dict:
        started = time.perf_counter()
        features = "id+text+gbr" if histories is not None else "id+text"
        cfg = TrainConfig(features=features, threads=args.threads, seed=seed)
        metrics = train_ranker(data, reps, cfg, histories=histories).metrics["test"]
        return {k: metrics[k] for k in ("auc", "gauc", "logloss")} | {
            "seconds": round(time.perf_counter() - started, 1)
        }

    for name in args.variants.split(","):
        cfg = GBRJobConfig(train=variant(name, args.device))
        run = run_gbr(data, reps, "text", args.work, cfg, 100, log=lambda _m: None)
        keep = ("epochs", "seconds_per_epoch_median", "device", "validation", "recovery")
        results[name] = {k: run.report[k] for k in keep} | {"rankers": {}}
        save()
        for seed in seeds:
            results.setdefault("id+text", {})[str(seed)] = results.get("id+text", {}).get(
                str(seed)
            ) or ranker(None, seed)
            results[name]["rankers"][str(seed)] = ranker(run.histories, seed)
            save()
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
