"""The documented longer load run, end to end: publish an exported release to a fresh embedded
store, start `reaseq serve` on free ports, load it with one locust process per transport, stop
the server and print one line per user class (requests, failures, p50/p95/p99, req/s).

    .venv/bin/python loadtest/long_run.py \\
        /work/gbr-exp/amazon14-office/exports/amazon14-office-id-text-20261127221918-23f74810 \\
        --users 32 --run-time 5m --out /tmp/reaseq-load

One locust process per transport, not both classes in one, so the HTTP users' CPU does not
delay the gRPC users' I/O callbacks, which grpc's gevent mode runs through the same hub. Even so,
read gRPC latency from `reaseq bench` where CPU is short: see the locustfile's docstring.
Extra arguments after `--` go to both locust processes (e.g. `-- --candidates 200`). Exits 1
if any request failed or locust reported an error.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from reaseq.offline.publish import EmbeddedPublisher

HERE = Path(__file__).resolve().parent
CLASSES = ("HttpRankUser", "GrpcRankUser")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Until /readyz answers 200: the ports open before the release is loaded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"reaseq serve exited {server.returncode}; see its log")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no release loaded in {timeout_s} s")


def summary(csv_prefix: Path) -> dict[str, str]:
    """The Aggregated row of one locust process's stats CSV (its last write, <= 1 s old)."""
    with csv_prefix.with_name(f"{csv_prefix.name}_stats.csv").open() as f:
        return next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")


def server_cpu_s(pid: int) -> float | None:
    """CPU seconds the server used so far (psutil comes with locust), for the run's context."""
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except Exception:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("release", type=Path, help="an exported release folder")
    parser.add_argument("--users", type=int, default=32, help="in all, split over the classes")
    parser.add_argument("--spawn-rate", type=float, default=8.0, help="users started per second")
    parser.add_argument("--run-time", default="5m", help="locust's -t, e.g. 2m, 300s")
    parser.add_argument("--out", type=Path, default=Path("/tmp/reaseq-load"), help="work folder")
    parser.add_argument("locust_args", nargs="*", help="after --: more locust options")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "releases"
    release = EmbeddedPublisher(store).publish(args.release)
    http_port, grpc_port = free_port(), free_port()
    env = os.environ | {
        "REASEQ_STORE": "embedded",
        "REASEQ_RELEASES_DIR": str(store),
        "REASEQ_HOST": "127.0.0.1",
        "REASEQ_HTTP_PORT": str(http_port),
        "REASEQ_GRPC_PORT": str(grpc_port),
    }
    reaseq = Path(sys.executable).with_name("reaseq")
    with (args.out / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [str(reaseq), "serve"], env=env, cwd=args.out, stdout=log, stderr=log
        )
    locusts: dict[str, subprocess.Popen[bytes]] = {}
    try:
        base_url = f"http://127.0.0.1:{http_port}"
        wait_ready(base_url, server)
        print(f"serving {release} on {base_url} and 127.0.0.1:{grpc_port}", flush=True)
        cpu_start, started = server_cpu_s(server.pid), time.monotonic()
        per_class = max(1, args.users // len(CLASSES))
        for name in CLASSES:
            command = [
                *(sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py")),
                *("--headless", "--only-summary", "--exit-code-on-error", "1"),
                *("-u", str(per_class), "-r", str(args.spawn_rate / len(CLASSES))),
                *("-t", args.run_time, "--csv", str(args.out / name)),
                *("-H", base_url, "--grpc-target", f"127.0.0.1:{grpc_port}"),
                *("--release-dir", str(store), *args.locust_args, name),
            ]
            with (args.out / f"{name}.log").open("wb") as out:
                locusts[name] = subprocess.Popen(command, cwd=args.out, stdout=out, stderr=out)
        codes = {name: proc.wait() for name, proc in locusts.items()}
        cpu_end, seconds = server_cpu_s(server.pid), time.monotonic() - started
    finally:
        for proc in locusts.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    failed = False
    print(
        f"{'class':<14}{'requests':>10}{'failures':>10}{'p50':>7}{'p95':>7}{'p99':>7}{'req/s':>8}"
    )
    for name, code in codes.items():
        row = summary(args.out / name)
        failed |= code != 0 or row["Failure Count"] != "0"
        print(
            f"{name:<14}{row['Request Count']:>10}{row['Failure Count']:>10}{row['50%']:>7}"
            f"{row['95%']:>7}{row['99%']:>7}{float(row['Requests/s']):>8.1f}  (exit {code})"
        )
    if cpu_start is not None and cpu_end is not None:
        print(f"server CPU: {(cpu_end - cpu_start) / seconds:.0%} of one core over {seconds:.0f} s")
    print(f"logs and locust CSVs: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
