"""ZooKeeper at scale: what 100,000 hosted videos and 1,000 RTMS nodes cost.

    .venv/bin/python -m bench.zk_scale                      # 100,000 videos, 1,000 nodes
    .venv/bin/python -m bench.zk_scale --videos 20000 --nodes 200 --json out.json

One ZooKeeper server (this machine has two cores; an ensemble's members would
share them) is started fresh. The simulated nodes are this process writing what
RTMS nodes write (``/hosted/{video}/{node}``, ``/nodes/rtms/{node}``), as
persistent znodes so the writer can pipeline them; a real node's are ephemeral,
which costs the ensemble the same reads and watches. The readers are the code a
dispatcher runs (``RoutingTable``, ``NodeDirectory``), each in a process of its
own, so their CPU and memory are theirs alone.

1. **Registration**: every video hosted by one node (the hot ones by several),
   created as fast as one pipelined session can.
2. **A dispatcher's table**: a fresh ``RoutingTable`` loads it; its time, RSS and
   CPU, and the server's watch count (``mntr``).
3. **Table updates**: ``--churn`` videos start (a node hosts them) at ``--churn-rate``
   per second while the table is loaded; the CPU the reader spends per update and
   how long each takes to reach its table.
4. **Load reports, as nodes wrote them before this was measured**: every node
   rewrites its ``/nodes/rtms/{node}`` record (with ``--report-videos`` entries of
   viewers per video) every ``--report-interval`` seconds, for ``--duration``
   seconds, while one ``NodeDirectory`` watches them: the server's CPU, the reader's
   CPU and the bytes each watcher reads per second. Every RTMS node, dispatcher and
   comment service runs such a watcher, so the ensemble's cost is that times their
   number (derived). It did not hold; nodes now rewrite their records only when they
   say something new and put viewers per video in Redis: ``bench.load_reports``
   measures that.

Everything stops by itself; only loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import procstat

ROOT = "/zkscale"


def mntr(port: int) -> dict[str, str]:
    """ZooKeeper's ``mntr`` four-letter word as a dict."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"mntr")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    out = {}
    for line in data.decode().splitlines():
        key, _, value = line.partition("\t")
        out[key] = value
    return out


def report(node: int, videos: int) -> bytes:
    """A load report as an RTMS node writes it, with ``videos`` entries."""
    return orjson.dumps(
        {
            "sse_url": f"https://rtms-{node}.example.com",
            "grpc": f"10.0.{node // 250}.{node % 250}:9801",
            "metrics": f"http://10.0.{node // 250}.{node % 250}:9900/metrics",
            "connections": 40_000 + node,
            "videos": videos,
            "draining": False,
            "viewers_by_video": {f"video-{node}-{i:04d}": 400 - i for i in range(videos)},
            "viral_videos": [],
        }
    )


# -- the reader processes --------------------------------------------------------------


async def read_table(zk_hosts: str, expect: int, churn_prefix: str, churn: int) -> None:
    """A dispatcher's routing table: load it, then watch ``churn`` videos arrive."""
    from livecomments.coord.client import ZK
    from livecomments.coord.mirror import RoutingTable

    rss0, cpu0 = procstat.rss_kb(os.getpid()), time.process_time()
    zk = ZK(zk_hosts, ROOT, timeout=120.0, session_timeout=30.0)
    await zk.start()
    table = RoutingTable(zk)
    started = time.time()
    await table.start()
    while len(table.videos) < expect:  # noqa: ASYNC110 (the table has no event to wait on)
        await asyncio.sleep(0.01)
    loaded = {
        "load_s": time.time() - started,
        "cpu_s": time.process_time() - cpu0,
        "rss_kb": procstat.rss_kb(os.getpid()) - rss0,
        "videos": len(table.videos),
    }
    print(json.dumps({"loaded": loaded}), flush=True)
    cpu1 = time.process_time()
    seen: dict[str, float] = {}
    pending = [f"{churn_prefix}{i:06d}" for i in range(churn)]
    deadline = time.time() + 300
    while pending and time.time() < deadline:
        videos, now = table.videos, time.time()
        arrived = [name for name in pending[:50] if name in videos]  # they arrive in order
        for name in arrived:
            seen[name] = now
        if arrived:
            pending = [name for name in pending if name not in seen]
        await asyncio.sleep(0.005)
    print(json.dumps({"churn": {"cpu_s": time.process_time() - cpu1, "seen": seen}}), flush=True)
    await zk.stop()


