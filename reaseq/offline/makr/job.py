"""Job `makr run`: every item of a prepared catalog -> a KnowledgeRecord, cached and resumable.

Generation takes hours on two cores, so the job must survive being killed at any point. Each
finished item is one committed SQLite row keyed by (item content hash, prompt version, model);
a rerun skips every key it has. Plans (one per category) are cached the same way. Shipped
knowledge (`knowledge/<dataset>.jsonl.gz`) seeds the cache, so the pipeline reuses it instead of
regenerating. `engine="ray"` runs the same per-item function on Ray actors.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from reaseq.offline.makr.agents import (
    FALLBACK_ATTRIBUTES,
    AgentOutcome,
    Agents,
    Usage,
    critique,
    example_set,
    item_prompt_text,
    prompt_version,
)
from reaseq.offline.makr.encode_config import EncodeConfig
from reaseq.offline.makr.llm import (
    DEFAULT_MODEL,
    LLMBackend,
    LLMConfig,
    make_backend,
    model_identity,
)
from reaseq.offline.makr.schemas import KnowledgeRecord

REPO_ROOT = Path(__file__).resolve().parents[3]
SHIPPED_DIR = REPO_ROOT / "knowledge"
CACHE_FILE = "cache.sqlite"
KNOWLEDGE_FILE = "knowledge.jsonl"
REPORT_FILE = "run.json"

Progress = Callable[[int, int], None]


@dataclass
class MakrConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    output: str = "fields"  # fields | json (agents.py)
    retries: int = 1  # extra attempts for invalid output, with sampling
    engine: str = "local"  # local | ray
    workers: int = 1  # ray actors (each loads the model once)
    limit: int = 0  # first N items only (trials); 0 = all
    shipped_dir: Path = SHIPPED_DIR
    # False: use what the cache and the shipped file hold and generate nothing; items without a
    # record are encoded from their raw text (counted in the encode summary)
    generate: bool = True
    encode: EncodeConfig = field(default_factory=EncodeConfig)  # knowledge -> representation
    # few-shot example set (agents.EXAMPLE_SETS); "auto": the dataset's (EXAMPLES_BY_DATASET)
    examples: str = "auto"

    def __post_init__(self) -> None:
        if self.examples != "auto":
            example_set(self.examples)  # a typo in a config fails at load, not hours later


EXAMPLES_BY_DATASET = {"ml-100k": "films"}  # any other catalog: products


def resolve_examples(cfg: MakrConfig, dataset: str) -> MakrConfig:
    """`cfg` with its example set named, checked against agents.EXAMPLE_SETS."""
    name = EXAMPLES_BY_DATASET.get(dataset, "products") if cfg.examples == "auto" else cfg.examples
    example_set(name)
    return replace(cfg, examples=name)


def _key(*parts: object) -> str:
    # surrogatepass: a lone surrogate in an item's text still gets a key
    raw = json.dumps(parts, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()


class KnowledgeCache:
    """SQLite: one committed row per finished item or plan, so a kill loses at most the item in
    flight. WAL mode lets `makr eval` read while a run writes."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, record TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS plans (key TEXT PRIMARY KEY, record TEXT)")
        self.db.commit()
        self.dropped = 0  # corrupted rows found (and deleted) by get()

    def get(self, table: str, key: str) -> dict | None:
        """The stored record, or None when there is none or it no longer parses (a corrupted
        row is deleted, so the job generates it again instead of serving it)."""
        row = self.db.execute(f"SELECT record FROM {table} WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return _checked(table, json.loads(row[0]))
        except (ValueError, TypeError):
            self.db.execute(f"DELETE FROM {table} WHERE key = ?", (key,))
            self.db.commit()
            self.dropped += 1
            return None

    def put(self, table: str, key: str, record: dict) -> None:
        # ASCII JSON: a lone surrogate in an item's text or id is escaped, never an encode error
        self.db.execute(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", (key, json.dumps(record)))
        self.db.commit()

    def import_file(self, path: Path) -> int:
        """Seeds the cache from a shipped `.jsonl.gz`; returns the rows added. A file with a
        bad line is refused whole (nothing imported), with the line number."""
        rows = []
        try:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                for number, line in enumerate(fh, 1):
                    try:
                        row = json.loads(line)
                        table = {"plan": "plans", "item": "items"}[row["type"]]
                        rows.append((table, str(row["key"]), _checked(table, row["record"])))
                    except (ValueError, KeyError, TypeError) as err:
                        raise ShippedKnowledgeError(
                            f"{path}: line {number} is not a knowledge row"
                        ) from err
        except (OSError, EOFError, UnicodeDecodeError) as err:
            raise ShippedKnowledgeError(f"{path}: not a readable .jsonl.gz ({err})") from err
        added = 0
        with self.db:  # one transaction
            for table, key, record in rows:
                cur = self.db.execute(
                    f"INSERT OR IGNORE INTO {table} VALUES (?, ?)", (key, json.dumps(record))
                )
                added += cur.rowcount
        return added

    def close(self) -> None:
        self.db.close()


class ShippedKnowledgeError(ValueError):
    """A shipped knowledge file that cannot be read; nothing of it was imported."""


def _checked(table: str, record: dict) -> dict:
    """Raises ValueError unless `record` is a valid row of `table`."""
    if table == "items":
        return KnowledgeRecord.model_validate(record).model_dump()
    if not isinstance(record, dict) or not isinstance(record.get("attributes"), list):
        raise ValueError("not a plan")
    return record


@dataclass
class Plan:
    category: str
    attributes: list[str]
    key: str
    failure: str | None = None
    attempts: int = 0


@dataclass
class ItemTask:
    item_id: str
    text: str
    category: str
    key: str


def process_item(agents: Agents, task: ItemTask, plan: Plan, model: str, version: str) -> dict:
    """Extractor -> critic -> at most one repair -> relation agent, for one item."""
    t0 = time.perf_counter()
    usage = Usage()
    attempts = 0

    def spend(outcome: AgentOutcome) -> AgentOutcome:
        nonlocal attempts
        attempts += outcome.attempts
        usage.merge(outcome.usage)
        return outcome

    base = {"item_id": task.item_id, "key": task.key, "model": model, "prompt_version": version}
    extracted = spend(agents.extract(task.text, plan.attributes))
    if extracted.value is None:
        record = KnowledgeRecord(**base, status="failed", failure=f"extractor: {extracted.failure}")
    else:
        card, status, withdrawn = extracted.value, "ok", []
        complaints = critique(card, task.text, agents.examples)
        if complaints:
            repair = spend(agents.extract(task.text, plan.attributes, complaints, card))
            left = (
                critique(repair.value, task.text, agents.examples)
                if repair.value is not None
                else None
            )
            if left is not None and len(left) < len(complaints):
                card, complaints = repair.value, left
            status = "repaired" if not complaints else "flagged"
            withdrawn = [f for f in complaints if f != "kind"]  # kind stays: it names the item
            card = card.withdraw(withdrawn)
        related = spend(agents.relate(task.text, card.kind))
        record = KnowledgeRecord(
            **base,
            status=status,
            card=card,
            relations=related.value,
            complaints=list(complaints.values()),
            withdrawn=withdrawn,
            failure=None if related.value is not None else f"relations: {related.failure}",
        )
    record.attempts = attempts
    record.prompt_tokens = usage.prompt_tokens
    record.completion_tokens = usage.completion_tokens
    record.seconds = round(time.perf_counter() - t0, 3)
    return record.model_dump()


def _concurrently(fn, tasks: list[ItemTask], workers: int) -> Iterator[dict]:
    """Items in flight at once against an endpoint; results in completion order. A bounded
    window keeps a kill from losing more than `workers` items."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(workers) as pool:
        queue = iter(tasks)
        running = {pool.submit(fn, t) for t in itertools.islice(queue, workers)}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                for task in itertools.islice(queue, 1):
                    running.add(pool.submit(fn, task))


def make_plan(agents: Agents, category: str, examples: list[str], key: str) -> Plan:
    outcome = agents.plan(category, examples)
    if outcome.value is None:  # recorded, and the item cards use the fallback dimensions
        return Plan(category, FALLBACK_ATTRIBUTES, key, outcome.failure, outcome.attempts)
    return Plan(category, list(outcome.value.attributes), key, None, outcome.attempts)


def _category_label(category: str) -> str:
    return f"group {category}" if category.isdigit() else category


@dataclass
class RunReport:
    items: int
    without_record: int  # only with generate=False (or after an interrupted run)
    from_cache: int
    generated: int
    statuses: dict[str, int]
    failure_rate: float
    repair_rate: float  # share of generated cards the critic sent back for repair
    relation_failures: int
    plans: int
    plan_failures: int
    seconds: float
    items_per_s: float
    tokens_per_s: float  # completion tokens per second of generation
    prompt_tokens: int
    completion_tokens: int
    model: str
    prompt_version: str
    engine: str


class MakrRun:
    """Plans, then items, against one cache; generation starts only when something is missing."""

    def __init__(
        self,
        items: pd.DataFrame,
        work: Path,
        cfg: MakrConfig,
        dataset: str = "",
        backend: LLMBackend | None = None,  # a loaded model to share between catalogs
    ):
        cfg = resolve_examples(cfg, dataset)
        self.cfg, self.work, self._backend = cfg, work, backend
        self.catalog = items  # plans see the whole catalog, so a --limit trial shares its keys
        self.items = items if not cfg.limit else items.head(cfg.limit)
        self.model = model_identity(cfg.llm)
        self.version = prompt_version(cfg.output, cfg.examples)
        self.cache = KnowledgeCache(work / CACHE_FILE)
        shipped = cfg.shipped_dir / f"{dataset}.jsonl.gz"
        self.seeded = self.cache.import_file(shipped) if dataset and shipped.is_file() else 0
        self._agents: Agents | None = None

    def agents(self) -> Agents:
        if self._agents is None:
            backend: LLMBackend = self._backend or make_backend(self.cfg.llm)
            self._agents = Agents(backend, self.cfg.output, self.cfg.retries, self.cfg.examples)
        return self._agents

    def plans(self) -> dict[str, Plan]:
        plans = {}
        wanted = set(self.items["category"].astype(str))
        for category, group in self.catalog.groupby("category", sort=False):
            if str(category) not in wanted:
                continue
            # examples picked by item id, so the plan key does not depend on row order
            examples = group.sort_values("item_id")["title"].fillna("").head(2).tolist()
            label = _category_label(str(category))
            key = _key("plan", label, examples, self.version, self.model)
            cached = self.cache.get("plans", key)
            if cached is None and not self.cfg.generate:
                continue  # no plan: this category's items have no record either
            if cached is None:
                plan = make_plan(self.agents(), label, examples, key)
                self.cache.put("plans", key, asdict(plan))
            else:
                plan = Plan(**cached)
            plans[str(category)] = plan
        return plans

    def tasks(self, plans: dict[str, Plan]) -> list[ItemTask]:
        out = []
        for row in self.items.itertuples():
            text = item_prompt_text(row.text or row.title or "")
            plan = plans.get(str(row.category))
            if plan is None:
                continue
            key = _key("item", text, plan.attributes, self.version, self.model)
            out.append(ItemTask(str(row.item_id), text, str(row.category), key))
        return out

    def run(self, progress: Progress | None = None) -> RunReport:
        t0 = time.perf_counter()
        plans = self.plans()
        tasks = self.tasks(plans)
        missing = [t for t in tasks if self.cache.get("items", t.key) is None]
        from_cache = len(tasks) - len(missing)
        # items with the same text share a key: generate it once, give every one the record
        todo = list({t.key: t for t in missing}.values()) if self.cfg.generate else []
        total = from_cache + len(todo)
        if progress:
            progress(from_cache, total)
        gen_t0 = time.perf_counter()
        generated: list[dict] = []
        for record in self._generate(todo, plans):
            self.cache.put("items", record["key"], record)
            generated.append(record)
            if progress:
                progress(from_cache + len(generated), total)
        gen_seconds = time.perf_counter() - gen_t0
        records = [
            r | {"item_id": t.item_id}
            for t in tasks
            if (r := self.cache.get("items", t.key)) is not None
        ]
        self._write_knowledge(records)
        report = self._report(records, generated, plans, from_cache, gen_seconds, t0)
        if generated:  # a read-only pass must not overwrite the generating run's figures
            (self.work / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2))
        return report

    def _generate(self, todo: list[ItemTask], plans: dict[str, Plan]) -> Iterator[dict]:
        if not todo:
            return iter(())
        if self.cfg.engine == "ray":
            from reaseq.offline.makr.ray_engine import generate_on_ray

            return generate_on_ray(todo, plans, self.cfg, self.model, self.version)
        if self.cfg.engine != "local":
            raise ValueError(f"unknown engine {self.cfg.engine!r}; known: local, ray")
        agents = self.agents()

        def one(task: ItemTask) -> dict:
            return process_item(agents, task, plans[task.category], self.model, self.version)

        if self.cfg.llm.backend in ("openai", "torch") and self.cfg.llm.concurrency > 1:
            return _concurrently(one, todo, self.cfg.llm.concurrency)
        return (one(t) for t in todo)

    def _write_knowledge(self, records: list[dict]) -> None:
        tmp = self.work / f"{KNOWLEDGE_FILE}.tmp"
        with tmp.open("w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")
        tmp.replace(self.work / KNOWLEDGE_FILE)  # readers never see half a file

    def _report(
        self,
        records: list[dict],
        generated: list[dict],
        plans: dict[str, Plan],
        from_cache: int,
        gen_seconds: float,
        t0: float,
    ) -> RunReport:
        statuses = Counter(r["status"] for r in records)
        n = max(1, len(records))
        completion = sum(r["completion_tokens"] for r in generated)
        sent_back = sum(1 for r in records if r["status"] in ("repaired", "flagged"))
        return RunReport(
            items=len(self.items),
            without_record=len(self.items) - len(records),
            from_cache=from_cache,
            generated=len(generated),
            statuses=dict(statuses),
            failure_rate=round(statuses.get("failed", 0) / n, 4),
            repair_rate=round(sent_back / n, 4),
            relation_failures=sum(1 for r in records if r["relations"] is None),
            plans=len(plans),
            plan_failures=sum(1 for p in plans.values() if p.failure),
            seconds=round(time.perf_counter() - t0, 1),
            items_per_s=round(len(generated) / gen_seconds, 3) if generated else 0.0,
            tokens_per_s=round(completion / gen_seconds, 1) if generated else 0.0,
            prompt_tokens=sum(r["prompt_tokens"] for r in generated),
            completion_tokens=completion,
            model=self.model,
            prompt_version=self.version,
            engine=self.cfg.engine,
        )

    def export(self, path: Path) -> int:
        """Writes plans and item records of this catalog to a `.jsonl.gz` (what ships)."""
        plans = self.plans()
        rows: list[dict] = [
            {"type": "plan", "key": p.key, "record": asdict(p)} for p in plans.values()
        ]
        for task in self.tasks(plans):
            record = self.cache.get("items", task.key)
            if record is not None:
                rows.append({"type": "item", "key": task.key, "record": record})
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as raw:
            raw.write("".join(json.dumps(r) + "\n" for r in rows).encode())
        return len(rows) - len(plans)


def ensure_knowledge(
    data, work: Path, cfg: MakrConfig | None = None, progress: Progress | None = None
) -> dict[str, dict]:
    """item_id -> record for a prepared dataset: from the cache or the shipped file, generating
    only what is missing (with the embedded default model unless `cfg` says otherwise)."""
    cfg = cfg or MakrConfig()
    folder = work / "makr" / Path(cfg.llm.model).stem
    job = MakrRun(data.items, folder, cfg, dataset=data.name)
    try:
        job.run(progress)
    finally:
        job.cache.close()
    return load_knowledge(folder)


def load_knowledge(work: Path) -> dict[str, dict]:
    """item_id -> record, from the last run's knowledge.jsonl."""
    path = work / KNOWLEDGE_FILE
    out: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            out[record["item_id"]] = record
    return out


def knowledge_summaries(work: Path, model: str = DEFAULT_MODEL) -> dict[str, str]:
    """item_id -> the card's knowledge text, for every item with a card in `<work>/makr/<model>`
    (what a release publishes for explanations; empty when MAKR never ran there)."""
    from reaseq.offline.makr.schemas import ItemCard

    records = load_knowledge(work / "makr" / Path(model).stem)
    return {
        item_id: ItemCard.model_validate(record["card"]).knowledge_text()
        for item_id, record in records.items()
        if record.get("card")
    }
