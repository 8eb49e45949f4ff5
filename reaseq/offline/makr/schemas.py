"""What the MAKR agents must produce, as pydantic models: the validation that decides whether an
LLM answer is knowledge or a failure with a reason.

Small models fail in known ways: empty fields, values cut off mid-word, the same phrase repeated,
a whole paragraph in a one-line field. Each is a validation error with a message that lands in the
failure record, never a silently dropped item.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

UNKNOWN = "unknown"
CORE_FIELDS = ("kind", "brand", "purpose", "audience")
_WORD = re.compile(r"[\w'-]+", re.UNICODE)


def _clean(value: str) -> str:
    return " ".join(value.split()).strip(" .;,")


def _not_degenerate(value: str) -> str:
    """Rejects the repeat loops small models fall into ("pens pens pens", "a, b, a, b, a, b")."""
    words = [w.lower() for w in _WORD.findall(value)]
    for i in range(len(words) - 2):
        if words[i] == words[i + 1] == words[i + 2]:
            raise ValueError(f"repeats {words[i]!r}")
    if len(words) >= 8 and len(set(words)) < len(words) / 2:
        raise ValueError("repeats itself")
    return value


def _short(limit: int):
    def check(value: str) -> str:
        value = _clean(value)
        if not value:
            raise ValueError("is empty")
        if len(value) > limit:
            raise ValueError(f"is longer than {limit} characters")
        return _not_degenerate(value)

    return AfterValidator(check)


Short = Annotated[str, _short(80)]
Sentence = Annotated[str, _short(300)]
Attribute = Annotated[str, _short(40)]


class AttributePlan(BaseModel):
    """Schema planner output for one category: the dimensions a shopper compares."""

    category: str
    attributes: list[Attribute] = Field(min_length=1, max_length=4)


class ItemCard(BaseModel):
    """Extractor output for one item: reasoning first (chain of thought), then one value per
    dimension and a one-sentence summary."""

    reasoning: Sentence
    kind: Short
    brand: Short
    purpose: Short
    audience: Short
    attributes: dict[Attribute, Short]
    summary: Sentence

    def knowledge_text(self) -> str:
        """The text the encoder embeds: facts first, the free summary last, unknowns left out."""
        parts = [f"{self.kind}."]
        if self.brand.lower() != UNKNOWN:
            parts.append(f"Brand: {self.brand}.")
        for name, value in [("For", self.purpose), ("Audience", self.audience)]:
            if value.lower() != UNKNOWN:
                parts.append(f"{name}: {value}.")
        for name, value in self.attributes.items():
            if value.lower() != UNKNOWN:
                parts.append(f"{name}: {value}.")
        if self.summary.lower() != UNKNOWN:
            parts.append(self.summary)
        return " ".join(parts)

    def withdraw(self, fields: list[str]) -> ItemCard:
        """A copy with the named fields set to "unknown": claims the critic found unsupported
        and the repair did not fix are not passed on as knowledge."""
        core = {f: UNKNOWN for f in fields if f in ("reasoning", *CORE_FIELDS, "summary")}
        attributes = {k: UNKNOWN if k in fields else v for k, v in self.attributes.items()}
        return self.model_copy(update=core | {"attributes": attributes})


class Relations(BaseModel):
    """Relation agent output: kinds of products bought with (complements) or instead of
    (substitutes) the item."""

    complements: list[Short] = Field(max_length=3)
    substitutes: list[Short] = Field(max_length=3)

    def knowledge_text(self) -> str:
        """What the encoder adds for relations: the kinds bought with and instead of the item."""
        parts = []
        if self.complements:
            parts.append(f"Bought with: {', '.join(self.complements)}.")
        if self.substitutes:
            parts.append(f"Instead of: {', '.join(self.substitutes)}.")
        return " ".join(parts)


Status = Literal["ok", "repaired", "flagged", "failed"]


class KnowledgeRecord(BaseModel):
    """One item's result, as cached and shipped. `failed` keeps its reason; `flagged` keeps the
    critic's remaining complaints after the one repair."""

    item_id: str
    key: str  # content hash + prompt version + model: the cache key
    model: str
    prompt_version: str
    status: Status
    card: ItemCard | None = None
    relations: Relations | None = None
    complaints: list[str] = Field(default_factory=list)
    withdrawn: list[str] = Field(default_factory=list)  # fields set to "unknown" (flagged)
    failure: str | None = None
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def parse_list(text: str, limit: int = 3) -> list[str]:
    """'a, b, c' -> ['a', 'b', 'c'] (deduplicated, first `limit`)."""
    seen: list[str] = []
    for part in text.split(","):
        value = _clean(part)
        if value and value.lower() not in (s.lower() for s in seen):
            seen.append(value)
    return seen[:limit]