async def read_nodes(zk_hosts: str, seconds: float) -> None:
    """A node directory (what every process of the cluster keeps) for ``seconds``."""
    from livecomments.coord.client import ZK
    from livecomments.coord.mirror import NodeDirectory

    zk = ZK(zk_hosts, ROOT, timeout=60.0, session_timeout=30.0)
    await zk.start()
    directory = NodeDirectory(zk, zk.paths.rtms_nodes)
    await directory.start()
    changes = 0

    def changed() -> None:
        nonlocal changes
        changes += 1

    directory.add_listener(changed)
    print(json.dumps({"ready": len(directory.view(lambda d: d))}), flush=True)
    cpu0, rss0 = time.process_time(), procstat.rss_kb(os.getpid())
    await asyncio.sleep(seconds)
    print(
        json.dumps(
            {
                "nodes": {
                    "cpu_s": time.process_time() - cpu0,
                    "changes": changes,
                    "rss_kb": procstat.rss_kb(os.getpid()),
                    "rss0_kb": rss0,
                }
            }
        ),
        flush=True,
    )
    await zk.stop()


# -- the writer (this process) --------------------------------------------------------


def pipelined(client: Any, ops: list[tuple[str, bytes]], window: int = 2000) -> float:
    """Create every (path, data) with at most ``window`` in flight; the seconds it took."""
    started = time.time()
    pending: list[Any] = []
    for path, data in ops:
        pending.append(client.create_async(path, data))
        if len(pending) >= window:
            for result in pending:
                result.get(timeout=60)
            pending.clear()
    for result in pending:
        result.get(timeout=60)
    return time.time() - started


