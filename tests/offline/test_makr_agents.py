"""MAKR agents without a model: validation, retries, failure records, the critic and the repair.

A scripted backend stands in for the LLM here only to produce exact bad outputs on demand (empty
fields, repeat loops, invented numbers), which a real small model produces only by chance. The
real-model paths are in test_makr_job.py.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reaseq.offline.makr.agents import Agents, critique, item_prompt_text, prompt_version
from reaseq.offline.makr.job import ItemTask, Plan, process_item
from reaseq.offline.makr.llm import Completion, Sampling
from reaseq.offline.makr.schemas import ItemCard, Relations, parse_list

ITEM = "Stanley TRA706T 3/8-Inch Heavy Duty Staples, Steel (1000 Count). Stanley. Staples."


class Scripted:
    """Answers prompts by the label they end with; a list answers successive calls."""

    name = "scripted"

    def __init__(self, answers: dict[str, str | list[str]]):
        self.answers = {k: list(v) if isinstance(v, list) else [v] for k, v in answers.items()}
        self.prompts: list[str] = []

    def complete(self, prompt: str, sampling: Sampling) -> Completion:
        self.prompts.append(prompt)
        label = prompt.rsplit("\n", 1)[-1].split(":", 1)[0]
        queue = self.answers.get(label, ["unknown"])
        text = queue.pop(0) if len(queue) > 1 else queue[0]
        return Completion(f" {text}", prompt_tokens=len(prompt) // 4, completion_tokens=3)


GOOD = {
    "Reasoning": "Steel staples for Stanley staple guns.",
    "Kind": "staples",
    "Brand": "Stanley",
    "Purpose": "fastening insulation",
    "Audience": "contractors",
    "Leg length": "3/8 inch",
    "Summary": "Heavy duty 3/8-inch steel staples, 1000 count.",
    "Complements": "staple guns, staple removers",
    "Substitutes": "brad nails",
}


def test_card_fields_are_forced_one_per_line_and_validated():
    agents = Agents(Scripted(GOOD))
    outcome = agents.extract(ITEM, ["leg length"])
    card = outcome.value
    assert isinstance(card, ItemCard)
    assert card.attributes == {"leg length": "3/8 inch"} and card.brand == "Stanley"
    assert outcome.attempts == 1 and outcome.usage.calls == 7
    assert critique(card, ITEM) == {}
    assert "Brand: Stanley." in card.knowledge_text()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"Purpose": ""}, "purpose"),
        ({"Kind": "pens pens pens pens"}, "repeats"),
        ({"Summary": "x" * 400}, "longer than 300"),
    ],
)
def test_invalid_output_is_retried_then_a_failure_with_its_reason(bad, reason):
    backend = Scripted(GOOD | bad)
    outcome = Agents(backend, retries=1).extract(ITEM, ["leg length"])
    assert outcome.value is None
    assert reason in outcome.failure
    assert outcome.attempts == 2


def test_failed_item_is_recorded_not_dropped():
    agents = Agents(Scripted(GOOD | {"Kind": ""}))
    task = ItemTask("42", ITEM, "staples", "k")
    record = process_item(agents, task, Plan("staples", ["leg length"], "p"), "m", "v")
    assert record["status"] == "failed" and record["card"] is None
    assert record["failure"].startswith("extractor: kind")


def test_critic_flags_invented_facts_and_repair_regenerates_only_those():
    answers = GOOD | {"Brand": "Bostitch", "Leg length": ["1/2 inch", "3/8 inch"]}
    backend = Scripted(answers)
    agents = Agents(backend)
    first = agents.extract(ITEM, ["leg length"]).value
    complaints = critique(first, ITEM)
    assert set(complaints) == {"brand", "leg length"}
    assert "Bostitch" in complaints["brand"] and '"1/2"' in complaints["leg length"]
    backend.answers["Brand"] = ["Stanley"]
    backend.prompts.clear()
    repaired = agents.extract(ITEM, ["leg length"], complaints, first).value
    assert critique(repaired, ITEM) == {}
    asked = [p.rsplit("\n", 1)[-1] for p in backend.prompts]
    assert asked == ["Brand:", "Leg length:"]  # accepted fields kept as written
    assert "Corrections: Brand" in backend.prompts[0]


def test_item_record_statuses_ok_repaired_flagged():
    plan = Plan("staples", ["leg length"], "p")
    task = ItemTask("1", ITEM, "staples", "k")
    ok = process_item(Agents(Scripted(GOOD)), task, plan, "m", "v")
    assert ok["status"] == "ok" and ok["relations"]["complements"] == [
        "staple guns",
        "staple removers",
    ]
    fixed = Scripted(GOOD | {"Brand": ["Bostitch", "Stanley"]})
    assert process_item(Agents(fixed), task, plan, "m", "v")["status"] == "repaired"
    stuck = process_item(Agents(Scripted(GOOD | {"Brand": "Acme"})), task, plan, "m", "v")
    assert stuck["status"] == "flagged" and 'Brand "Acme"' in stuck["complaints"][0]
    assert stuck["withdrawn"] == ["brand"] and stuck["card"]["brand"] == "unknown"
    assert "Acme" not in ItemCard.model_validate(stuck["card"]).knowledge_text()


def test_planner_drops_reserved_and_echoed_names():
    agents = Agents(Scripted({"Attributes": "brand, group 7 size, leg length, material"}))
    plan = agents.plan("group 7", ["Stanley staples"]).value
    assert plan.attributes == ["leg length", "material"]


def test_json_output_mode_validates_against_the_schema():
    class JsonBackend(Scripted):
        def complete(self, prompt, sampling):
            assert sampling.json_schema["required"][0] == "reasoning"
            assert "leg length" in sampling.json_schema["properties"]
            return Completion(
                '{"reasoning": "r", "kind": "staples", "brand": "Stanley", "purpose": "p", '
                '"audience": "a", "leg length": "3/8 inch", "summary": "s"}',
                10,
                40,
            )

    card = Agents(JsonBackend({}), output="json").extract(ITEM, ["leg length"]).value
    assert card.attributes == {"leg length": "3/8 inch"}
    broken = Scripted({"Card (JSON)": '{"reasoning": "r"'})
    outcome = Agents(broken, output="json").extract(ITEM, ["leg length"])
    assert outcome.value is None and "not JSON" in outcome.failure


def test_prompt_version_changes_with_mode_and_item_text_is_bounded():
    assert prompt_version("fields") != prompt_version("json")
    long = "word " * 500
    assert len(item_prompt_text(long)) <= 602 and item_prompt_text(long).endswith("…")
    assert parse_list("a, b, A, c, d") == ["a", "b", "c"]
    with pytest.raises(ValidationError):
        Relations(complements=["x"] * 4, substitutes=[])


def test_garbage_bytes_and_lone_surrogates_in_an_item_are_handled():
    text = "Stanley \ud800 staples\x00\x07 \udfff 3/8-Inch \ufffe Stanley"
    backend = Scripted(GOOD | {"Leg length": "3/8 inch", "Summary": "Steel staples."})
    task = ItemTask("id-\udc80", text, "staples", "k")
    record = process_item(Agents(backend), task, Plan("staples", ["leg length"], "p"), "m", "v")
    assert record["status"] in ("ok", "repaired", "flagged")
    assert all("\ud800" not in p and "\x00" not in p for p in backend.prompts)
    import json

    assert json.loads(json.dumps(record))["item_id"] == "id-\udc80"  # round-trips as JSON


def _card(**fields) -> ItemCard:
    base = {
        "reasoning": "unknown",
        "kind": "movie",
        "brand": "unknown",
        "purpose": "entertainment",
        "audience": "unknown",
        "attributes": {},
        "summary": "unknown",
    }
    return ItemCard.model_validate(base | fields)


def test_critic_flags_what_a_card_copies_from_the_prompts_examples():
    """Measured on ML-100K: the first 222 Gemma cards called Toy Story and Taxi Driver James Bond
    films "full of chases and spy missions", copied from the prompt's GoldenEye example."""
    toy_story = "Toy Story. 1995. Animation Children's Comedy"
    copied = _card(
        reasoning="A 1995 James Bond spy film, watched by fans of animation.",
        audience="action and spy film fans",
        summary="1995 animated comedy full of chases and spy missions",
    )
    complaints = critique(copied, toy_story)
    assert complaints["reasoning"] == 'Reasoning "james bond" is not in the product text.'
    assert complaints["audience"] == 'Audience copies an example ("action and spy film fans").'
    assert complaints["summary"] == 'Summary copies an example ("full of chases and spy").'
    # the same card, minus the copies, passes: its own words are not checked against examples
    honest = _card(reasoning="A 1995 animated comedy for children.", audience="families")
    assert critique(honest, toy_story) == {}
    # wording shared with an example is fine when the item's text says every word of it
    pens = "Pilot G2 Retractable Gel Pens, Bold Point, Black Ink, 12 Pack. Pilot. Pens"
    card = _card(kind="gel pens", summary="Twelve retractable pens with bold black ink.")
    assert critique(card, pens) == {}
    # and a name from the examples is fine where the item's text has it
    staples = "Stanley TRA705T 5/16-Inch Staples. Stanley. Staples"
    assert critique(
        _card(kind="staples", reasoning="Stanley staples for Arrow guns."), staples
    ) == {"reasoning": 'Reasoning "arrow" is not in the product text.'}


