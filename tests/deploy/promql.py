"""What a PromQL expression selects, and what the service exports, for the deploy/ checks.

`selectors(expr)` lists the series selectors of an expression (metric name + label matchers),
skipping functions, aggregations, keywords, `by (...)`-style label lists, strings and ranges.
`exported()` reads reaseq/service/metrics.py's collectors and says which sample names they
expose (a Counter X as X_total, a Histogram X as X_bucket / X_count / X_sum) with which labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.utils import floatToGoString

from reaseq.service import errors, metrics

# labels Prometheus adds at scrape time (deploy/prometheus/prometheus.yml, a ServiceMonitor)
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container"})
# series Prometheus itself makes: `up` per scrape target
PROMETHEUS_SERIES = frozenset({"up"})

AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile"}
)
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = LABEL_LIST_KEYWORDS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}

_TOKEN = re.compile(
    r"""
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<range>\[[^\]]*\])
    |(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>,{}()])
    |(?P<ws>\s+)
    """,
    re.VERBOSE,
)

GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$job": "reaseq-serving",
    "$instance": ".*",
}


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


def expand_grafana(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by plain PromQL values."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def _unquote(s: str) -> str:
    return s[1:-1].encode().decode("unicode_escape")


def selectors(expr: str) -> list[Selector]:
    toks = tokens(expr)
    found: list[Selector] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "ident" and text in LABEL_LIST_KEYWORDS and nxt[1] == "(":
            i = toks.index(("op", ")"), i) + 1  # a label list has no nested parentheses
            continue
        if kind != "ident" or text in KEYWORDS or text in AGGREGATIONS or nxt[1] == "(":
            i += 1
            continue
        matchers = []
        i += 1
        if nxt[1] == "{":
            i += 1
            while toks[i][1] != "}":
                if toks[i][1] == ",":
                    i += 1
                    continue
                (_, label), (_, op), (_, value) = toks[i : i + 3]
                matchers.append((label, op, _unquote(value)))
                i += 3
            i += 1
        found.append(Selector(text, tuple(matchers)))
    return found


@dataclass(frozen=True)
class Exported:
    family: str
    type: str
    labels: frozenset[str]


def collectors() -> dict[str, MetricWrapperBase]:
    """Every metric object defined in reaseq/service/metrics.py, by family name."""
    out = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                out[family.name] = value
    return out


def exported() -> dict[str, Exported]:
    """Sample name -> its family, type and labels, as /metrics exposes them."""
    out: dict[str, Exported] = {}
    for name, collector in collectors().items():
        (family,) = collector.describe()
        labels = frozenset(collector._labelnames)
        if family.type == "counter":
            out[f"{name}_total"] = Exported(name, "counter", labels)
        elif family.type == "histogram":
            out[f"{name}_bucket"] = Exported(name, "histogram", labels | {"le"})
            out[f"{name}_count"] = Exported(name, "histogram", labels)
            out[f"{name}_sum"] = Exported(name, "histogram", labels)
        else:
            out[name] = Exported(name, family.type, labels)
    return out


def error_kinds() -> set[str]:
    kinds, todo = set(), [errors.ReaseqError]
    while todo:
        cls = todo.pop()
        kinds.add(cls.kind)
        todo.extend(cls.__subclasses__())
    return kinds


def label_values() -> dict[tuple[str, str], set[str]]:
    """(family, label) -> the values the service can give it."""
    kinds = error_kinds()
    return {
        ("reaseq_requests", "transport"): {"grpc", "http"},
        ("reaseq_requests", "outcome"): {"ok"} | kinds,
        ("reaseq_errors", "kind"): kinds,
        ("reaseq_stage_latency_seconds", "stage"): {"features", "model", "total"},
        ("reaseq_stage_latency_seconds", "le"): {
            floatToGoString(b) for b in (*metrics.LATENCY_BUCKETS, float("inf"))
        },
    }


def problems(expr: str, known_extra: set[str] = frozenset()) -> list[str]:
    """Why `expr` would select nothing the service exports (empty: it is consistent)."""
    out = []
    names = exported()
    values = label_values()
    for sel in selectors(expr):
        if sel.metric in known_extra or sel.metric in PROMETHEUS_SERIES:
            continue
        info = names.get(sel.metric)
        if info is None:
            out.append(f"{sel.metric}: no such metric in reaseq/service/metrics.py")
            continue
        for label, op, value in sel.matchers:
            if label not in info.labels | TARGET_LABELS:
                out.append(f"{sel.metric}: no label {label!r} (has {sorted(info.labels)})")
                continue
            allowed = values.get((info.family, label))
            if allowed is None:
                continue
            if op in ("=", "!="):
                wanted = {value}
            elif re.fullmatch(r"[\w.|+]+", value):  # a plain alternation a|b|c
                wanted = set(value.split("|"))
            else:
                continue
            unknown = wanted - allowed
            if unknown:
                out.append(f"{sel.metric}: {label} never takes {sorted(unknown)}")
    return out
