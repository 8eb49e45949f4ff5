"""HTTP input hardening over ASGI with a real Ranker: bad bytes, odd bodies and oversized bodies
are answered as the caller's error (400 / 413) in the one error shape, never a 500 or a traceback.

The same limits against a real uvicorn (real chunked transfer) are in test_server_process.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from reaseq.service.http_app import RANK_PATH, create_app
from reaseq.service.query import MAX_ID_LENGTH
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings
from tests.service.service_proc import largest_valid_request

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}
ERROR_KEYS = {"error", "message"}


@pytest.fixture
async def http(ranker: Ranker) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(ranker, ranker.settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://reaseq.test") as client:
        yield client


def errors_total(kind: str) -> float:
    return REGISTRY.get_sample_value("reaseq_errors_total", {"kind": kind}) or 0.0


def assert_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    got = response.json()
    assert set(got) == ERROR_KEYS, got
    assert got["error"] == kind and got["message"]
    return got


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not noisy, [r.getMessage() for r in noisy]


# --- bad bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"user_id": "\\ud800", "candidate_item_ids": ["i1"]}', "user_id"),
        (b'{"user_id": "u1", "candidate_item_ids": ["i1", "a\\udfffb"]}', "candidate_item_ids[1]"),
        (
            b'{"user_id": "u1", "candidate_item_ids": ["i1"], "recent_item_ids": ["\\udc80"]}',
            "recent_item_ids[0]",
        ),
    ],
)
async def test_lone_surrogates_are_400_in_every_id_field(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, raw: bytes, field: str
) -> None:
    before = errors_total("invalid_request")
    with caplog.at_level(logging.INFO):
        response = await http.post(RANK_PATH, content=raw, headers=JSON)
    got = assert_error(response, 400, "invalid_request")
    assert got["message"].startswith(f"{field} is not valid UTF-8"), got
    assert errors_total("invalid_request") == before + 1
    no_tracebacks(caplog)


async def test_a_valid_surrogate_pair_is_one_character(
    http: httpx.AsyncClient, release_ids: tuple[str, list[str]]
) -> None:
    """`\\ud83d\\ude00` is one emoji, not bad bytes: 128 of them make a valid, maximal id."""
    user_id, items = release_ids
    emoji_id = "\\ud83d\\ude00" * MAX_ID_LENGTH
    raw = f'{{"user_id": "{user_id}", "candidate_item_ids": ["{items[0]}", "{emoji_id}"]}}'
    response = await http.post(RANK_PATH, content=raw.encode(), headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["unknown_item_indices"] == [1]


@pytest.mark.parametrize(
    ("raw", "headers", "needle"),
    [
        (b"[" * 100_000, JSON, "not valid JSON"),  # deep nesting: RecursionError inside json
        (b'{"user_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON, "not valid JSON"),
        (b'{"user_id": "\xff\xfe", "candidate_item_ids": ["i1"]}', JSON, "not valid JSON"),
        (b"{not json", JSON, "not valid JSON"),
        (
            b'{"user_id": "u1", "candidate_item_ids": ["i1"]}',
            {"content-type": "text/plain"},
            "application/json",
        ),
        (b"user_id=u1", {"content-type": "application/x-www-form-urlencoded"}, "application/json"),
        (b'{"user_id": "u1", "candidate_item_ids": ["i1"]}', {}, "application/json"),
    ],
)
async def test_unparseable_bodies_are_400_in_the_error_shape(
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    headers: dict[str, str],
    needle: str,
) -> None:
    with caplog.at_level(logging.INFO):
        response = await http.post(RANK_PATH, content=raw, headers=headers)
    got = assert_error(response, 400, "invalid_request")
    assert needle in got["message"], got
    no_tracebacks(caplog)


async def test_unknown_paths_and_methods_answer_in_the_error_shape(
    http: httpx.AsyncClient,
) -> None:
    assert_error(await http.get("/no/such/path"), 404, "not_found")
    assert_error(await http.get(RANK_PATH), 405, "method_not_allowed")


# --- bounded bodies -------------------------------------------------------------------------


async def test_the_largest_valid_request_fits_the_default_limit(
    http: httpx.AsyncClient, ranker: Ranker, release_ids: tuple[str, list[str]]
) -> None:
    settings = ranker.settings
    raw = largest_valid_request(settings, release_ids[0])
    compact = json.loads(raw)  # as README says: 1.7 MB without any indentation
    assert 1.65e6 < len(json.dumps(compact, separators=(",", ":"))) < 1.75e6
    assert len(raw) <= settings.http_max_body_bytes
    # sized to it, not a blank cheque: within 25% of what a valid request can need
    assert settings.http_max_body_bytes <= 1.25 * len(raw)
    response = await http.post(RANK_PATH, content=raw, headers=JSON)
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["scores"]) == settings.max_candidates


@pytest.fixture
def small_limit_app(ranker: Ranker) -> Any:
    return create_app(ranker, ranker.settings.model_copy(update={"http_max_body_bytes": 1000}))


async def test_oversized_body_with_content_length_is_413_before_parsing(
    small_limit_app: Any,
) -> None:
    before = errors_total("request_too_large")
    transport = httpx.ASGITransport(app=small_limit_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://reaseq.test") as http:
        big = json.dumps({"user_id": "u1", "candidate_item_ids": ["i" * 100] * 20}).encode()
        response = await http.post(RANK_PATH, content=big, headers=JSON)
        got = assert_error(response, 413, "request_too_large")
        assert "1000 bytes" in got["message"]
        # under the limit, the same app answers normally
        ok = await http.post(RANK_PATH, json={"user_id": "u1", "candidate_item_ids": ["i1"]})
        assert ok.status_code == 200, ok.text
    assert errors_total("request_too_large") == before + 1


async def asgi_call(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> Any:
    """Drive the app as a server would: body in `chunks`, recording how many were read."""
    state: dict[str, Any] = {"read": 0, "status": None, "body": b""}
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        if not pending:
            return {"type": "http.disconnect"}
        state["read"] += 1
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            state["status"] = message["status"]
        elif message["type"] == "http.response.body":
            state["body"] += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": RANK_PATH,
        "raw_path": RANK_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("reaseq.test", 80),
        "state": {},
    }
    await app(scope, receive, send)
    return state


async def test_chunked_body_without_content_length_is_cut_off_at_the_limit(
    small_limit_app: Any,
) -> None:
    """No Content-Length: bytes are counted as they stream in and reading stops past the limit."""
    chunks = [b'{"user_id": "u1", "candidate_item_ids": ['] + [b'"' + b"i" * 98 + b'",'] * 1000
    state = await asgi_call(small_limit_app, [(b"content-type", b"application/json")], chunks)
    assert state["status"] == 413
    assert json.loads(state["body"])["error"] == "request_too_large"
    assert state["read"] <= 12, "kept reading an oversized body"


async def test_lying_content_length_is_still_counted(small_limit_app: Any) -> None:
    chunks = [b'{"user_id": "u1", "candidate_item_ids": ["' + b"i" * 5000 + b'"]}']
    headers = [(b"content-type", b"application/json"), (b"content-length", b"10")]
    state = await asgi_call(small_limit_app, headers, chunks)
    assert state["status"] == 413


async def test_bad_content_length_is_400(small_limit_app: Any) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"lots")]
    state = await asgi_call(small_limit_app, headers, [b"{}"])
    assert state["status"] == 400
    assert json.loads(state["body"])["error"] == "invalid_request"


def test_body_limit_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REASEQ_HTTP_MAX_BODY_BYTES", "12345")
    assert ServiceSettings().http_max_body_bytes == 12345


# --- readiness detail -----------------------------------------------------------------------


async def test_readyz_carries_the_rankers_detail(
    ranker: Ranker, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await http.get("/readyz")).json()["detail"] is None
    note = "serving the previous release: the named one was refused"
    monkeypatch.setattr(ranker, "readiness_detail", lambda: note)
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["detail"] == note


async def test_readiness_failure_does_not_leak_internals(
    ranker: Ranker, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected failure of the check names no exception class and no address. Faked: the
    stores turn their own failures into ReaseqErrors, so no real fault reaches this branch."""

    async def broken() -> None:
        raise ConnectionRefusedError(111, "Connect call failed ('10.1.2.3', 6379)")

    monkeypatch.setattr(ranker, "check_ready", broken)
    got = assert_error(await http.get("/readyz"), 503, "not_ready")
    assert "10.1.2.3" not in got["message"] and "Error" not in got["message"], got


@pytest.mark.parametrize(
    "raw",
    [
        b'{"user_id": "u1", "candidate_item_ids": ["i1"], "deadline_ms": false}',
        b'{"user_id": "u1", "candidate_item_ids": ["i1"], "deadline_ms": "50"}',
        b'{"user_id": "u1", "candidate_item_ids": ["i1"], "deadline_ms": 2.5}',
    ],
)
async def test_types_are_as_strict_as_the_schema(http: httpx.AsyncClient, raw: bytes) -> None:
    """The schema says integer: a boolean or a string is refused, not coerced (schemathesis)."""
    got = assert_error(
        await http.post(RANK_PATH, content=raw, headers=JSON), 400, "invalid_request"
    )
    assert got["message"].startswith("invalid request body: deadline_ms"), got


async def test_an_integral_float_is_an_integer_as_in_json_schema(http: httpx.AsyncClient) -> None:
    raw = b'{"user_id": "u1", "candidate_item_ids": ["i1"], "deadline_ms": 45797.0}'
    response = await http.post(RANK_PATH, content=raw, headers=JSON)
    assert response.status_code == 200, response.text
