"""The service and the publisher over a real 3-master Redis Cluster (`redis-cluster://`).

A release's keys spread over every master while the namespace's control keys share one slot;
the cluster serves the scores single-node Redis serves, with one read per node per request;
activate, rollback and GC work across the masters and a live switch never mixes releases; a
killed master is a fast, clear error and serving resumes when it is back; a value corrupted on any
node is found; a moved slot and a cluster that refuses scripts still read right.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis
from redis.crc import key_slot

from reaseq.bench.local_redis import LocalRedisCluster, ask
from reaseq.core.codec import encode_vector
from reaseq.core.keys import KeySchema
from reaseq.core.redis_cluster import NodeReads, key_schema
from reaseq.core.release import ReleaseCheckError, read_manifest
from reaseq.offline.publish import RedisPublisher, rollback_target
from reaseq.service.errors import CorruptFeatures, FeatureStoreUnavailable
from reaseq.service.query import RankQuery
from reaseq.service.ranking import Ranker
from reaseq.service.settings import ServiceSettings
from tests.service.recompute import offline_scores
from tests.service.switching import (
    no_old_release_after_the_new,
    rank_across_switch,
    rank_once_the_store_answers,
)

pytestmark = pytest.mark.anyio
NS = "cl"


def cluster_settings(cluster: LocalRedisCluster, **extra) -> ServiceSettings:
    return ServiceSettings(
        store="redis",
        redis_url=cluster.url,
        redis_namespace=NS,
        release_poll_interval_s=0.1,
        redis_timeout_s=0.25,
        **extra,
    )


def keys_per_master(cluster: LocalRedisCluster, pattern: str) -> list[int]:
    """How many keys matching `pattern` each master holds, asked of each node itself."""
    counts = []
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        counts.append(sum(1 for _ in client.scan_iter(match=pattern, count=1000)))
        client.close()
    return counts


@pytest.fixture
def cluster_publisher(redis_cluster_client, redis_cluster) -> RedisPublisher:
    return RedisPublisher(redis_cluster_client, key_schema(NS, redis_cluster.url))


async def test_release_keys_spread_over_every_master_and_control_keys_share_a_slot(
    cluster_publisher, redis_cluster, pipeline_run
) -> None:
    release = cluster_publisher.publish(pipeline_run.release_dir)
    keys = cluster_publisher.keys
    manifest = read_manifest(pipeline_run.release_dir)
    counts = keys_per_master(redis_cluster, keys.prefix(release) + "*")
    # items, users, the model, the manifest, the default item: all of them, on all 3 masters
    assert sum(counts) == manifest.n_items + manifest.n_users + 3
    assert all(count > sum(counts) / 6 for count in counts), counts
    control = [keys.active, keys.history, keys.releases]
    assert keys.active == "{cl}:active"
    holders = {redis_cluster.master_of(key).port for key in control}
    assert len(holders) == 1
    assert keys_per_master(redis_cluster, "{cl}:*") == [
        3 if node.port in holders else 0 for node in redis_cluster.nodes
    ]


def test_a_cluster_client_needs_the_cluster_key_names(redis_cluster_client) -> None:
    """Mixing them would put the switch's keys in different slots (a cross-slot MULTI)."""
    with pytest.raises(ValueError, match="cluster=True"):
        RedisPublisher(redis_cluster_client, KeySchema(NS))


async def test_cluster_serves_the_scores_single_node_redis_serves(
    cluster_publisher, redis_cluster, redis_client, redis_server, pipeline_run, release_ids
) -> None:
    cluster_publisher.publish(pipeline_run.release_dir)
    RedisPublisher(redis_client, KeySchema(NS)).publish(pipeline_run.release_dir)
    single_settings = cluster_settings(redis_cluster).model_copy(
        update={"redis_url": redis_server.url}
    )
    user, items = release_ids
    query = RankQuery(user, [*items, "no-such-item"], recent_item_ids=items[:2])
    on_cluster = await Ranker.open(cluster_settings(redis_cluster), follow=False)
    on_single = await Ranker.open(single_settings, follow=False)
    try:
        from_cluster, from_single = await on_cluster.rank(query), await on_single.rank(query)
        assert from_cluster.scores == from_single.scores
        assert from_cluster.unknown_item_indices == from_single.unknown_item_indices == [10]
        assert from_cluster.release == from_single.release
        reads = on_cluster._active.features.mget
        assert isinstance(reads, NodeReads) and reads.scripted  # one script call per node
        await on_cluster.check_ready()
    finally:
        await on_cluster.close()
        await on_single.close()


