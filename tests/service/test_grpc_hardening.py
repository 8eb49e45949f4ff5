"""gRPC input hardening over a real server and channel: bytes that are not a RankRequest, and
strings that are not UTF-8, are INVALID_ARGUMENT (the caller's fault), counted, and quiet in the
logs; valid calls, health and reflection are unchanged by taking the request as raw bytes."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from reaseq.service.grpc_server import SERVICE_NAME
from reaseq.v1 import ranking_pb2

pytestmark = pytest.mark.anyio

RANK_METHOD = f"/{SERVICE_NAME}/Rank"


def raw_rank(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    """Rank with no client-side serializer: the bytes go on the wire exactly as given."""
    return channel.unary_unary(RANK_METHOD, request_serializer=None, response_deserializer=None)


def field(number: int, value: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2), built by hand."""
    assert len(value) < 128  # one-byte varint length
    return bytes([number << 3 | 2, len(value)]) + value


def errors_total(kind: str) -> float:
    return REGISTRY.get_sample_value("reaseq_errors_total", {"kind": kind}) or 0.0


def requests_total(outcome: str) -> float:
    labels = {"transport": "grpc", "outcome": outcome}
    return REGISTRY.get_sample_value("reaseq_requests_total", labels) or 0.0


GOOD_USER, GOOD_ITEM = field(1, b"u1"), field(2, b"i1")


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"\xff\xff\xff\xff", "not a valid reaseq.v1.RankRequest"),  # truncated varint tag
        (b"\x0a\x10abc", "not a valid reaseq.v1.RankRequest"),  # length past the end
        (b"\x07", "not a valid reaseq.v1.RankRequest"),  # wire type 7 does not exist
        (field(1, b"u\xff1") + GOOD_ITEM, "not a valid reaseq.v1.RankRequest"),  # user_id
        (GOOD_USER + field(2, b"\xc3\x28"), "not a valid reaseq.v1.RankRequest"),  # candidate
        (GOOD_USER + GOOD_ITEM + field(3, b"\xed\xa0\x80"), "not a valid reaseq.v1.RankRequest"),
    ],
    ids=["garbage", "truncated", "bad-wire-type", "user-0xff", "candidate-bad-utf8", "recent-cesu"],
)
async def test_malformed_protobuf_is_invalid_argument(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture, payload: bytes, needle: str
) -> None:
    errors_before = errors_total("invalid_request")
    requests_before = requests_total("invalid_request")
    with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_rank(channel)(payload, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert needle in (info.value.details() or "")
    assert errors_total("invalid_request") == errors_before + 1
    assert requests_total("invalid_request") == requests_before + 1
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not noisy, [r.getMessage() for r in noisy]


async def test_raw_bytes_of_a_valid_request_are_ranked(
    channel: grpc.aio.Channel, release_ids: tuple[str, list[str]]
) -> None:
    user_id, items = release_ids
    request = ranking_pb2.RankRequest(user_id=user_id, candidate_item_ids=items[:3])
    reply = ranking_pb2.RankResponse.FromString(
        await raw_rank(channel)(request.SerializeToString(), timeout=10)
    )
    assert len(reply.scores) == 3 and reply.release


async def test_empty_message_is_an_empty_request_not_a_decode_error(
    channel: grpc.aio.Channel,
) -> None:
    """Zero bytes are a valid (all-default) RankRequest: the ranker names what is missing."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_rank(channel)(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id must be a non-empty string" in (info.value.details() or "")


async def test_reflection_still_describes_rank(channel: grpc.aio.Channel) -> None:
    """The method is registered by hand now: reflection must still serve its descriptor."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5):
        assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
        assert reply.file_descriptor_response.file_descriptor_proto
        break
