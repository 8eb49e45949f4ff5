"""The experiment's report: mean ± std per variant, paired bootstrap intervals over users,
sparsity buckets, cost against gain; written as report.json, report.md and gauc.png.

Paired bootstrap [ours]: for a comparison a - b, each user's AUC difference is averaged over the
seeds both variants finished (seed k of a against seed k of b); a resample draws the test users
with replacement and recomputes the sample-weighted mean of those differences (GAUC's weighting;
one-class users weigh 0). The point estimate equals the difference of the table's mean GAUCs; the
95% interval is the 2.5 / 97.5 percentile of the resamples. It covers which users were sampled,
not seed-to-seed variance (the ± column does that).

Buckets: users by their number of train-period behaviors; test samples by their candidate item's
number of train-period interactions (quantiles over the items seen in train), and "cold" items
that have none (first seen after training). Metrics per bucket are per seed, then averaged.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reaseq.offline.metrics import per_user_auc
from reaseq.offline.prepare import Prepared

if TYPE_CHECKING:
    from reaseq.offline.experiment import Experiment

REPORT_JSON, REPORT_MD, GAUC_PNG = "report.json", "report.md", "gauc.png"
METRICS = ("auc", "gauc", "logloss")


# -- statistics -----------------------------------------------------------------------------
def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (ddof 1; NaN for one value)."""
    v = np.asarray(values, np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()) if len(v) else float("nan"), "std": std, "values": list(v)}


