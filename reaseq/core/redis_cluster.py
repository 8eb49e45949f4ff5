"""Redis Cluster: the URL that selects it, its clients, and reads that cost one round per node.

`redis-cluster://host:port[,host:port...]` (`rediss-cluster://` for TLS; `user:password@` before
the nodes, as in `redis://`) selects redis-py's cluster clients in the service and the publisher;
any node listed lets the client discover the rest. `redis://` URLs keep the single-node client.

Reads. A request's keys (the user's and every candidate's) carry no hash tag, so over a cluster
nearly every key has a slot of its own, and a cluster refuses a multi-key command across slots.
redis-py's `mget_nonatomic` sends one MGET per slot (node pipelines, nodes concurrently) and
parses each reply in Python: about 200 commands for a 200-candidate request, measured ~12x the
single-node MGET. `NodeReads` instead sends one read-only script call per node holding any of
the keys, all nodes at once: the script GETs that node's keys (keys of other slots of the same
node are allowed by the script flag `allow-cross-slot-keys`, Redis 7) and answers one array, as
MGET does. A slot that moved (resharding, failover) makes the script refuse a key it no longer
holds; that request then goes through `mget_nonatomic`, which follows the redirection and
refreshes the client's slot map, so the next request is grouped right again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError

from reaseq.core.keys import KeySchema

log = logging.getLogger("reaseq.redis")

CLUSTER_SCHEMES = {"redis-cluster": False, "rediss-cluster": True}  # scheme -> TLS

# GET each key of this node; a key of a slot the node does not serve is refused (not local).
NODE_READ_SCRIPT = """#!lua flags=no-writes,allow-cross-slot-keys
local values = {}
for i, key in ipairs(ARGV) do values[i] = redis.call('GET', key) end
return values"""


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


@dataclass(frozen=True)
class ClusterAddress:
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_cluster_url(url: str) -> ClusterAddress:
    """`redis-cluster://[user:password@]host:port[,host:port...][/0]`; a clear error otherwise."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (redis-cluster://host:port,...): {url!r}")
    where = f"Redis Cluster URL {scheme}://…"  # never echo a password
    if "?" in rest:
        raise ValueError(f"{where}: takes no query options")
    userinfo, _, hosts = rest.rpartition("@")
    hosts, _, database = hosts.partition("/")
    if database not in ("", "0"):
        raise ValueError(f"{where}: a cluster has database 0 only, got /{database}")
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        host = host.strip("[]")  # [::1]:7000
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{where}: node {part.strip()!r} is not host:port")
        nodes.append((host, int(port)))
    username, _, password = userinfo.partition(":")
    return ClusterAddress(
        tuple(nodes),
        unquote(username) or None,
        unquote(password) or None,
        CLUSTER_SCHEMES[scheme.lower()],
    )


def key_schema(namespace: str, url: str) -> KeySchema:
    """The key names a store at `url` uses (control keys hash-tagged on a cluster)."""
    return KeySchema(namespace, cluster=is_cluster_url(url))


def sync_client(url: str, password: str | None, timeout_s: float) -> redis.Redis | RedisCluster:
    """The publisher's client: single-node or cluster, by the URL's scheme."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, password=password, socket_timeout=timeout_s)
    address = parse_cluster_url(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        username=address.username,
        password=address.password or password,
        ssl=address.tls,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )


def async_cluster_client(url: str, password: str | None, timeout_s: float) -> AsyncRedisCluster:
    """The service's cluster client, with the single-node client's failure behavior: short
    timeouts, and one retry at once (after re-reading the slot map) on a broken connection, so a
    restarted or failed-over master is found again without a restart."""
    address = parse_cluster_url(url)
    return AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in address.nodes],
        username=address.username,
        password=address.password or password,
        ssl=address.tls,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=AsyncRetry(NoBackoff(), retries=1),
        health_check_interval=30,
    )


def mget(client: redis.Redis | RedisCluster, names: Sequence[str | bytes]) -> list[bytes | None]:
    """MGET on either client (the publisher's reads; not on the request path)."""
    if isinstance(client, RedisCluster):
        return client.mget_nonatomic(list(names))
    return client.mget(names)


AsyncMget = Callable[[Sequence[str | bytes]], Awaitable[list]]


def async_mget(client: aioredis.Redis | AsyncRedisCluster) -> AsyncMget:
    """The service's MGET for this client: one MGET, or one concurrent round per node."""
    if isinstance(client, AsyncRedisCluster):
        return NodeReads(client)
    return client.mget


def refuses_scripts(err: ResponseError) -> bool:
    """The cluster will never run the read script: an ACL without scripting, or a Redis older
    than 7 (no EVAL_RO, no script flags). Anything else (a moved slot, a cluster that is down)
    passes, so it must not switch the reads off for good."""
    text = str(err).lower()
    return isinstance(err, NoPermissionError) or any(
        sign in text for sign in ("unknown command", "shebang", "compiling script")
    )


class NodeReads:
    """Values of any keys over a cluster: the keys grouped by the node serving their slot, one
    read-only script call per node, the nodes concurrently (see the module's docstring)."""

    def __init__(self, client: AsyncRedisCluster) -> None:
        self.client = client
        self.scripted = True  # False once the cluster refuses the script (ACL, Redis < 7)

    async def __call__(self, names: Sequence[str | bytes]) -> list:
        if not self.scripted:
            return await self.client.mget_nonatomic(list(names))
        try:
            return await self._per_node(names)
        except RedisConnectionError:
            # a node went away: redis-py's own path re-reads the slot map and retries once
            return await self.client.mget_nonatomic(list(names))
        except ResponseError as err:  # a moved slot, a cluster down, or scripts refused
            if refuses_scripts(err):
                self.scripted = False
                log.warning("the cluster refuses the read script (%s): one MGET per slot now", err)
            return await self.client.mget_nonatomic(list(names))

    async def _per_node(self, names: Sequence[str | bytes]) -> list:
        await self.client.initialize()  # no-op once the slot map is known
        node_of_slot = self.client.nodes_manager.get_node_from_slot
        groups: dict[str, tuple[AsyncClusterNode, list[int], list[bytes]]] = {}
        for index, name in enumerate(names):
            key = name.encode() if isinstance(name, str) else name
            node = node_of_slot(key_slot(key))
            group = groups.get(node.name)
            if group is None:
                group = groups[node.name] = (node, [], [])
            group[1].append(index)
            group[2].append(key)
        values: list = [None] * len(names)

        async def read(node: AsyncClusterNode, indexes: list[int], keys: list[bytes]) -> None:
            replies = await self.client.execute_command(
                "EVAL_RO", NODE_READ_SCRIPT, 0, *keys, target_nodes=node
            )
            for index, value in zip(indexes, replies, strict=True):
                values[index] = value

        await asyncio.gather(*(read(*group) for group in groups.values()))
        return values
