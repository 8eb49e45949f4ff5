"""`reaseq gbr ...`: where logs get [FILL] slots (locate), the mask predictor and its quality
(train), and the filled sequences themselves (fill). torch is imported inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from reaseq.cli_makr import ArtifactsOpt, DatasetArg, _fail, _prepared, console, err_console

gbr_app = typer.Typer(help="GBR: generated beyond-log behaviors at the gaps of users' logs.")
REPRESENTATIONS = ("text", "makr", "hybrid")

RepresentationOpt = Annotated[
    str, typer.Option(help="item representation GBR reads and predicts: text | makr | hybrid")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        help="pipeline TOML file ([gbr.*] tables are read, e.g. configs/gbr.toml)",
        show_default="the built-in defaults",
    ),
]


def _job(config: Path | None, epochs: int | None, warm_start: str | None, device: str | None):
    """The pipeline config (its [gbr] part is the job's), from TOML with options on top."""
    from reaseq.offline.pipeline import PipelineConfig, apply_overrides, load_pipeline_config

    try:
        cfg = load_pipeline_config(config) if config else PipelineConfig()
        if epochs is not None:
            cfg.gbr.train.epochs = epochs
        if warm_start is not None:
            apply_overrides(cfg.gbr.train.model, {"warm_start": warm_start}, "--warm-start")
        if device is not None:
            cfg.gbr.train.device = device
    except (OSError, ValueError) as err:
        _fail(str(err))
        raise  # unreachable: _fail exits
    return cfg


def _run(dataset, artifacts, representation, config, epochs, warm_start, device):
    """Prepare, represent, then train-or-reuse, evaluate and fill (offline/gbr/job.py)."""
    from reaseq.offline.gbr.job import run_gbr
    from reaseq.offline.representations import build_representation

    if representation not in REPRESENTATIONS:
        _fail(f"--representation must be one of {', '.join(REPRESENTATIONS)}")
    cfg = _job(config, epochs, warm_start, device)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("--device cuda: no CUDA device is visible to torch here")
    name, _, data = _prepared(dataset, artifacts)
    work = artifacts / name
    reps = build_representation(representation, data, work, cfg.text, makr=cfg.makr)
    max_len = cfg.train.ranker.max_behaviors
    try:
        run = run_gbr(data, reps, representation, work, cfg.gbr, max_len, log=err_console.print)
    except ValueError as err:
        _fail(str(err))
        raise
    return data, run


EpochsOpt = Annotated[
    int | None,
    typer.Option(help="max epochs (early stopping on IB-PPL)", show_default="the config's (30)"),
]
WarmOpt = Annotated[
    str | None,
    typer.Option(
        help="'' cold start | minilm (MiniLM-L6 layers, d = 384)", show_default="cold start"
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option(help="auto | cpu | cuda", show_default="auto: CUDA when present")
]


@gbr_app.command("locate")
def locate_cmd(
    dataset: DatasetArg,
    artifacts: ArtifactsOpt = Path("artifacts"),
    config: ConfigOpt = None,
) -> None:
    """[FILL] statistics: slots per user and which rules fired (no model needed)."""
    from reaseq.offline.gbr.locate import gap_votes, locate_report

    cfg = _job(config, None, None, None)
    _, _, data = _prepared(dataset, artifacts)
    report = locate_report(data, gap_votes(data, cfg.gbr.fill.locate), cfg.gbr.fill.locate)
    console.print_json(json.dumps(report))


@gbr_app.command("train")
def train_cmd(
    dataset: DatasetArg,
    artifacts: ArtifactsOpt = Path("artifacts"),
    representation: RepresentationOpt = "text",
    config: ConfigOpt = None,
    epochs: EpochsOpt = None,
    warm_start: WarmOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Train (or continue, or reuse) the mask predictor; report IB-PPL, IB-ACC, recovery HR
    against the neighbour-mean baseline, [FILL] statistics and time per epoch."""
    _, run = _run(dataset, artifacts, representation, config, epochs, warm_start, device)
    console.print_json(json.dumps(run.report, default=str))


@gbr_app.command("fill")
def fill_cmd(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option(help="parquet file of the filled sequences")],
    artifacts: ArtifactsOpt = Path("artifacts"),
    representation: RepresentationOpt = "text",
    config: ConfigOpt = None,
    epochs: EpochsOpt = None,
    warm_start: WarmOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Each user's whole log as served, one row per position: real or generated, the item (or a
    generated position's nearest item), its gap bucket; latents go beside it as .npy."""
    import numpy as np
    import pandas as pd

    data, run = _run(dataset, artifacts, representation, config, epochs, warm_start, device)
    h, n = run.histories, data.n_items
    users = np.arange(len(data.user_ids))
    rows, gaps = h.lookup(users, np.diff(data.beh_offsets))
    user_of, position = np.nonzero(rows != n)
    picked = rows[user_of, position]
    generated = picked > n
    g = np.where(generated, picked - n - 1, -1)
    item_row = np.where(generated, h.nearest[np.maximum(g, 0)], picked)
    latent_index = np.full(len(picked), -1)
    latent_index[generated] = np.arange(int(generated.sum()))
    frame = pd.DataFrame(
        {
            "user_id": data.user_ids[user_of],
            "position": position - (rows.shape[1] - (rows != n).sum(axis=1))[user_of],
            "generated": generated,
            "item_id": data.items["item_id"].to_numpy()[item_row],  # nearest, when generated
            "gap_bucket": gaps[user_of, position],
            "latent_index": latent_index,  # row of <out>.latents.npy, -1 for real behaviors
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    latents = out.with_suffix(".latents.npy")
    np.save(latents, h.generated[g[generated]])
    console.print(
        f"{len(frame)} positions for {len(users)} users, {int(generated.sum())} generated -> {out}"
        f" (+ {latents.name})"
    )
