"""The request rules both transports share (query.validate_query)."""

from __future__ import annotations

import pytest

from reaseq.service.errors import InvalidRequest
from reaseq.service.query import MAX_ID_LENGTH, RankLimits, RankQuery, validate_query

LIMITS = RankLimits(max_candidates=3, max_recent_behaviors=2)


def query(**overrides: object) -> RankQuery:
    fields: dict[str, object] = {
        "user_id": "u1",
        "candidate_item_ids": ["i1", "i2"],
        "recent_item_ids": ["i3"],
        "deadline_ms": None,
    }
    fields.update(overrides)
    return RankQuery(**fields)  # type: ignore[arg-type]


def test_valid_query_passes() -> None:
    validate_query(query(), LIMITS)
    validate_query(query(candidate_item_ids=["i1", "i2", "i3"], recent_item_ids=[]), LIMITS)
    validate_query(query(deadline_ms=0), LIMITS)
    validate_query(query(user_id="u" * MAX_ID_LENGTH), LIMITS)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"candidate_item_ids": []}, "candidate_item_ids is empty"),
        ({"candidate_item_ids": ["a", "b", "c", "d"]}, "4 candidates exceed the limit of 3"),
        ({"recent_item_ids": ["a", "b", "c"]}, "3 recent behaviors exceed the limit of 2"),
        ({"user_id": ""}, "user_id must be a non-empty string"),
        ({"user_id": "   "}, "user_id must be a non-empty string"),
        ({"candidate_item_ids": ["i1", ""]}, r"candidate_item_ids\[1\] must be a non-empty"),
        ({"recent_item_ids": [""]}, r"recent_item_ids\[0\] must be a non-empty"),
        ({"user_id": "u" * (MAX_ID_LENGTH + 1)}, f"the limit is {MAX_ID_LENGTH}"),
        ({"candidate_item_ids": ["x" * 200]}, r"candidate_item_ids\[0\] is 200 characters"),
        ({"user_id": "u\n1"}, "user_id contains control characters"),
        ({"candidate_item_ids": ["i\x001"]}, r"candidate_item_ids\[0\] contains control"),
        ({"recent_item_ids": ["i\r"]}, r"recent_item_ids\[0\] contains control"),
        ({"deadline_ms": -1}, "deadline_ms must be >= 0"),
    ],
)
def test_invalid_query_is_refused_with_a_message(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidRequest, match=match) as info:
        validate_query(query(**overrides), LIMITS)
    assert info.value.http_status == 400
    assert info.value.kind == "invalid_request"


def test_non_string_id_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="must be a non-empty string"):
        validate_query(query(candidate_item_ids=["i1", 7]), LIMITS)


def test_default_limits_come_from_the_design() -> None:
    limits = RankLimits()
    validate_query(
        query(candidate_item_ids=[f"i{n}" for n in range(limits.max_candidates)]), limits
    )
    with pytest.raises(InvalidRequest, match="split the request"):
        validate_query(
            query(candidate_item_ids=[f"i{n}" for n in range(limits.max_candidates + 1)]), limits
        )


BAD_IDS = {  # one bad id among many good ones: the whole-list check must send it to the per-id one
    "": "non-empty",
    "   ": "non-empty",
    "a\ud800b": "lone surrogate at character 1",
    "x" * (MAX_ID_LENGTH + 1): "the limit is",
    "a\nb": "control characters",
    "a\x00": "control characters",
    7: "non-empty string",
}


@pytest.mark.parametrize("field", ["candidate_item_ids", "recent_item_ids"])
@pytest.mark.parametrize("bad", list(BAD_IDS), ids=repr)
def test_a_bad_id_among_hundreds_is_found_and_named(field: str, bad: object) -> None:
    ids: list[object] = [f"item-{n}" for n in range(300)]
    ids[137] = bad
    limits = RankLimits(max_candidates=1000, max_recent_behaviors=1000)
    with pytest.raises(InvalidRequest, match=BAD_IDS[bad]) as err:
        validate_query(query(**{field: ids}), limits)
    assert f"{field}[137]" in err.value.message
    validate_query(query(**{field: [f"item-{n}" for n in range(300)]}), limits)
