"""`makr run --engine ray`: the same per-item function on Ray actors, for catalogs that outgrow one
process. Each actor loads the model once; the driver hands out chunks and writes every finished
record to the cache as it arrives, so a killed Ray run resumes like a local one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

from reaseq.offline.makr.agents import Agents
from reaseq.offline.makr.job import ItemTask, MakrConfig, Plan, process_item
from reaseq.offline.makr.llm import make_backend

CHUNK = 4  # items per task: small enough that progress and resume stay fine-grained


class _Worker:
    def __init__(self, cfg: MakrConfig, model: str, version: str):
        self.agents = Agents(make_backend(cfg.llm), cfg.output, cfg.retries, cfg.examples)
        self.model, self.version = model, version

    def process(self, tasks: list[ItemTask], plans: dict[str, Plan]) -> list[dict]:
        return [
            process_item(self.agents, t, plans[t.category], self.model, self.version) for t in tasks
        ]


def generate_on_ray(
    todo: list[ItemTask], plans: dict[str, Plan], cfg: MakrConfig, model: str, version: str
) -> Iterator[dict]:
    import ray

    workers = max(1, cfg.workers)
    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS")  # an existing cluster, else a local instance
        ray.init(
            address=address or None,
            num_cpus=None if address else os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    threads = max(1, (os.cpu_count() or 1) // workers)
    llm = replace(cfg.llm, n_threads=cfg.llm.n_threads or threads)
    actor_cls = ray.remote(num_cpus=0)(_Worker)  # llama.cpp threads do the CPU accounting
    actors = [actor_cls.remote(replace(cfg, llm=llm), model, version) for _ in range(workers)]
    plans_ref = ray.put(plans)
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    pending: dict = {}
    try:
        for i, chunk in enumerate(chunks[: 2 * workers]):
            pending[actors[i % workers].process.remote(chunk, plans_ref)] = i % workers
        next_chunk = len(pending)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ready[0])
            if next_chunk < len(chunks):
                ref = actors[actor].process.remote(chunks[next_chunk], plans_ref)
                pending[ref] = actor
                next_chunk += 1
            yield from ray.get(ready[0])
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()
