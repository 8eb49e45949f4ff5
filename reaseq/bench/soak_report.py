"""The soak's report as files (JSON for tools, Markdown for people) and as a rich table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table


def _ms(figures: dict[str, float | None]) -> str:
    p50, p99 = figures["p50_ms"], figures["p99_ms"]
    return "-" if p50 is None or p99 is None else f"{p50:.1f} / {p99:.1f}"


def _cpu(phase: dict[str, Any]) -> str:
    pct, per_request = phase["server_cpu_pct"], phase["server_cpu_ms_per_request"]
    return "-" if pct is None or per_request is None else f"{pct:.0f} ({per_request:.1f})"


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{code} x{n}" for code, n in sorted(codes.items())) or "-"


def _releases(served: dict[str, int], report: dict[str, Any]) -> str:
    names = {report["release_a"]: "A", report["release_b"]: "B"}
    return ", ".join(f"{names.get(r, r)} x{n}" for r, n in sorted(served.items())) or "-"


PHASE_COLUMNS = (
    "phase",
    "span s",
    "requests",
    "req/s",
    "errors",
    "gRPC p50 / p99 ms",
    "HTTP p50 / p99 ms",
    "server CPU % (ms/req)",
    "releases served",
)


def _phase_row(phase: dict[str, Any], report: dict[str, Any]) -> list[str]:
    return [
        phase["phase"],
        f"{phase['start_s']:.0f}-{phase['end_s']:.0f}",
        str(phase["requests"]),
        f"{phase['rps']:.0f}",
        _codes(phase["error_codes"]) if phase["errors"] else "0",
        _ms(phase["grpc"]),
        _ms(phase["http"]),
        _cpu(phase),
        _releases(phase["releases"], report),
    ]


def headline(report: dict[str, Any]) -> list[str]:
    """The lines that say whether the soak passed, and why not."""
    rss = report["rss"]
    growth = "n/a" if rss["growth_pct"] is None else f"{rss['growth_pct']:+.2f}%"
    lines = [
        f"{report['requests']} requests in {report['duration_s']:.0f} s "
        f"({report['rps']:.0f} req/s; gRPC {report['by_transport'].get('grpc', 0)}, "
        f"HTTP {report['by_transport'].get('http', 0)}); release A {report['release_a']}, "
        f"B {report['release_b']}",
        f"errors outside the fault windows: {report['errors_outside_windows']}"
        + (f" ({_codes(report['outside_error_codes'])})" if report["outside_error_codes"] else ""),
    ]
    for window in report["windows"]:
        line = (
            f"{window['window']} {window['start_s']:.1f}-{window['end_s']:.1f} s: "
            f"{window['errors']} errors of {window['requests']} ({_codes(window['error_codes'])})"
        )
        if window["max_failed_latency_ms"] is not None:
            line += f", slowest failure {window['max_failed_latency_ms']:.0f} ms"
        if window.get("first_ok_after_restart_s") is not None:
            line += f", first OK {window['first_ok_after_restart_s']:.2f} s after Redis was back"
        lines.append(line)
    if rss["growth_pct"] is not None:
        lines.append(
            f"server RSS: {rss['first_median_mib']:.1f} MiB (median, "
            f"{rss['first_window_s'][0]:.0f}-{rss['first_window_s'][1]:.0f} s) -> "
            f"{rss['last_median_mib']:.1f} MiB ({rss['last_window_s'][0]:.0f}-"
            f"{rss['last_window_s'][1]:.0f} s): {growth}; max {rss['max_mib']:.1f} MiB"
            + (
                f"; last third {slope:+.2f} MiB/min"
                if (slope := rss["last_third_mib_per_min"]) is not None
                else ""
            )
        )
    verdict = "PASSED" if report["passed"] else "FAILED: " + "; ".join(report["failures"])
    return [*lines, verdict]


def rich_table(report: dict[str, Any]) -> Table:
    table = Table(title="soak: phases (latency of OK answers)")
    for column in PHASE_COLUMNS:
        table.add_column(
            column, justify="left" if column in ("phase", "releases served") else "right"
        )
    for phase in report["phases"]:
        table.add_row(*_phase_row(phase, report))
    return table


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# Soak report",
        "",
        f"Release A `{report['release_a']}` ({cfg['export_a']}), release B "
        f"`{report['release_b']}` ({cfg['export_b'] or 'a renamed copy of A'}); "
        f"{cfg['concurrency']} callers (half gRPC, half HTTP), think time 0-{cfg['think_ms']:g} "
        f"ms, {cfg['traffic']['candidates']} candidates, Redis down {cfg['outage_s']:g} s; "
        f"windows close {cfg['switch_grace_s']:g} s after B is first served and "
        f"{cfg['recovery_grace_s']:g} s after Redis is back.",
        "",
        *(f"- {line}" for line in headline(report)),
        "",
        "| " + " | ".join(PHASE_COLUMNS) + " |",
        "|" + "|".join("---" for _ in PHASE_COLUMNS) + "|",
        *("| " + " | ".join(_phase_row(p, report)) + " |" for p in report["phases"]),
        "",
        "Events (s from the start of the load): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["events_s"].items()),
        "",
    ]
    if report["outside_error_examples"]:
        lines += ["First errors outside the windows:", ""]
        lines += [
            f"- {e['start']:.2f} s {e['transport']} {e['code']} ({e['latency'] * 1000:.0f} ms): "
            f"{e['detail']}"
            for e in report["outside_error_examples"]
        ]
        lines.append("")
    return "\n".join(lines)


def _strict(value: Any) -> Any:
    """JSON without NaN/Inf: an undefined figure is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def write(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "soak.json", out / "soak.md"
    json_path.write_text(json.dumps(_strict(report), indent=2, allow_nan=False) + "\n")
    md_path.write_text(markdown(report))
    return [json_path, md_path]
