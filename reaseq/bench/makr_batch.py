"""`python -m reaseq.bench.makr_batch DATASET... --device cuda`: MAKR's agent chain on the torch
backend, for a GPU lease.

Each catalog runs exactly as `reaseq makr run DATASET --backend torch` runs it (the same cache
keys, records and report), but the model loads once for all of them and the run stops cleanly at
a deadline: a lease is minutes long, the cache keeps every finished item, and a rerun continues.
Each catalog's knowledge is then exported as the `.jsonl.gz` that ships, and the figures (items/s,
calls/s, rows per batch, GPU memory) are printed as one JSON line per catalog.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from reaseq.offline.datasets import load_dataset
from reaseq.offline.makr.job import MakrConfig, MakrRun
from reaseq.offline.makr.llm import LLMConfig, make_backend
from reaseq.offline.pipeline import resolve_dataset


class DeadlineReached(Exception):
    """Raised from the progress callback: the run stops, finished items stay cached."""


def run_catalog(name: str, items, backend, cfg: MakrConfig, work: Path, deadline: float) -> dict:
    job = MakrRun(items, work / name / "makr" / Path(cfg.llm.model).stem, cfg, name, backend)
    clock = {"t0": None, "first": 0, "last": 0}

    def progress(done: int, total: int) -> None:
        if clock["t0"] is None:
            clock["t0"], clock["first"] = time.perf_counter(), done
        clock["last"] = done
        if time.monotonic() > deadline:
            raise DeadlineReached

    rows0, batches0 = getattr(backend, "rows", 0), getattr(backend, "batches", 0)
    finished = True
    try:
        job.run(progress)
    except DeadlineReached:
        finished = False
    seconds = time.perf_counter() - (clock["t0"] or time.perf_counter())
    generated = clock["last"] - clock["first"]
    rows = getattr(backend, "rows", 0) - rows0
    batches = max(1, getattr(backend, "batches", 0) - batches0)
    shipped = work / f"{name}.jsonl.gz"
    exported = job.export(shipped)
    job.cache.close()
    return {
        "dataset": name,
        "items": len(items),
        "finished": finished,
        "generated": generated,
        "seconds": round(seconds, 1),
        "items_per_s": round(generated / seconds, 2) if seconds > 0 else 0.0,
        "calls_per_s": round(rows / seconds, 1) if seconds > 0 else 0.0,
        "rows_per_batch": round(rows / batches, 1),
        "exported": exported,
        "file": str(shipped),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--concurrency", type=int, default=512, help="items in flight")
    parser.add_argument("--deadline-s", type=float, default=0, help="0: no deadline")
    parser.add_argument("--work", type=Path, default=Path("artifacts"))
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    deadline = t0 + args.deadline_s if args.deadline_s else float("inf")
    llm = LLMConfig(
        backend="torch", model=args.model, device=args.device, concurrency=args.concurrency
    )
    cfg = MakrConfig(llm=llm)
    backend = make_backend(llm)
    print(
        json.dumps(
            {
                "model": backend.name,
                "device": backend.device,
                "load_s": round(time.monotonic() - t0, 1),
            }
        ),
        flush=True,
    )
    for dataset in args.datasets:
        name, path = resolve_dataset(dataset, args.work / "synthetic")
        items = load_dataset(path, name=name).items
        line = run_catalog(name, items, backend, cfg, args.work, deadline)
        if backend.device == "cuda":
            import torch

            line["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(json.dumps(line), flush=True)
    backend.close()


if __name__ == "__main__":
    main()
