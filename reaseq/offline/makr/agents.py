"""The four MAKR agents: schema planner (per category), extractor (per item, reasoning first),
critic (checks the card against the item's own text, asks for one repair) and relation agent.

Prompts are versioned files in `prompts/` (few-shot, so base models such as Gemma 3 270M follow
them). Two output modes, measured against each other by `reaseq makr run --output`:
* `fields`: the job writes each field name itself and the model fills one line (stop at the line
  end), so structure never drifts; llama.cpp reuses the shared prompt prefix between calls.
* `json`: one call, decoding constrained to the card's JSON schema (grammar / `response_format`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from importlib.resources import files
from typing import ClassVar

from pydantic import ValidationError

from reaseq.offline.makr.llm import Completion, LLMBackend, PromptRejected, Sampling
from reaseq.offline.makr.schemas import (
    CORE_FIELDS,
    UNKNOWN,
    AttributePlan,
    ItemCard,
    Relations,
    parse_list,
)

PROMPTS = ("planner.v1", "extractor.v1", "repair.v1", "relation.v1")
# few-shot example sets: the prompt file per role. A small model copies its examples into items
# like them (ML-100K's cards became the products set's GoldenEye), so a catalog of films gets
# films that are not in it. `products` is the original set: its version string, hence every
# cache key and the shipped knowledge, is unchanged.
EXAMPLE_SETS = {
    "products": dict(zip(("planner", "extractor", "repair", "relation"), PROMPTS, strict=True)),
    "films": {
        "planner": "planner.v1",
        "extractor": "films/extractor.v1",
        "repair": "films/repair.v1",
        "relation": "films/relation.v1",
    },
}
FALLBACK_ATTRIBUTES = ["type", "size", "material"]
REPAIR_TEMPERATURE = 0.7  # retries and repairs sample; first attempts are greedy (reproducible)
RECORD_VERSION = 2  # bump when what a record holds changes (2: unfixed claims withdrawn)
MAX_ITEM_CHARS = 600  # long descriptions are cut at a word boundary: the head carries the facts
_NUMBER = re.compile(r"\d+(?:[.,/]\d+)*")


def load_prompt(name: str) -> string.Template:
    """A prompt file as a template; its final newline is dropped (each prompt ends on the label
    the model continues, e.g. "Reasoning:")."""
    text = files("reaseq.offline.makr").joinpath(f"prompts/{name}.txt").read_text()
    return string.Template(text.rstrip("\n"))


def example_set(examples: str) -> dict[str, str]:
    if examples not in EXAMPLE_SETS:
        raise ValueError(f"unknown example set {examples!r}; known: {', '.join(EXAMPLE_SETS)}")
    return EXAMPLE_SETS[examples]


def examples_of(version: str) -> str:
    """The example set a record's prompt version was made with."""
    for name, roles in EXAMPLE_SETS.items():
        if version.startswith("+".join(roles.values()) + ":"):
            return name
    return "products"


def prompt_version(output: str, examples: str = "products") -> str:
    """Names the prompt files and hashes their content and the decoding limits, so an edit
    without a version bump still misses the cache."""
    names = tuple(example_set(examples).values())
    settings = [
        output,
        Agents.FIELD_TOKENS,
        Agents.OTHER_TOKENS,
        MAX_ITEM_CHARS,
        REPAIR_TEMPERATURE,
        RECORD_VERSION,
    ]
    digest = hashlib.sha256(json.dumps(settings).encode())
    for name in names:
        digest.update(load_prompt(name).template.encode())
    return f"{'+'.join(names)}:{output}:{digest.hexdigest()[:10]}"