def spawn_reader(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.zk_scale", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def next_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    deadline = time.time() + timeout
    assert proc.stdout is not None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the reader process ended early")
        if line.startswith("{"):
            return dict(json.loads(line))
    raise RuntimeError("no answer from the reader in time")


def run(options: argparse.Namespace) -> dict[str, Any]:
    from kazoo.client import KazooClient

    from livecomments.cli.launcher import free_port, start_zookeeper, stop_all, wait_zookeeper
    from livecomments.coord.paths import Paths

    paths = Paths(ROOT)
    results: dict[str, Any] = {
        "options": {k: v for k, v in vars(options).items() if k not in ("json", "role")}
    }
    with tempfile.TemporaryDirectory(prefix="zkscale-") as tmp:
        port = free_port()
        zk_proc = start_zookeeper(Path(tmp), [port], heap_mb=options.heap_mb)
        try:
            wait_zookeeper([zk_proc])
            hosts = f"127.0.0.1:{port}"
            client = KazooClient(hosts=hosts, timeout=30)
            client.start(timeout=30)
            for path in (paths.hosted, paths.rtms_nodes):
                client.ensure_path(path)
            pipelined(client, [(bucket, b"") for bucket in paths.hosted_buckets()])
            videos, nodes = options.videos, options.nodes

            # 1. registration (the real layout: paths.hosted_by)
            parents = [(paths.hosted_video(f"video-{v:06d}"), b"") for v in range(videos)]
            hosts_of = {v: [v % nodes] for v in range(videos)}
            for v in range(min(options.hot, videos)):  # the hot ones on every 10th node
                hosts_of[v] = list(range(0, nodes, 10))
            children = [
                (paths.hosted_by(f"video-{v:06d}", f"node-{n:04d}"), b"")
                for v, ns in hosts_of.items()
                for n in ns
            ]
            zk_cpu0 = procstat.cpu_seconds(zk_proc.pid)
            took = pipelined(client, parents) + pipelined(client, children)
            registered = {
                "znodes": len(parents) + len(children),
                "seconds": took,
                "creates_per_s": (len(parents) + len(children)) / took,
                "zk_cpu_s": procstat.cpu_seconds(zk_proc.pid) - zk_cpu0,
                "zk_rss_kb": procstat.rss_kb(zk_proc.pid),
                "mntr": {
                    k: v
                    for k, v in mntr(port).items()
                    if k in ("zk_znode_count", "zk_approximate_data_size", "zk_watch_count")
                },
            }
            results["registration"] = registered
            print("registration:", json.dumps(registered), flush=True)

            # 2. a dispatcher's table, 3. table updates
            churn, prefix = options.churn, "churn-"
            reader = spawn_reader(
                ["table", "--zk", hosts, "--expect", str(videos), "--churn", str(churn)]
            )
            loaded = next_json(reader, 600)["loaded"]
            watches = mntr(port)
            loaded["zk_watch_count"] = int(watches["zk_watch_count"])
            loaded["zk_rss_kb"] = procstat.rss_kb(zk_proc.pid)
            results["table"] = loaded
            print("table:", json.dumps(loaded), flush=True)
            created: dict[str, float] = {}
            zk_cpu0 = procstat.cpu_seconds(zk_proc.pid)
            gap = 1.0 / options.churn_rate
            started = time.time()
            for i in range(churn):
                name = f"{prefix}{i:06d}"
                due = started + i * gap
                time.sleep(max(0.0, due - time.time()))
                client.create(paths.hosted_by(name, f"node-{i % nodes:04d}"), makepath=True)
                created[name] = time.time()
            churned = next_json(reader, 600)["churn"]
            reader.wait(30)
            lags = sorted(churned["seen"][n] - created[n] for n in created if n in churned["seen"])
            updates = {
                "updates": churn,
                "rate_per_s": options.churn_rate,
                "seen": len(lags),
                "reader_cpu_ms_per_update": 1000 * churned["cpu_s"] / churn,
                "zk_cpu_ms_per_update": 1000
                * (procstat.cpu_seconds(zk_proc.pid) - zk_cpu0)
                / churn,
                "lag_p50_ms": 1000 * lags[len(lags) // 2] if lags else None,
                "lag_p99_ms": 1000 * lags[int(len(lags) * 0.99)] if lags else None,
                # What one update makes a reader re-read: the list of its bucket's videos.
                "children_list_bytes": sum(len(f"video-{v:06d}") + 4 for v in range(videos))
                // len(paths.hosted_buckets()),
            }
            results["updates"] = updates
            print("updates:", json.dumps(updates), flush=True)

            # 4. load reports
            payloads = [report(n, options.report_videos) for n in range(nodes)]
            pipelined(
                client, [(f"{ROOT}/nodes/rtms/node-{n:04d}", payloads[n]) for n in range(nodes)]
            )
            watcher = spawn_reader(["nodes", "--zk", hosts, "--seconds", str(options.duration)])
            next_json(watcher, 300)
            writes_per_s = nodes / options.report_interval
            zk_cpu0, before = procstat.cpu_seconds(zk_proc.pid), mntr(port)
            started, writes = time.time(), 0
            while time.time() < started + options.duration - 0.5:
                due = started + writes / writes_per_s
                time.sleep(max(0.0, due - time.time()))
                n = writes % nodes
                client.set_async(paths.rtms_node(f"node-{n:04d}"), payloads[n])
                writes += 1
            watched = next_json(watcher, 120)["nodes"]
            watcher.wait(30)
            seconds = time.time() - started
            after = mntr(port)
            size = sum(len(p) for p in payloads) / nodes
            reports = {
                "nodes": nodes,
                "report_bytes": round(size),
                "writes_per_s": writes / seconds,
                "zk_cpu_per_s": (procstat.cpu_seconds(zk_proc.pid) - zk_cpu0) / seconds,
                "zk_packets_sent_per_s": (
                    int(after["zk_packets_sent"]) - int(before["zk_packets_sent"])
                )
                / seconds,
                "watcher_cpu_per_s": watched["cpu_s"] / seconds,
                "watcher_changes_per_s": watched["changes"] / seconds,
                "watcher_read_bytes_per_s": size * writes / seconds,
            }
            watchers = nodes + options.dispatchers + options.comment_services
            reports["derived_cluster"] = {
                "watchers": watchers,
                "notifications_per_s": reports["writes_per_s"] * watchers,
                "read_bytes_per_s": reports["watcher_read_bytes_per_s"] * watchers,
                "watcher_cpu_per_process": reports["watcher_cpu_per_s"],
            }
            results["load_reports"] = reports
            print("load reports:", json.dumps(reports), flush=True)
            client.stop()
        finally:
            stop_all([zk_proc])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role")
    table = sub.add_parser("table")
    table.add_argument("--zk", required=True)
    table.add_argument("--expect", type=int, required=True)
    table.add_argument("--churn", type=int, required=True)
    nodes = sub.add_parser("nodes")
    nodes.add_argument("--zk", required=True)
    nodes.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--hot", type=int, default=10, help="videos hosted on every 10th node")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--churn", type=int, default=1000)
    parser.add_argument("--churn-rate", type=float, default=50.0)
    parser.add_argument("--report-videos", type=int, default=100)
    parser.add_argument("--report-interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--dispatchers", type=int, default=20)
    parser.add_argument("--comment-services", type=int, default=50)
    parser.add_argument("--heap-mb", type=int, default=2048)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    if options.role == "table":
        asyncio.run(read_table(options.zk, options.expect, "churn-", options.churn))
        return
    if options.role == "nodes":
        asyncio.run(read_nodes(options.zk, options.seconds))
        return
    results = run(options)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
