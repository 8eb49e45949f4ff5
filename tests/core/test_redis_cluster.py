"""Which store a URL names, and the key names on it: `redis://` keeps today's names, a cluster URL
puts the namespace's control keys in one slot (so the switch is one MULTI) and nothing else."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from reaseq.core.keys import KeySchema
from reaseq.core.redis_cluster import (
    ClusterAddress,
    is_cluster_url,
    key_schema,
    parse_cluster_url,
)


def test_cluster_urls_name_every_node_and_the_credentials() -> None:
    assert parse_cluster_url("redis-cluster://10.0.0.1:7000,10.0.0.2:7001") == ClusterAddress(
        (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    )
    assert parse_cluster_url("rediss-cluster://svc:p%40ss@[::1]:7000/0") == ClusterAddress(
        (("::1", 7000),), username="svc", password="p@ss", tls=True
    )
    assert parse_cluster_url("redis-cluster://:secret@h:1").password == "secret"
    assert is_cluster_url("REDIS-CLUSTER://h:1")
    assert not is_cluster_url("redis://127.0.0.1:6379/0")
    assert not is_cluster_url("rediss://h:6380/0")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis-cluster://h", "is not host:port"),
        ("redis-cluster://h:1,h:x", "'h:x' is not host:port"),
        ("redis-cluster://h:70000", "is not host:port"),
        ("redis-cluster://h:1/2", "database 0 only"),
        ("redis-cluster://h:1?ssl=true", "no query options"),
        ("redis://h:1", "not a Redis Cluster URL"),
    ],
)
def test_a_bad_cluster_url_is_a_clear_error(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("?", r"\?")):
        parse_cluster_url(url)


def test_a_password_in_a_bad_url_is_never_echoed() -> None:
    with pytest.raises(ValueError) as caught:
        parse_cluster_url("redis-cluster://user:hunter2@h:1/5")
    assert "hunter2" not in str(caught.value)


def test_single_node_key_names_are_unchanged() -> None:
    keys = key_schema("reaseq", "redis://127.0.0.1:6379/0")
    assert keys == KeySchema("reaseq")
    assert (keys.active, keys.releases, keys.history) == (
        "reaseq:active",
        "reaseq:releases",
        "reaseq:history",
    )
    assert keys.in_use("i1") == "reaseq:in-use:i1"
    assert keys.in_use_pattern == "reaseq:in-use:*"


def test_on_a_cluster_control_keys_share_one_slot_and_release_keys_spread() -> None:
    keys = key_schema("reaseq", "redis-cluster://h:1")
    control = [keys.active, keys.releases, keys.history, keys.in_use("i1"), keys.in_use("i2")]
    assert keys.active == "{reaseq}:active" and keys.in_use_pattern == "{reaseq}:in-use:*"
    assert len({key_slot(k.encode()) for k in control}) == 1
    release_keys = [keys.item("r1", str(i)) for i in range(50)] + [keys.manifest("r1")]
    assert keys.item("r1", "7") == "reaseq:r1:item:7"  # the same names as on one node
    assert len({key_slot(k.encode()) for k in release_keys}) > 40


def test_a_namespace_with_a_hash_tag_is_refused_on_a_cluster() -> None:
    with pytest.raises(ValueError, match="no braces"):
        key_schema("ns{x}", "redis-cluster://h:1")
    assert KeySchema("ns{x}").active == "ns{x}:active"  # single node: as before