def test_example_sets_keep_the_shipped_keys_and_give_films_their_own():
    import gzip
    import json

    from reaseq.offline.makr.agents import examples_of
    from reaseq.offline.makr.job import SHIPPED_DIR, MakrConfig, resolve_examples

    with gzip.open(SHIPPED_DIR / "amazon14-office.jsonl.gz", "rt") as lines:
        shipped = next(json.loads(x)["record"] for x in lines if '"type": "item"' in x)
    # the products set is the original prompts: the shipped knowledge keeps its cache keys
    assert shipped["prompt_version"] == prompt_version("fields", "products")
    films = prompt_version("fields", "films")
    assert films.startswith("planner.v1+films/extractor.v1+") and films != shipped["prompt_version"]
    assert (examples_of(films), examples_of(shipped["prompt_version"])) == ("films", "products")
    assert resolve_examples(MakrConfig(), "ml-100k").examples == "films"
    assert resolve_examples(MakrConfig(), "amazon14-office").examples == "products"
    assert resolve_examples(MakrConfig(examples="products"), "ml-100k").examples == "products"
    with pytest.raises(ValueError, match="unknown example set 'songs'; known: products, films"):
        MakrConfig(examples="songs")

    backend = Scripted(GOOD)
    Agents(backend, examples="films").extract("Heat. 1995. Action Crime Thriller", ["genre"])
    assert "The Matrix" in backend.prompts[0] and "GoldenEye" not in backend.prompts[0]
    heat = "Heat. 1995. Action Crime Thriller"
    copied = _card(summary="1995 crime thriller about hackers fighting machines inside a city")
    assert critique(copied, heat, "films") == {
        "summary": 'Summary copies an example ("thriller about hackers fighting machines").'
    }
    assert critique(copied, heat, "products") == {}  # each set is checked against its own