def paired_bootstrap(
    users: np.ndarray,
    labels: np.ndarray,
    preds_a: list[np.ndarray],
    preds_b: list[np.ndarray],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """GAUC(a) - GAUC(b) with a percentile interval from resampling users (module docstring).
    preds_a[k] and preds_b[k] are the same seed's test predictions."""
    if len(preds_a) != len(preds_b) or not preds_a:
        raise ValueError("paired bootstrap needs the same seeds, at least one, on both sides")
    diffs = []
    n = None
    for a, b in zip(preds_a, preds_b, strict=True):
        pa, pb = per_user_auc(users, labels, a), per_user_auc(users, labels, b)
        diffs.append((pa["auc"] - pb["auc"].reindex(pa.index)).to_numpy())
        n = pa["n"].to_numpy(np.float64)
    d = np.mean(diffs, axis=0)
    valid = ~np.isnan(d)
    weight = np.where(valid, n, 0.0)
    weighted = np.where(valid, d, 0.0) * weight
    estimate = float(weighted.sum() / weight.sum())
    rng = np.random.default_rng(seed)
    n_users = len(d)
    chunk = max(1, 20_000_000 // max(n_users, 1))
    stats = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n_users, size=(min(chunk, resamples - start), n_users))
        stats.append(weighted[idx].sum(axis=1) / np.maximum(weight[idx].sum(axis=1), 1e-12))
    boot = np.concatenate(stats)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return {
        "estimate": estimate,
        "ci_low": float(low),
        "ci_high": float(high),
        "level": level,
        "resamples": resamples,
        "share_le_0": float((boot <= 0).mean()),
        "users": int(n_users),
        "users_with_both_classes": int(valid.sum()),
        "seeds": len(preds_a),
    }


def best_by_validation(variants: dict[str, dict], family: tuple[str, ...]) -> str | None:
    """The variant of `family` with the highest mean *validation* GAUC: choosing among the
    alternatives never looks at test."""
    scored = {
        name: variants[name]["val"]["gauc"]["mean"]
        for name in family
        if name in variants and variants[name]["runs"]
    }
    scored = {k: v for k, v in scored.items() if np.isfinite(v)}
    return max(scored, key=scored.__getitem__) if scored else None


# -- buckets --------------------------------------------------------------------------------
def train_counts(data: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """(per user: train-period behaviors, per item: train-period interactions)."""
    train = data.train_period_behaviors()
    users = np.bincount(train["user_row"].to_numpy(), minlength=len(data.user_ids))
    items = np.bincount(train["item_row"].to_numpy(), minlength=data.n_items)
    return users, items


def user_bucket_names(edges: tuple[int, ...]) -> list[str]:
    """'0-2', '3-5', ..., '21+' for lower edges (0, 3, 6, 11, 21)."""
    return [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)] + [f"{edges[-1]}+"]


def user_history_buckets(lengths: np.ndarray, edges: tuple[int, ...]) -> list[str]:
    """Per user: the name of the bucket its train-period history length falls in."""
    if list(edges) != sorted(set(edges)) or edges[0] != 0:
        raise ValueError(f"user bucket edges must rise from 0, got {list(edges)}")
    names = user_bucket_names(edges)
    at = np.searchsorted(np.asarray(edges), lengths, side="right") - 1
    return [names[i] for i in at]


def popularity_buckets(item_counts: np.ndarray, sample_items: np.ndarray, q: int) -> list[str]:
    """Per sample: 'cold (0)' for an item without train interactions, else its quantile bucket
    'a-b' (bounds in train interactions; quantiles over the items seen in train)."""
    seen = item_counts[item_counts > 0]
    if len(seen) == 0:
        return ["cold (0)"] * len(sample_items)
    lo, hi = int(seen.min()), int(seen.max())
    inner = np.unique(np.ceil(np.quantile(seen, np.arange(1, q) / q)).astype(np.int64))
    inner = inner[(inner > lo) & (inner <= hi)]
    starts = np.concatenate([[lo], inner])
    ends = np.concatenate([inner - 1, [hi]])
    names = [f"{a}-{b}" if a != b else f"{a}" for a, b in zip(starts, ends, strict=True)]
    counts = item_counts[sample_items]
    at = np.searchsorted(starts, counts, side="right") - 1
    return [names[i] if c > 0 else "cold (0)" for i, c in zip(at, counts, strict=True)]


def subset_metrics(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict:
    """AUC, GAUC and LogLoss where defined (NaN for a subset with one class)."""
    from sklearn.metrics import log_loss, roc_auc_score

    from reaseq.offline.metrics import gauc

    both = len(np.unique(labels)) == 2
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    return {
        "auc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "gauc": float(gauc(users, labels, scores)) if both else float("nan"),
        "logloss": float(log_loss(labels, clipped, labels=[0, 1])) if len(labels) else np.nan,
    }


def bucket_table(
    bucket_of_sample: list[str],
    order: list[str],
    users: np.ndarray,
    labels: np.ndarray,
    preds: dict[str, list[np.ndarray]],
) -> list[dict]:
    """One row per bucket: its size and each variant's metrics, averaged over its seeds."""
    buckets = np.asarray(bucket_of_sample)
    rows = []
    for name in order:
        mask = buckets == name
        if not mask.any():
            continue
        row: dict = {
            "bucket": name,
            "samples": int(mask.sum()),
            "positives": int(labels[mask].sum()),
            "users": len(np.unique(users[mask])),
            "variants": {},
        }
        for variant, per_seed in preds.items():
            ms = [subset_metrics(users[mask], labels[mask], p[mask]) for p in per_seed]
            row["variants"][variant] = {
                m: float(np.mean([x[m] for x in ms])) if ms else np.nan for m in METRICS
            }
        rows.append(row)
    return rows


# -- the report -----------------------------------------------------------------------------
def _load_runs(exp: Experiment) -> dict[str, list[dict]]:
    from reaseq.offline.experiment import RESULT_FILE, TEST_PRED_FILE

    runs: dict[str, list[dict]] = {}
    for name in exp.variants:
        runs[name] = []
        for seed in exp.cfg.seeds:
            folder = exp.run_dir(name, seed)
            if (folder / RESULT_FILE).exists():
                record = json.loads((folder / RESULT_FILE).read_text())
                record["_pred"] = np.load(folder / TEST_PRED_FILE, allow_pickle=False)
                runs[name].append(record)
    return runs


def summarize(records: list[dict]) -> dict:
    out: dict = {"runs": len(records), "seeds": [r["seed"] for r in records]}
    for split in ("test", "val"):
        out[split] = {m: mean_std([r[split][m] for r in records if split in r]) for m in METRICS}
    out["best_epoch"] = [r.get("best_epoch") for r in records]
    out["train_seconds"] = mean_std([r["train_seconds"] for r in records])
    return out


def build_report(exp: Experiment, failed: dict[str, str]) -> dict:
    from reaseq.offline.experiment import FULL_FAMILY, split_samples

    data, cfg = exp.data, exp.cfg
    runs = _load_runs(exp)
    test = split_samples(data, "test")
    users, labels = test["user_row"].to_numpy(), test["label"].to_numpy()
    variants = {}
    for name, records in runs.items():
        v = exp.variants[name]
        variants[name] = {
            "features": v.features,
            "peer": v.peer,
            "note": v.note,
            "overrides": json.loads(json.dumps(v.overrides)),
        } | summarize(records)
        distinct = {r.get("reps_fingerprint") for r in records}
        variants[name]["same_representation_every_seed"] = len(distinct) <= 1

    comparisons = {}
    for a, b in cfg.comparisons:
        label = f"{a} - {b}"
        seeds = sorted({r["seed"] for r in runs.get(a, [])} & {r["seed"] for r in runs.get(b, [])})
        if not seeds:
            comparisons[label] = {"skipped": "no seed finished by both variants"}
            continue
        by_seed = {name: {r["seed"]: r["_pred"] for r in runs[name]} for name in (a, b)}
        comparisons[label] = paired_bootstrap(
            users,
            labels,
            [by_seed[a][s] for s in seeds],
            [by_seed[b][s] for s in seeds],
            cfg.bootstrap,
            cfg.bootstrap_seed,
        ) | {"seed_list": seeds}

    preds = {name: [r["_pred"] for r in records] for name, records in runs.items() if records}
    user_len, item_count = train_counts(data)
    edges = cfg.user_buckets
    user_bucket = user_history_buckets(user_len, edges)
    items = test["item_row"].to_numpy()
    item_bucket = popularity_buckets(item_count, items, cfg.popularity_buckets)
    item_names = sorted(set(item_bucket), key=_bucket_start)
    buckets = {
        "user_history": bucket_table(
            [user_bucket[u] for u in users], user_bucket_names(edges), users, labels, preds
        ),
        "item_popularity": bucket_table(item_bucket, item_names, users, labels, preds),
        "definitions": {
            "user_history": f"train-period behaviors per user, lower edges {list(edges)}",
            "item_popularity": f"train-period interactions of the candidate item, "
            f"{cfg.popularity_buckets} quantiles over the items seen in train; 'cold (0)': "
            "never seen in train (first seen in validation or test)",
        },
    }

    reference = "id" if runs.get("id") else next((n for n, r in runs.items() if r), None)
    ref_gauc = variants[reference]["test"]["gauc"]["mean"] if reference else float("nan")
    cost = {name: _cost_row(records, variants[name], ref_gauc) for name, records in runs.items()}

    report = {
        "dataset": data.name,
        "protocol": data.protocol,
        "data": data.summary(),
        "data_fingerprint": exp.fingerprint,
        "seeds": list(cfg.seeds),
        "seeding": (
            "A seed sets the ranker's initialisation and batch order (TrainConfig.seed) or a "
            "peer's own seed. The split and the sampled negatives (PrepareConfig.seed = "
            f"{exp.cfg.pipeline.prepare.seed}), the item representations and the GBR model and "
            "fill are built once and shared by every seed: ± is ranker training variance."
        ),
        "makr_generate": cfg.makr_generate,
        "variants": variants,
        "best_full_by_validation": best_by_validation(variants, FULL_FAMILY),
        "comparisons": comparisons,
        "buckets": buckets,
        "cost_reference": reference,
        "cost": cost,
        "knowledge": _knowledge(runs),
        "failed": failed,
    }
    return json.loads(json.dumps(report, default=_plain))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _bucket_start(name: str) -> int:
    return -1 if name.startswith("cold") else int(name.split("-")[0])


def _cost_row(records: list[dict], summary: dict, ref_gauc: float) -> dict:
    row: dict = {
        "gauc_gain": summary["test"]["gauc"]["mean"] - ref_gauc if records else float("nan"),
        "train_seconds_per_seed": summary["train_seconds"]["mean"],
    }
    upstream = [r.get("upstream", {}) for r in records]
    reps = [u["representation"] for u in upstream if "representation" in u]
    if reps:
        row["encode_seconds"] = max(x["encode_seconds"] for x in reps)  # the cold build
        if "llm_hours" in reps[0]:
            row["llm_hours"] = reps[0]["llm_hours"]
    gbr = [u["gbr"] for u in upstream if "gbr" in u]
    if gbr:
        row["gbr_train_seconds"] = gbr[0]["train_seconds"]
        row["gbr_fill_seconds"] = max(g["fill_seconds"] for g in gbr)
        row["gbr_device"] = gbr[0]["device"]
    served = [r["cost"] for r in records if "cost" in r]
    if served:
        row |= served[0]
    return row


def _knowledge(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for records in runs.values():
        for r in records:
            info = r.get("upstream", {}).get("representation", {})
            if "items_without_knowledge" in info:
                keep = ("items", "items_without_knowledge", "llm_model", "llm_hours")
                out[info["kind"]] = {k: info[k] for k in keep}
    return out


# -- rendering ------------------------------------------------------------------------------
def _pm(stat: dict, digits: int = 4) -> str:
    if not np.isfinite(stat["mean"]):
        return "n/a"
    std = f" ± {stat['std']:.{digits}f}" if np.isfinite(stat["std"]) else ""
    return f"{stat['mean']:.{digits}f}{std}"


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_markdown(report: dict) -> str:
    seeds = report["seeds"]
    lines = [
        f"# Experiment: {report['dataset']} — {report['protocol']}",
        "",
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}) on one split (data fingerprint "
        f"`{report['data_fingerprint']}`; test samples {report['data']['samples'].get('test')}).",
        report["seeding"],
        "",
        "| variant | features | what it is | test AUC | test GAUC | test LogLoss (calibrated) "
        "| val GAUC | best epoch | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in report["variants"].items():
        if not v["runs"]:
            lines.append(f"| `{name}` | `{v['features']}` | {v['note']} | not run | | | | | 0 |")
            continue
        t = v["test"]
        features = "peer" if v["peer"] else f"`{v['features']}`"
        lines.append(
            f"| `{name}` | {features} | {v['note']} | {_pm(t['auc'])} | {_pm(t['gauc'])} "
            f"| {_pm(t['logloss'])} | {_pm(v['val']['gauc'])} "
            f"| {', '.join(map(str, v['best_epoch']))} | {v['runs']} |"
        )
    lines += [
        "",
        "mean ± sample standard deviation over the seeds. LogLoss after calibration fitted on "
        "validation; AUC and GAUC are unchanged by it.",
        f"Best of the `full` family by validation GAUC (test never consulted): "
        f"`{report['best_full_by_validation']}`.",
    ]
    if not all(v["same_representation_every_seed"] for v in report["variants"].values()):
        odd = [n for n, v in report["variants"].items() if not v["same_representation_every_seed"]]
        lines.append(f"Warning: the item representation changed between seeds of {odd}.")
    lines += ["", "## Paired bootstrap over users (ΔGAUC)", ""]
    lines += [
        "| comparison | ΔGAUC | 95% CI | resamples <= 0 | seeds | users (both classes) |",
        "|---|---|---|---|---|---|",
    ]
    for label, c in report["comparisons"].items():
        if "skipped" in c:
            lines.append(f"| {label} | {c['skipped']} | | | | |")
            continue
        lines.append(
            f"| {label} | {c['estimate']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] "
            f"| {c['share_le_0']:.3f} | {c['seeds']} "
            f"| {c['users']} ({c['users_with_both_classes']}) |"
        )
    lines += [
        "",
        f"{next((c['resamples'] for c in report['comparisons'].values() if 'resamples' in c), 0)} "
        "resamples of the test users; per user the AUC difference averaged over the shared seeds "
        "(seed k against seed k). The interval covers user sampling, not seed variance.",
        "",
    ]
    lines += _render_buckets(report)
    lines += _render_cost(report)
    if report["knowledge"]:
        lines += ["## MAKR knowledge used", ""]
        for kind, k in report["knowledge"].items():
            lines.append(
                f"- `{kind}`: {k['items'] - k['items_without_knowledge']} of {k['items']} items "
                f"with knowledge ({k['llm_model']}), {k['items_without_knowledge']} encoded from "
                f"their raw text; LLM time of that knowledge {k['llm_hours']} h"
            )
        gen = "generated the missing knowledge" if report["makr_generate"] else "generated nothing"
        lines += [f"- this experiment {gen} (`--makr-generate` to generate)", ""]
    if report["failed"]:
        lines += ["## Failed runs (a rerun retries them)", ""]
        lines += [f"- {k}: {v}" for k, v in report["failed"].items()] + [""]
    lines.append(f"GAUC per variant: {GAUC_PNG}")
    return "\n".join(lines) + "\n"


def _render_buckets(report: dict) -> list[str]:
    names = [n for n, v in report["variants"].items() if v["runs"]]
    lines = ["## Sparsity buckets", ""]
    for key, metric, title in (
        ("user_history", "gauc", "Test GAUC by user history length (train-period behaviors)"),
        ("item_popularity", "auc", "Test AUC by candidate item popularity (train interactions)"),
    ):
        lines += [
            f"### {title}",
            "",
            f"| bucket | users | samples | positives | {' | '.join(f'`{n}`' for n in names)} |",
            f"|---|---|---|---|{'---|' * len(names)}",
        ]
        for row in report["buckets"][key]:
            cells = [_num(row["variants"].get(n, {}).get(metric)) for n in names]
            lines.append(
                f"| {row['bucket']} | {row['users']} | {row['samples']} | {row['positives']} "
                f"| {' | '.join(cells)} |"
            )
        lines += ["", report["buckets"]["definitions"][key] + ".", ""]
    lines += [
        "Item buckets report AUC: in a one-positive-one-negative protocol a user's two test "
        "samples usually fall into different item buckets, so per-user AUC (GAUC) is mostly "
        "undefined there. report.json has every metric for every bucket.",
        "",
    ]
    return lines


def _render_cost(report: dict) -> list[str]:
    ref = report["cost_reference"]
    lines = [
        "## Cost against gain",
        "",
        f"| variant | ΔGAUC vs `{ref}` | ranker train s/seed | encode s | GBR train s | GBR fill s "
        "| LLM h | export s | publish s (embedded) | store MB | model MB | model-only ms/request "
        "| core-s per 1,000 requests |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in report["cost"].items():
        mb = {k: c[k] / 1e6 if k in c else None for k in ("store_bytes_embedded", "model_bytes")}
        lines.append(
            f"| `{name}` | {_num(c.get('gauc_gain'))} | {_num(c.get('train_seconds_per_seed'), 1)} "
            f"| {_num(c.get('encode_seconds'), 1)} | {_num(c.get('gbr_train_seconds'), 1)} "
            f"| {_num(c.get('gbr_fill_seconds'), 1)} | {_num(c.get('llm_hours'), 3)} "
            f"| {_num(c.get('export_seconds'), 1)} | {_num(c.get('publish_seconds_embedded'), 2)} "
            f"| {_num(mb['store_bytes_embedded'], 2)} | {_num(mb['model_bytes'], 3)} "
            f"| {_num(c.get('latency_ms_per_request'), 3)} "
            f"| {_num(c.get('core_seconds_per_1000_requests'), 2)} |"
        )
    lines += [
        "",
        "Training and encode times as measured on this machine (MiniLM embeddings are cached by "
        "content hash, so an encode under a second reused them; GBR train time is summed over "
        "its checkpoint's epochs). LLM h: generation time recorded in the knowledge records "
        "used. Serving columns: the first seed's model exported as a release, published into an "
        "empty embedded store (Redis not measured here), and timed alone in the service's ONNX "
        "Runtime backend, 1 thread, one request of 200 candidates x 100 behaviors per call; "
        "core-seconds per 1,000 requests = that latency x 1,000 on one core (no price assumed).",
        "",
    ]
    return lines


def plot_gauc(report: dict, path: Path) -> Path:
    """Mean test GAUC per variant with its ± std bar and each seed as a dot; a dashed line at the
    cost reference (`id`) when it ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, v in report["variants"].items() if v["runs"]]
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(names), 2) + 1.2))
    for i, name in enumerate(names):
        g = report["variants"][name]["test"]["gauc"]
        std = g["std"] if np.isfinite(g["std"]) else 0.0
        ax.errorbar(g["mean"], i, xerr=std, fmt="D", color="tab:blue", capsize=4)
        ax.plot(g["values"], [i] * len(g["values"]), ".", color="black", markersize=4)
    reference = report.get("cost_reference")
    if reference in names:
        ax.axvline(report["variants"][reference]["test"]["gauc"]["mean"], ls="--", color="grey")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"test GAUC (mean ± std over {len(report['seeds'])} seeds; dots: seeds)")
    ax.set_title(f"{report['dataset']}: GAUC per variant")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(value):
    """NaN / inf -> None, so report.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_report(report: dict, out: Path) -> None:
    from reaseq.offline.experiment import _write_json

    _write_json(out / REPORT_JSON, _finite(report))
    tmp = out / f".{REPORT_MD}.tmp"
    tmp.write_text(render_markdown(report))
    tmp.replace(out / REPORT_MD)
    plot_gauc(report, out / GAUC_PNG)