async def test_activate_rollback_and_gc_work_across_the_masters(
    cluster_publisher, redis_cluster, pipeline_run, second_release, release_ids
) -> None:
    pub = cluster_publisher
    user, items = release_ids
    query = RankQuery(user, items)
    first = pub.publish(pipeline_run.release_dir)
    ranker = await Ranker.open(cluster_settings(redis_cluster), follow=False)
    try:
        assert (await ranker.rank(query)).release == first
        second = pub.publish(second_release, activate=True, keep=1)
        # GC found the running instance's in-use marker (a SCAN over every master)
        assert [e.release for e in pub.listing()] == [first, second]
        assert all(keys_per_master(redis_cluster, pub.keys.prefix(first) + "*"))

        assert await ranker.refresh() is True
        result = await ranker.rank(query)
        assert result.release == second
        np.testing.assert_allclose(
            result.scores, offline_scores(second_release, user, items), atol=1e-6
        )

        target = rollback_target(pub.history(), pub.active(), {m.release for m in pub.complete()})
        assert target == first
        pub.activate(target)
        assert pub.history() == [first, second, first]
        assert await ranker.refresh() is True
        result = await ranker.rank(query)
        assert result.release == first
        np.testing.assert_allclose(
            result.scores, offline_scores(pipeline_run.release_dir, user, items), atol=1e-6
        )

        pub.activate(second)
        assert await ranker.refresh() is True
        await asyncio.gather(*ranker._retiring)  # the old release has drained
        await ranker.source.mark_in_use(ranker.instance, ranker._held())
        assert pub.gc(keep=1) == [first]
        assert keys_per_master(redis_cluster, pub.keys.prefix(first) + "*") == [0, 0, 0]
        assert all(keys_per_master(redis_cluster, pub.keys.prefix(second) + "*"))
        assert (await ranker.rank(query)).release == second
    finally:
        await ranker.close()


async def test_a_live_switch_over_the_cluster_never_mixes_releases(
    cluster_publisher, redis_cluster, pipeline_run, second_release, release_ids
) -> None:
    """The pointer and the history move in one MULTI on one slot; every response is wholly one
    release's, and once the new one answered no later request got the old one."""
    pub = cluster_publisher
    first = pub.publish(pipeline_run.release_dir)
    ranker = await Ranker.open(
        cluster_settings(redis_cluster).model_copy(update={"release_poll_interval_s": 0.05})
    )
    user, items = release_ids
    query = RankQuery(user, items, recent_item_ids=items[:2])
    try:
        results, spans, errors = await rank_across_switch(
            ranker, query, lambda: pub.publish(second_release)
        )
    finally:
        await ranker.close()
    assert errors == []
    assert {r.release for r in results} == {first, "second-release"}
    dirs = {first: pipeline_run.release_dir, "second-release": second_release}
    expected = {rel: offline_scores(d, user, items, items[:2]) for rel, d in dirs.items()}
    for result in results:
        np.testing.assert_allclose(result.scores, expected[result.release], atol=1e-6)
    assert no_old_release_after_the_new(spans)


async def test_a_killed_master_fails_fast_and_serving_resumes_when_it_is_back(
    cluster_publisher, redis_cluster, pipeline_run, release_ids
) -> None:
    user, items = release_ids
    query = RankQuery(user, items)
    release = cluster_publisher.publish(pipeline_run.release_dir)
    keys = cluster_publisher.keys
    control_master = redis_cluster.master_of(keys.active)
    holders = {redis_cluster.master_of(keys.item(release, item)).port for item in items}
    victim = next(n for n in redis_cluster.nodes if n.port in holders and n is not control_master)
    ranker = await Ranker.open(cluster_settings(redis_cluster))
    try:
        before = await ranker.rank(query)
        victim.kill()
        try:
            for _ in range(3):  # every request while it is down: fast and clear
                started = time.perf_counter()
                with pytest.raises(
                    FeatureStoreUnavailable, match=r"feature store.*unreachable"
                ) as caught:
                    await ranker.rank(query)
                assert time.perf_counter() - started < 2.0
                assert str(victim.port) not in caught.value.message  # no addresses to callers
                assert "Error" not in caught.value.message  # nor exception class names
            with pytest.raises(FeatureStoreUnavailable):
                await ranker.check_ready()
            # the survivors flag it failed and refuse every command (CLUSTERDOWN): still fast
            survivor = next(node for node in redis_cluster.nodes if node is not victim)
            deadline = time.monotonic() + 10
            while "cluster_state:fail" not in ask(survivor.port, "cluster", "info"):
                assert time.monotonic() < deadline, "the cluster never noticed the dead master"
                await asyncio.sleep(0.1)
            started = time.perf_counter()
            with pytest.raises(FeatureStoreUnavailable, match=r"feature store.*unreachable"):
                await ranker.rank(query)
            assert time.perf_counter() - started < 2.0
        finally:
            victim.start()  # same port, its nodes.conf and append-only file: slots and keys
        redis_cluster.wait_ok()
        after = await rank_once_the_store_answers(ranker, query, timeout_s=15)
        assert after.scores == before.scores
        await ranker.check_ready()
        assert ranker._active.features.mget.scripted  # an outage does not turn them off
    finally:
        await ranker.close()