def item_prompt_text(text: str, limit: int = MAX_ITEM_CHARS) -> str:
    """One line of at most `limit` characters; lone surrogates and control bytes become
    replacement characters or spaces (a tokenizer would fail on them)."""
    text = str(text).encode("utf-8", "replace").decode("utf-8")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " …"


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, done: Completion) -> None:
        self.calls += 1
        self.prompt_tokens += done.prompt_tokens
        self.completion_tokens += done.completion_tokens

    def merge(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


@dataclass
class AgentOutcome:
    """An agent's result or its failure reason, plus what it cost."""

    value: object | None
    failure: str | None = None
    attempts: int = 0
    usage: Usage = field(default_factory=Usage)


class Agents:
    """Runs the agents against one backend. Invalid output is retried once with sampling
    (temperature 0.7), then reported as a failure with the validation message."""

    FIELD_TOKENS: ClassVar[dict[str, int]] = {"reasoning": 40, "summary": 40}
    OTHER_TOKENS = 16  # every other field is a short phrase

    def __init__(
        self, llm: LLMBackend, output: str = "fields", retries: int = 1, examples: str = "products"
    ):
        if output not in ("fields", "json"):
            raise ValueError(f"output must be 'fields' or 'json', not {output!r}")
        self.llm, self.output, self.retries = llm, output, retries
        self.examples = examples
        self.templates = {role: load_prompt(name) for role, name in example_set(examples).items()}

    # -- plumbing -------------------------------------------------------------------------
    def _line(self, prompt: str, usage: Usage, max_tokens: int, temperature: float) -> str:
        done = self.llm.complete(
            prompt, Sampling(max_tokens=max_tokens, temperature=temperature, stop=["\n"])
        )
        usage.add(done)
        return done.text.split("\n", 1)[0].strip()

    def _attempts(self, run, first_temperature: float = 0.0) -> AgentOutcome:
        usage, failure = Usage(), None
        for attempt in range(self.retries + 1):
            temperature = first_temperature if attempt == 0 else REPAIR_TEMPERATURE
            try:
                return AgentOutcome(run(usage, temperature), attempts=attempt + 1, usage=usage)
            except ValidationError as err:
                failure = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'output'} {e['msg']}" for e in err.errors()
                )
            except (ValueError, PromptRejected) as err:  # other LLMErrors stop the run
                failure = str(err)
        return AgentOutcome(None, failure=failure, attempts=self.retries + 1, usage=usage)

    # -- planner --------------------------------------------------------------------------
    def plan(self, category: str, examples: list[str]) -> AgentOutcome:
        shown = "; ".join(item_prompt_text(e, 80) for e in examples[:2])
        prompt = self.templates["planner"].substitute(category=category, examples=shown)

        def run(usage: Usage, temperature: float) -> AttributePlan:
            reserved = (*CORE_FIELDS, "summary", "reasoning")
            names = [
                a.lower()
                for a in parse_list(self._line(prompt, usage, 24, temperature), limit=4)
                if a.lower() not in reserved and category.lower() not in a.lower()
            ]
            return AttributePlan(category=category, attributes=names)

        return self._attempts(run)

    # -- extractor and repair -------------------------------------------------------------
    def extract(
        self,
        item_text: str,
        attributes: list[str],
        complaints: dict[str, str] | None = None,
        previous: ItemCard | None = None,
    ) -> AgentOutcome:
        """A card for one item. With `complaints` (field -> critic sentence) and the `previous`
        card, this is the repair: the corrections are shown, the fields the critic accepted are
        kept as written and only the flagged ones are generated again."""
        item = item_prompt_text(item_text)
        if complaints:
            corrections = " ".join(complaints.values())
            prompt = self.templates["repair"].substitute(item=item, corrections=corrections)
        else:
            prompt = self.templates["extractor"].substitute(item=item)
        keep = {}
        if complaints and previous is not None:
            keep = {k: v for k, v in _card_values(previous).items() if k not in complaints}
        # Greedy decoding repeats its own mistake; a repair samples instead (measured: greedy
        # repairs fixed 0 of 5 flagged cards on Office).
        first = REPAIR_TEMPERATURE if complaints else 0.0
        if self.output == "json":
            return self._attempts(lambda u, t: self._card_json(prompt, attributes, u, t), first)
        return self._attempts(lambda u, t: self._card_fields(prompt, attributes, u, t, keep), first)

    def _card_fields(
        self,
        prompt: str,
        attributes: list[str],
        usage: Usage,
        temperature: float,
        keep: dict[str, str] | None = None,
    ) -> ItemCard:
        names = ["reasoning", *CORE_FIELDS, *attributes, "summary"]
        values: dict[str, str] = {}
        for i, name in enumerate(names):
            if i > 0:
                prompt += f"\n{name.capitalize()}:"
            if keep and name in keep:
                value = keep[name]
            else:
                value = self._line(
                    prompt, usage, self.FIELD_TOKENS.get(name, self.OTHER_TOKENS), temperature
                )
            values[name] = value
            prompt += f" {value}"
        return ItemCard(
            reasoning=values["reasoning"],
            **{k: values[k] for k in CORE_FIELDS},
            attributes={a: values[a] for a in attributes},
            summary=values["summary"],
        )

    def _card_json(
        self, prompt: str, attributes: list[str], usage: Usage, temperature: float
    ) -> ItemCard:
        schema = card_schema(attributes)
        # The few-shot cards stay in lines; the new card is asked for as JSON after "Card:".
        prompt = prompt.removesuffix("Reasoning:") + "Card (JSON):"
        done = self.llm.complete(
            prompt,
            Sampling(max_tokens=320, temperature=temperature, stop=["\n\n"], json_schema=schema),
        )
        usage.add(done)
        try:
            data = json.loads(done.text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not JSON ({err.msg})") from err
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        data["attributes"] = {a: data.get(a, "") for a in attributes}
        return ItemCard.model_validate(data)

    # -- relations ------------------------------------------------------------------------
    def relate(self, item_text: str, kind: str) -> AgentOutcome:
        prompt = self.templates["relation"].substitute(
            item=item_prompt_text(item_text, 200), kind=kind
        )

        def run(usage: Usage, temperature: float) -> Relations:
            complements = self._line(prompt, usage, 28, temperature)
            substitutes = self._line(
                f"{prompt} {complements}\nSubstitutes:", usage, 28, temperature
            )
            return Relations(
                complements=parse_list(complements), substitutes=parse_list(substitutes)
            )

        return self._attempts(run)


def card_schema(attributes: list[str]) -> dict:
    """JSON schema for constrained decoding: reasoning first, each dimension a short string."""
    short = {"type": "string", "minLength": 1, "maxLength": 80}
    props = {"reasoning": {"type": "string", "minLength": 1, "maxLength": 300}}
    props |= {name: short for name in (*CORE_FIELDS, *attributes)}
    props["summary"] = {"type": "string", "minLength": 1, "maxLength": 300}
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[\w]+", text.lower()))


def _card_values(card: ItemCard) -> dict[str, str]:
    return {
        "reasoning": card.reasoning,
        **{k: getattr(card, k) for k in CORE_FIELDS},
        **card.attributes,
        "summary": card.summary,
    }


COPY_RUN = 5  # words in a row shared with an example's answer that count as copying it
_FUNCTION_WORDS = frozenset(
    "a an and are as at be by for from in is it of on or the to with".split()  # noqa: SIM905
)


@functools.cache
def example_answers(examples: str = "products") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The few-shot answers of the extractor prompt (normalised values) and the names they use
    (capitalised words past a value's first word: Stanley, Uni-Ball, James Bond). Small models
    copy them into unrelated items (measured on ML-100K: 91 of the first 222 cards called their
    film a James Bond film), which only a check against the examples catches."""
    values: list[str] = []
    names: dict[str, None] = {}  # in order of appearance: complaints must be reproducible
    for block in load_prompt(example_set(examples)["extractor"]).template.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not lines[0].startswith("Product:") or "$item" in lines[0]:
            continue
        for line in lines[1:]:
            value = line.split(":", 1)[-1].strip()
            values.append(_norm(value))
            names |= dict.fromkeys(_norm(w) for w in value.split()[1:] if w[:1].isupper())
    return tuple(values), tuple(n for n in names if n)


def _copied_run(value: str, text: str, answers: tuple[str, ...]) -> str | None:
    """The first COPY_RUN-word run of `value` found in an example's answer that holds a content
    word the item's own (normalised) text does not: copied claims, not shared wording of true
    ones."""
    words, known = value.split(), set(text.split()) | _FUNCTION_WORDS
    for i in range(len(words) - COPY_RUN + 1):
        run = words[i : i + COPY_RUN]
        phrase = " ".join(run)
        if not known.issuperset(run) and any(f" {phrase} " in f" {a} " for a in answers):
            return phrase
    return None


def example_copies(card: ItemCard, item_text: str, examples: str = "products") -> dict[str, str]:
    """Field -> complaint for what a card took from the prompt's examples: one of their names, or
    five words in a row holding a word the item's text lacks (the reasoning is not encoded, so
    only names are checked there; it steers the fields after it)."""
    answers, example_names = example_answers(examples)
    text = _norm(item_text)
    padded = f" {text} "
    complaints: dict[str, str] = {}
    for name, value in _card_values(card).items():
        said = f" {_norm(value)} "
        borrowed = [n for n in example_names if f" {n} " in said and f" {n} " not in padded]
        run = None if name == "reasoning" else _copied_run(said.strip(), text, answers)
        if borrowed and name != "brand":  # the critic's brand check says it for the brand
            said_names = " ".join(borrowed)
            complaints[name] = f'{name.capitalize()} "{said_names}" is not in the product text.'
        elif run:
            complaints[name] = f'{name.capitalize()} copies an example ("{run}").'
    return complaints


def critique(card: ItemCard, item_text: str, examples: str = "products") -> dict[str, str]:
    """The critic: checks a card against the item's own text and returns field -> complaint, one
    sentence each, which the repair prompt shows the extractor. It checks the facts that can be
    checked: the brand must occur in the text, every number must occur in the text, the card must
    say what the item is, one value must not fill several fields, and nothing may come from the
    prompt's examples unless the item's text says it too (`example_copies`)."""
    text = _norm(item_text)
    complaints = example_copies(card, item_text, examples)
    numbers_in_text = set(_NUMBER.findall(item_text))
    if card.kind.lower() == UNKNOWN:
        complaints["kind"] = "Kind must name what the product is."
    if card.brand.lower() != UNKNOWN and _norm(card.brand) not in text:
        complaints["brand"] = f'Brand "{card.brand}" is not in the product text.'
    checked = {"kind": card.kind, **card.attributes, "summary": card.summary}
    for name, value in checked.items():
        missing = [n for n in _NUMBER.findall(value) if n not in numbers_in_text]
        if missing and name not in complaints:
            complaints[name] = f'{name.capitalize()} "{missing[0]}" is not in the product text.'
    fields = {"purpose": card.purpose, "audience": card.audience, **card.attributes}
    values = [v.lower() for v in fields.values()]
    for name, value in fields.items():
        if value.lower() != UNKNOWN and values.count(value.lower()) >= 3 and name != "purpose":
            complaints.setdefault(name, f'"{value}" is repeated in several fields.')
    return complaints
