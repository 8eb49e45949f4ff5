"""`reaseq experiment DATASET`: every variant x seeds on one split, one report (mean ± std,
bootstrap intervals, sparsity buckets, cost). torch is imported inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> None:
    err_console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def _pairs(values: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        a, sep, b = value.partition(":")
        if not sep or not a or not b:
            raise typer.BadParameter(f"--compare takes A:B (GAUC of A minus B), got {value!r}")
        pairs.append((a, b))
    return tuple(pairs)


def experiment(
    dataset: Annotated[
        str,
        typer.Argument(
            help="synthetic | scientific | office | ml-100k (names under $REASEQ_SHARED_DATA, "
            "default ../shared/data) | a dataset folder or file"
        ),
    ],
    seeds: Annotated[int, typer.Option(help="ranker seeds 0..N-1 per variant", min=1)] = 3,
    variants: Annotated[
        str | None,
        typer.Option(
            help="comma-separated: id, id+text, id+makr, id+hybrid, full, full-din, full-warm, "
            "full-learned, full-alt, a registered peer, or any feature set (id+text+gbr)",
            show_default="all of the table and the registered peers",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="base pipeline TOML (PipelineConfig keys)", show_default="none"),
    ] = None,
    artifacts: Annotated[
        Path | None,
        typer.Option(
            help="artifacts folder (caches shared with `reaseq pipeline`)", show_default="artifacts"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="experiment folder", show_default="<artifacts>/<dataset>/experiment"),
    ] = None,
    makr_generate: Annotated[
        bool,
        typer.Option(
            help="generate missing MAKR knowledge with the LLM (hours); default: shipped and "
            "cached knowledge only, raw text for the rest (counted in the report)"
        ),
    ] = False,
    epochs: Annotated[
        int | None, typer.Option(help="ranker max epochs", show_default="from the config")
    ] = None,
    max_behaviors: Annotated[
        int | None, typer.Option(help="behaviors per sample", show_default="from the config")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="ranker torch threads", show_default="from the config")
    ] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            help="A:B, paired bootstrap of GAUC A - B, repeatable",
            show_default="full:id+text, full:id, full:fuxictr-din",
        ),
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="user resamples per comparison", min=1)] = 1000,
    cost: Annotated[
        bool,
        typer.Option(help="export, publish (embedded) and time the model once per variant"),
    ] = True,
) -> None:
    """Train every variant with each seed on the same split (resumable: finished runs are
    skipped) and write report.md, report.json and gauc.png."""
    from reaseq.offline.experiment import (
        DEFAULT_COMPARISONS,
        ExperimentConfig,
        ExperimentError,
        run_experiment,
    )
    from reaseq.offline.makr.job import ShippedKnowledgeError
    from reaseq.offline.makr.llm import LLMError
    from reaseq.offline.peers.fuxictr_din import register_experiment_peers
    from reaseq.offline.pipeline import PipelineConfig, load_pipeline_config

    if not register_experiment_peers():
        err_console.print(
            "fuxictr is not installed: no FuxiCTR peer rows (pip install -e '.[peers]')"
        )
    try:
        pipe = load_pipeline_config(config) if config else PipelineConfig()
        pipe.dataset = dataset
        for target, key, value in (
            (pipe, "artifacts_dir", artifacts),
            (pipe.train, "epochs", epochs),
            (pipe.train, "threads", threads),
            (pipe.train.ranker, "max_behaviors", max_behaviors),
        ):
            if value is not None:
                setattr(target, key, value)
        cfg = ExperimentConfig(
            pipeline=pipe,
            variants=tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else (),
            seeds=tuple(range(seeds)),
            out_dir=out,
            comparisons=_pairs(compare) if compare else DEFAULT_COMPARISONS,
            bootstrap=bootstrap,
            cost=cost,
            makr_generate=makr_generate,
        )
        result = run_experiment(cfg, log=lambda msg: console.log(escape(msg)))
    except (ExperimentError, FileNotFoundError, ShippedKnowledgeError, LLMError, ValueError) as err:
        _fail(str(err))
        raise  # unreachable: _fail exits
    console.print((result.out_dir / "report.md").read_text(), markup=False)
    console.print(
        f"trained {len(result.trained)} runs, skipped {len(result.skipped)} finished ones; "
        f"report in {result.out_dir}"
    )
    if result.failed:
        _fail(f"{len(result.failed)} runs failed (see the report); a rerun retries them")
