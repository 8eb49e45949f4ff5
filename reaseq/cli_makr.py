"""`reaseq makr ...`: item knowledge from LLM agents (run, export), its quality (eval) and the
representations built from it (encode). Imports of llama.cpp, Ray and torch stay inside the
commands."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.progress import TimeRemainingColumn as Remaining

BACKENDS, OUTPUTS, ENGINES = ("embedded", "torch", "openai"), ("fields", "json"), ("local", "ray")
makr_app = typer.Typer(help="MAKR: item knowledge from LLM agents, its quality and its encoding.")
console = Console()
err_console = Console(stderr=True)

DatasetArg = Annotated[
    str,
    typer.Argument(
        help="synthetic | scientific | office | ml-100k (names under $REASEQ_SHARED_DATA, "
        "default ../shared/data) | a dataset folder or file"
    ),
]
ArtifactsOpt = Annotated[
    Path,
    typer.Option(help="artifacts folder, relative to the current directory", show_default=True),
]
ModelOpt = Annotated[
    str,
    typer.Option(
        help="shipped model (gemma3-270m, smollm2-135m), a .gguf path, or the endpoint's model "
        "name with --backend openai",
        show_default=True,
    ),
]
BackendOpt = Annotated[
    str,
    typer.Option(
        help="embedded (llama.cpp in-process) | torch (the same GGUF on PyTorch, batched: for a "
        "GPU) | openai (any compatible endpoint)"
    ),
]


def _fail(message: str) -> None:
    err_console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def _load(dataset: str, artifacts: Path):
    """(name, path, raw dataset) for a dataset argument; a bad argument is one clear line."""
    from reaseq.offline.datasets import load_dataset
    from reaseq.offline.pipeline import resolve_dataset

    try:
        name, path = resolve_dataset(dataset, artifacts / "synthetic")
        return name, path, load_dataset(path, name=name)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
        raise  # unreachable: _fail exits


def _catalog(dataset: str, artifacts: Path):
    """(name, items frame): the whole catalog, as `makr run` sees it."""
    name, _, raw = _load(dataset, artifacts)
    return name, raw.items


def _makr_config(
    backend, model, base_url, output, engine, workers, limit, threads, concurrency, device="auto"
):
    from reaseq.offline.makr.job import MakrConfig
    from reaseq.offline.makr.llm import LLMConfig

    llm = LLMConfig(
        backend=backend, model=model, n_threads=threads, concurrency=concurrency, device=device
    )
    if base_url:
        llm.base_url = base_url
    return MakrConfig(llm=llm, output=output, engine=engine, workers=workers, limit=limit)


@makr_app.command("run")
def run_cmd(
    dataset: DatasetArg,
    backend: BackendOpt = "embedded",
    model: ModelOpt = "gemma3-270m",
    base_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible base URL (key from $OPENAI_API_KEY)",
            show_default="http://127.0.0.1:8080/v1",
        ),
    ] = None,
    output: Annotated[
        str, typer.Option(help="fields (one forced field per line) | json (schema-constrained)")
    ] = "fields",
    engine: Annotated[str, typer.Option(help="local | ray ($RAY_ADDRESS, else a local Ray)")] = (
        "local"
    ),
    workers: Annotated[
        int, typer.Option(min=1, help="Ray actors, each with its own model copy")
    ] = 1,
    limit: Annotated[int, typer.Option(min=0, help="first N items only; 0 = all")] = 0,
    threads: Annotated[int, typer.Option(min=0, help="llama.cpp threads; 0 = all cores")] = 0,
    concurrency: Annotated[
        int,
        typer.Option(min=1, help="items in flight: endpoint requests, or the torch batch size"),
    ] = 4,
    device: Annotated[str, typer.Option(help="torch backend: auto | cpu | cuda")] = "auto",
    examples: Annotated[
        str,
        typer.Option(help="few-shot examples: auto (films for ml-100k) | products | films"),
    ] = "auto",
    artifacts: ArtifactsOpt = Path("artifacts"),
    work: Annotated[
        Path | None,
        typer.Option(
            help="MAKR folder (cache, knowledge)", show_default="ARTIFACTS/NAME/makr/MODEL"
        ),
    ] = None,
) -> None:
    """Run the agents over every item: cached, resumable (rerun to continue), with a report."""
    from reaseq.offline.makr.job import MakrRun
    from reaseq.offline.makr.llm import LLMError

    for value, allowed in [(backend, BACKENDS), (output, OUTPUTS), (engine, ENGINES)]:
        if value not in allowed:
            _fail(f"{value!r} is not one of {', '.join(allowed)}")
    name, items = _catalog(dataset, artifacts)
    cfg = _makr_config(
        backend, model, base_url, output, engine, workers, limit, threads, concurrency, device
    )
    cfg.examples = examples
    folder = work or artifacts / name / "makr" / Path(model).stem
    try:
        job = MakrRun(items, folder, cfg, dataset=name)
    except (FileNotFoundError, ValueError, LLMError) as err:
        _fail(str(err))
    if job.seeded:
        console.print(f"seeded {job.seeded} cached results from shipped knowledge")
    columns = (
        TextColumn(f"makr {name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        Remaining(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("items", total=None)
        try:
            report = job.run(lambda done, total: progress.update(bar, completed=done, total=total))
        except (LLMError, ValueError) as err:
            _fail(str(err))
    console.print_json(json.dumps(asdict(report)))
    console.print(f"knowledge: {folder / 'knowledge.jsonl'}")


@makr_app.command("export")
def export_cmd(
    dataset: DatasetArg,
    to: Annotated[
        Path | None,
        typer.Option(help="output .jsonl.gz", show_default="knowledge/NAME.jsonl.gz"),
    ] = None,
    model: ModelOpt = "gemma3-270m",
    output: Annotated[str, typer.Option(help="output mode the run used")] = "fields",
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Write a run's plans and knowledge as the compressed file that ships with the repo."""
    from reaseq.offline.makr.job import SHIPPED_DIR, MakrRun

    if output not in OUTPUTS:
        _fail(f"{output!r} is not one of {', '.join(OUTPUTS)}")
    name, items = _catalog(dataset, artifacts)
    cfg = _makr_config("embedded", model, None, output, "local", 1, 0, 0, 1)
    job = MakrRun(items, artifacts / name / "makr" / Path(model).stem, cfg, dataset=name)
    path = to or SHIPPED_DIR / f"{name}.jsonl.gz"
    n = job.export(path)
    console.print(f"{n} of {len(items)} items -> {path} ({path.stat().st_size / 1e6:.2f} MB)")


