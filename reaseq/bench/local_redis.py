"""Real redis-server processes on free loopback ports: one node, or a Redis Cluster of masters.

The store benchmark starts both itself, and the cluster tests start the cluster through the same
class, so what is measured is what is tested. A cluster node keeps its data in an append-only file
and its identity in nodes.conf, so a node that is killed and started again rejoins with its slots
and keys, like a restarted production master.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
CLUSTER_OK_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: apt-get install -y redis-server")
    return path


def ask(port: int, *words: str, timeout_s: float = 1.0) -> str:
    """One command through redis-cli: its reply as text (raises if the node cannot be reached)."""
    done = subprocess.run(
        [binary("redis-cli"), "-h", HOST, "-p", str(port), *words],
        capture_output=True,
        text=True,
        timeout=timeout_s + 5,
    )
    if done.returncode != 0 or "Could not connect" in done.stdout + done.stderr:
        raise ConnectionError(f"redis on port {port}: {(done.stdout + done.stderr).strip()}")
    return done.stdout


@dataclass
class LocalRedisNode:
    """One redis-server; `cluster` starts it cluster-enabled with its bus on a port of its own
    (port + 10000 may be taken or beyond 65535)."""

    workdir: Path
    cluster: bool = False
    # how long a silent master goes before the others flag it failed (the cluster then refuses
    # commands until it is back); Redis' default 15 s, shorter where tests kill masters
    node_timeout_ms: int = 15000
    port: int = field(default_factory=free_port)
    bus_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def command(self) -> list[str]:
        args = [binary("redis-server"), "--port", str(self.port), "--bind", HOST]
        args += ["--dir", str(self.workdir), "--protected-mode", "no", "--save", ""]
        if not self.cluster:
            return [*args, "--appendonly", "no"]
        return [
            *args,
            "--appendonly",  # a killed master comes back with its keys
            "yes",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            str(self.bus_port),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
        ]

    def start(self) -> LocalRedisNode:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited; see {log.name}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: the node is gone at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class LocalRedisCluster:
    """`masters` cluster-enabled nodes joined by `redis-cli --cluster create`, no replicas."""

    workdir: Path
    masters: int = 3
    node_timeout_ms: int = 15000  # see LocalRedisNode
    nodes: list[LocalRedisNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """What the service and the publisher take: every node, so any one can be the way in."""
        return "redis-cluster://" + ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def start(self) -> LocalRedisCluster:
        try:
            for index in range(self.masters):
                node = LocalRedisNode(self.workdir / f"node{index}", True, self.node_timeout_ms)
                self.nodes.append(node.start())
            addresses = [f"{HOST}:{node.port}" for node in self.nodes]
            create = ["--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
            done = subprocess.run(
                [binary("redis-cli"), *create],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.returncode != 0:
                output = done.stdout + done.stderr
                raise RuntimeError(f"redis-cli {' '.join(create)} failed:\n{output}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout_s: float = CLUSTER_OK_TIMEOUT_S) -> None:
        """Every node reports cluster_state:ok and knows all masters (the gossip has settled)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                infos = [ask(node.port, "cluster", "info") for node in self.nodes]
                if all(
                    "cluster_state:ok" in info and f"cluster_size:{self.masters}" in info
                    for info in infos
                ):
                    return
                last = infos[0]
            except (ConnectionError, subprocess.TimeoutExpired) as err:
                last = str(err)
            time.sleep(0.1)
        raise RuntimeError(f"the cluster is not ok after {timeout_s:.0f} s: {last}")

    def master_of(self, key: str | bytes) -> LocalRedisNode:
        """The node serving `key`'s slot, as the node itself says."""
        name = key.decode() if isinstance(key, bytes) else key
        slot = int(ask(self.nodes[0].port, "cluster", "keyslot", name))
        for node in self.nodes:
            for line in ask(node.port, "cluster", "nodes").splitlines():
                fields = line.split()
                if "myself" not in fields[2]:
                    continue
                for spec in fields[8:]:
                    low, _, high = spec.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return node
        raise RuntimeError(f"no node serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
