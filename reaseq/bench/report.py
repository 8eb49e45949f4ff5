"""The matrix report as files (JSON, a Markdown table, a PNG) and as a rich table.

Rows are ordered cell by cell with the systems of a cell next to each other (floor, naive, then
the service's backends), so a service row is read against the two reference rows above it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

JSON_FILE, MARKDOWN_FILE, PLOT_FILE = "matrix.json", "matrix.md", "matrix.png"
COLUMNS = (
    "system",
    "transport",
    "C",
    "L",
    "conc.",
    "p50 ms",
    "p99 ms",
    "req/s",
    "cand/s",
    "errors",
    "x naive",
    "x floor",
)


def _cell(row: dict[str, Any]) -> tuple[str, int, int, int]:
    return (row["transport"], row["n_candidates"], row["n_recent"], row["concurrency"])


def _system_order(name: str) -> tuple[int, str]:
    return ({"floor": 0, "naive": 1}.get(name, 2), name)


def ordered(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        cells,
        key=lambda r: (*_cell(r), _system_order(r["system"])),
    )


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def row_texts(row: dict[str, Any]) -> list[str]:
    return [
        row["system"],
        row["transport"],
        str(row["n_candidates"]),
        str(row["n_recent"]),
        str(row["concurrency"]),
        _num(row["p50_ms"]),
        _num(row["p99_ms"]),
        _num(row["throughput_rps"], 0),
        _num(row["candidates_per_s"], 0),
        str(row["errors"]),
        _num(row.get("x_naive")),
        _num(row.get("x_floor")),
    ]


def clean(value: Any) -> Any:
    """Strict JSON: an undefined figure (a cell with no successful request) is null, not NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def to_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    cfg = meta["config"]
    lines = [
        f"# Benchmark matrix: {meta['release']}",
        "",
        f"{meta['dataset']} `{meta['features']}`, D = {meta['vector_dim']}, max behaviors "
        f"{meta['max_behaviors']}; store {cfg['store']}; {meta['cpus']} CPUs "
        f"({meta['machine']}), the `reaseq bench` client (grpc.aio; httpx for HTTP) on the same "
        f"machine; code {meta['code_version']}; "
        f"{meta['started_at']}, {meta['seconds']:.0f} s.",
        "",
        f"Each cell: up to {cfg['requests']} timed requests or {cfg['max_seconds']} s after "
        f"{cfg['warmup']} warm-up (at least the concurrency). C = candidates, L = behaviors sent "
        "as `recent_item_ids`. x naive / x floor: throughput over the naive path's / the floor's "
        "in the same cell.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(row_texts(row)) + " |" for row in ordered(report["cells"])]
    failed = [r for r in report["cells"] if r["errors"]]
    if failed:
        lines += ["", "Errors (first of each failing cell):", ""]
        lines += [f"- {r['system']} {r['transport']}: {r['first_error']}" for r in failed]
    return "\n".join(lines) + "\n"


def rich_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"benchmark matrix: {report['meta']['release']}")
    for i, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if i < 2 else "right")
    rows = ordered(report["cells"])
    for row, after in zip(rows, [*rows[1:], None], strict=True):
        last_of_cell = after is None or _cell(after) != _cell(row)  # a rule between cells
        style = "red" if row["errors"] else None
        table.add_row(*row_texts(row), end_section=last_of_cell, style=style)
    return table


def _reference(values: list[int], preferred: int) -> int:
    """The axis value the plot is drawn at: `preferred` if measured, else the middle one."""
    values = sorted(set(values))
    return preferred if preferred in values else values[len(values) // 2]


def plot(report: dict[str, Any], path: Path) -> Path:
    """p99 vs concurrency, throughput by concurrency, and candidates/s vs candidates, per system
    and transport, at the reference cell (200 candidates x 100 behaviors when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatter, NullLocator, ScalarFormatter

    cells = report["cells"]
    c_ref = _reference([r["n_candidates"] for r in cells], 200)
    l_ref = _reference([r["n_recent"] for r in cells], 100)
    conc_max = max(r["concurrency"] for r in cells)
    lines = sorted(
        {(r["system"], r["transport"]) for r in cells},
        key=lambda k: (k[1], _system_order(k[0])),
    )
    concurrencies = sorted({r["concurrency"] for r in cells})

    def series(system: str, transport: str, **fixed: int) -> list[dict[str, Any]]:
        return [
            r
            for r in cells
            if r["system"] == system
            and r["transport"] == transport
            and all(r[k] == v for k, v in fixed.items())
        ]

    systems = sorted({system for system, _ in lines}, key=_system_order)
    colors = {system: f"C{i}" for i, system in enumerate(systems)}  # one colour per system
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    p99_ax, bar_ax, cand_ax = axes
    width = 0.8 / max(len(lines), 1)
    for i, (system, transport) in enumerate(lines):
        label = f"{system} / {transport}"
        http = transport == "http"
        style = {"linestyle": "--" if http else "-", "marker": "o", "color": colors[system]}
        at_ref = series(system, transport, n_candidates=c_ref, n_recent=l_ref)
        at_ref.sort(key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in at_ref]
        p99_ax.plot(xs, [r["p99_ms"] for r in at_ref], label=label, **style)
        positions = [concurrencies.index(r["concurrency"]) + i * width for r in at_ref]
        throughput = [r["throughput_rps"] for r in at_ref]
        hatch = "//" if http else None
        bar_ax.bar(positions, throughput, width, color=colors[system], hatch=hatch, label=label)
        by_c = series(system, transport, n_recent=l_ref, concurrency=conc_max)
        by_c.sort(key=lambda r: r["n_candidates"])
        cand_ax.plot(
            [r["n_candidates"] for r in by_c],
            [r["candidates_per_s"] for r in by_c],
            label=label,
            **style,
        )
    p99_ax.set(
        xlabel="concurrency",
        ylabel="p99 latency (ms)",
        yscale="log",
        title=f"p99, {c_ref} candidates x {l_ref} behaviors",
    )
    p99_ax.set_xticks(concurrencies)
    bar_ax.set(
        ylabel="requests / s",
        xlabel="concurrency",
        title=f"throughput, {c_ref} x {l_ref}",
    )
    bar_ax.set_xticks([i + width * (len(lines) - 1) / 2 for i in range(len(concurrencies))])
    bar_ax.set_xticklabels([str(c) for c in concurrencies])
    cand_ax.set(
        xlabel="candidates per request",
        ylabel="candidates / s",
        yscale="log",
        xscale="log",
        title=f"candidates/s at concurrency {conc_max}, {l_ref} behaviors",
    )
    cand_ax.set_xticks(sorted({r["n_candidates"] for r in cells}))
    cand_ax.xaxis.set_major_formatter(ScalarFormatter())
    cand_ax.xaxis.set_minor_locator(NullLocator())
    for ax in (p99_ax, cand_ax):  # 20 and 50, not 2 x 10^1 and nothing
        plain = LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    p99_ax.legend(fontsize=8)
    meta = report["meta"]
    fig.suptitle(f"{meta['release']} ({meta['cpus']} CPUs, client on the same machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """matrix.json, matrix.md and matrix.png into `out`; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON_FILE, "markdown": out / MARKDOWN_FILE, "plot": out / PLOT_FILE}
    paths["json"].write_text(json.dumps(clean(report), indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(to_markdown(report))
    plot(report, paths["plot"])
    return paths