def _prepared(dataset: str, artifacts: Path):
    """(name, path, prepared data): encode and eval need the log and its splits."""
    from reaseq.offline.prepare import PrepareConfig, prepare

    name, path, raw = _load(dataset, artifacts)
    return name, path, prepare(raw, PrepareConfig())


def _knowledge(
    data,
    artifacts: Path,
    model: str,
    output: str = "fields",
    required: bool = True,
    examples: str = "auto",
) -> dict[str, dict]:
    """What the cache (or the shipped file) holds for this catalog and model; generates nothing,
    so it can read while a `makr run` is still writing."""
    from reaseq.offline.makr.job import MakrConfig, ensure_knowledge
    from reaseq.offline.makr.llm import LLMConfig

    try:
        cfg = MakrConfig(
            llm=LLMConfig(model=model), output=output, generate=False, examples=examples
        )
        records = ensure_knowledge(data, artifacts / data.name, cfg)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    if not records and required:
        _fail(f"no {model} knowledge for {data.name}: run `reaseq makr run` first")
    return records


def _table(rows: dict[str, dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


@makr_app.command("encode")
def encode_cmd(
    dataset: DatasetArg,
    model: ModelOpt = "gemma3-270m",
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Knowledge -> MiniLM -> CF-aligned projector (makr, hybrid); Macro Recall and SM-HR for
    title-only, text, makr and hybrid, written to representations.json."""
    from reaseq.offline.makr.encode import representation_report
    from reaseq.offline.makr.evaluate import catalog_facts, substitutes_by_item

    name, path, data = _prepared(dataset, artifacts)
    folder = artifacts / name / "makr" / Path(model).stem
    records = _knowledge(data, artifacts, model, required=False)
    err_console.print(
        f"{len(records)} of {len(data.items)} items have {model} knowledge; the rest are encoded "
        "from their raw text"
    )
    facts = catalog_facts(name, path, data.items)
    rows = {str(i): r for i, r in zip(data.items["item_id"], data.items["item_row"], strict=True)}
    report = representation_report(
        data, records, folder / "reps", substitutes=substitutes_by_item(facts, rows)
    )
    meta = report.pop("_meta")
    columns = sorted({c for row in report.values() for c in row})
    console.print(_table(report, columns), soft_wrap=True)
    console.print(json.dumps(meta))
    console.print(f"written: {folder / 'reps' / 'representations.json'}")


@makr_app.command("eval")
def eval_cmd(
    dataset: DatasetArg,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="models whose runs to compare, repeatable; MODEL/EXAMPLES names an example "
            "set too (gemma3-270m/products against gemma3-270m/films)",
            show_default=("gemma3-270m, smollm2-135m"),
        ),
    ] = None,
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Knowledge quality per LLM: validity, repairs, brand/category agreement with the catalog,
    and (Office) the relation check against Amazon's also_bought / also_viewed pairs."""
    from reaseq.offline.makr.evaluate import agreement, catalog_facts, relation_check, validity
    from reaseq.offline.text_reps import TextRepConfig, embed_texts

    name, path, data = _prepared(dataset, artifacts)
    facts = catalog_facts(name, path, data.items)
    table, relations = {}, {}
    models = models or ["gemma3-270m", "smollm2-135m"]
    by_model = {}
    for label in models:
        model, _, examples = label.partition("/")
        by_model[label] = _knowledge(data, artifacts, model, examples=examples or "auto")
    common = set.intersection(*(set(r) for r in by_model.values()))  # same items for every LLM
    for model in models:
        records = [r for i, r in by_model[model].items() if i in common]
        table[model] = validity(records, len(data.items)) | agreement(records, data.items, facts)
        checked = relation_check(
            records, data.items, facts, lambda t: embed_texts(t, TextRepConfig())
        )
        for relation, stats in checked.items():
            relations[f"{model} {relation}"] = stats
    columns = sorted({c for row in table.values() for c in row})
    console.print(f"{len(common)} items judged (those every compared model has a record for)")
    console.print(_table(table, columns), soft_wrap=True)
    if relations:
        columns = sorted({c for r in relations.values() for c in r})
        console.print(_table(relations, columns), soft_wrap=True)
    out = artifacts / name / "makr" / "quality.json"
    out.write_text(json.dumps({"quality": table, "relation_check": relations}, indent=2))
    console.print(f"written: {out}")