@pytest.mark.parametrize("what", ["garbage item", "item deleted", "extra item key"])
async def test_a_value_corrupted_on_a_cluster_node_is_refused(
    what,
    cluster_publisher,
    redis_cluster_client,
    redis_cluster,
    pipeline_run,
    second_release,
    release_ids,
) -> None:
    pub, keys = cluster_publisher, cluster_publisher.keys
    first = pub.publish(pipeline_run.release_dir)
    second = pub.publish(second_release, activate=False)
    victim = keys.item(second, release_ids[1][0])
    if what == "garbage item":
        redis_cluster_client.set(victim, b"garbage")
    elif what == "item deleted":
        redis_cluster_client.delete(victim)
    else:
        extra = encode_vector(np.zeros(pub.verify(second).vector_dim, np.float32))
        redis_cluster_client.set(keys.item(second, "zz-injected"), extra)
    with pytest.raises(ReleaseCheckError, match=second):
        pub.activate(second)  # verified over every master before the pointer moves
    assert pub.active() == first
    ranker = await Ranker.open(cluster_settings(redis_cluster), follow=False)
    try:
        redis_cluster_client.set(keys.active, second)  # another tool moved the pointer anyway
        assert await ranker.refresh() is False
        assert ranker.active_versions()[0] == first
    finally:
        await ranker.close()


async def test_a_value_corrupted_after_loading_is_a_clear_error(
    cluster_publisher, redis_cluster_client, redis_cluster, pipeline_run, release_ids
) -> None:
    user, items = release_ids
    release = cluster_publisher.publish(pipeline_run.release_dir)
    ranker = await Ranker.open(cluster_settings(redis_cluster), follow=False)
    try:
        redis_cluster_client.set(cluster_publisher.keys.item(release, items[0]), b"garbage")
        with pytest.raises(CorruptFeatures, match=release):
            await ranker.rank(RankQuery(user, items[:3]))
        assert len((await ranker.rank(RankQuery(user, items[1:4]))).scores) == 3
    finally:
        await ranker.close()


def move_slot_of(cluster: LocalRedisCluster, key: str) -> int:
    """Reshard `key`'s slot, keys included, to another master (the steps `redis-cli --cluster
    reshard` takes); returns the new master's port."""
    slot = key_slot(key.encode())
    source = cluster.master_of(key)
    target = next(node for node in cluster.nodes if node is not source)
    clients = {node.port: redis.Redis(port=node.port) for node in cluster.nodes}
    ids = {port: c.execute_command("CLUSTER", "MYID").decode() for port, c in clients.items()}
    src, dst = clients[source.port], clients[target.port]
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
    while moving := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moving)
    for client in clients.values():
        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
        client.close()
    return target.port


async def test_reads_stay_right_when_a_slot_moves_under_the_service(
    cluster_publisher, redis_cluster, pipeline_run, release_ids
) -> None:
    """The service's slot map is stale: the node script refuses the moved key, that request is
    read per slot (following the redirection), and the map is right again for the next one."""
    user, items = release_ids
    query = RankQuery(user, items)
    release = cluster_publisher.publish(pipeline_run.release_dir)
    ranker = await Ranker.open(cluster_settings(redis_cluster), follow=False)
    try:
        before = await ranker.rank(query)
        moved = cluster_publisher.keys.item(release, items[0])
        new_port = move_slot_of(redis_cluster, moved)
        assert redis_cluster.master_of(moved).port == new_port
        assert (await ranker.rank(query)).scores == before.scores
        reads = ranker._active.features.mget
        assert reads.scripted  # a moved slot does not turn the per-node reads off
        slot_map = reads.client.nodes_manager
        assert slot_map.get_node_from_slot(key_slot(moved.encode())).port == new_port
        assert (await ranker.rank(query)).scores == before.scores
    finally:
        await ranker.close()


async def test_a_cluster_that_refuses_scripts_is_read_one_mget_per_slot(
    cluster_publisher, redis_cluster, pipeline_run, release_ids
) -> None:
    """An ACL without scripting (some managed clusters): the first refusal switches the reads to
    redis-py's per-slot MGETs, with the same answers."""
    user, items = release_ids
    query = RankQuery(user, items)
    cluster_publisher.publish(pipeline_run.release_dir)
    acl = ["ACL", "SETUSER", "noscripts", "on", ">pw", "~*", "&*", "+@all", "-@scripting"]
    nodes = [redis.Redis(port=node.port) for node in redis_cluster.nodes]
    for node in nodes:
        node.execute_command(*acl)
    settings = cluster_settings(redis_cluster)
    limited = settings.model_copy(
        update={"redis_url": settings.redis_url.replace("://", "://noscripts:pw@")}
    )
    full, restricted = await Ranker.open(settings, follow=False), None
    try:
        restricted = await Ranker.open(limited, follow=False)
        assert restricted.is_ready()
        assert (await restricted.rank(query)).scores == (await full.rank(query)).scores
        assert restricted._active.features.mget.scripted is False
    finally:
        await full.close()
        if restricted is not None:
            await restricted.close()
        for node in nodes:
            node.execute_command("ACL", "DELUSER", "noscripts")
            node.close()
