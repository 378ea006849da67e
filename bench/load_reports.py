"""What spreading load and viewer counts costs at 1,000 RTMS nodes, as nodes now do it.

    .venv/bin/python -m bench.load_reports                  # ~3 min
    .venv/bin/python -m bench.load_reports --json bench/results/FILE.json

Before, every node rewrote its ZooKeeper record (its 100 busiest videos' viewers)
every 5 s, and every process of the cluster read each rewrite (``bench.zk_scale``,
"load reports"). Now a node rewrites its record only when it says something new
(``coord.records.worth_publishing``), lists only its busy videos, and writes each
video's viewers to Redis (``kernel.viewers``). Three parts:

1. **How often records are rewritten** (no servers): ``--nodes`` simulated nodes of
   ``--node-viewers`` viewers each, over ``--steps`` load-report intervals. Viewers
   leave and arrive at random (a mean watch of ``--watch-s``); a node's viewers sit in
   busy videos (Zipf sizes, ``--busy-share`` of them) and small ones; each busy video
   also drifts by a random ``--drift`` per interval (streams rise and fall). Each
   interval every node builds its record with the node's own functions
   (``busy_videos``, ``worth_publishing``) and counts a write when it would publish.
2. **What a rewrite costs** (ZooKeeper): the simulated records written at the rate
   part 1 found, and at the old rate (every node every interval) for comparison,
   while one ``NodeDirectory`` (what every process keeps) watches: its CPU per
   second and per rewrite, and the ensemble's (derived: times every watcher).
3. **What the Redis counts cost** (Redis): ``--redis-nodes`` nodes, each serving
   ``--node-videos`` videos, publish with the real ``ViewerCounts`` every interval
   (a ``--changed`` share of their counts changed), back to back: Redis's CPU per
   node-interval and per video, the node's own CPU per call, and the whole
   cluster's Redis load at 1,000 nodes (derived).

Everything stops by itself; only loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.zk_scale import ROOT, mntr, next_json, pipelined, spawn_reader
from livecomments.coord.records import RtmsNode, busy_floor, busy_videos, worth_publishing

SPREAD_VIEWERS = 5000  # the default: a video is listed busy from 500 viewers on a node
BUSY_CAP = 100  # livecomments.rtms.server.BUSY_VIDEOS


def _churn(rng: random.Random, n: int, p: float) -> int:
    """A count after one interval of viewers leaving (each with ``p``) and as many
    arriving on average: a normal approximation of the two."""
    if n <= 0:
        return 0
    return max(0, round(n + rng.gauss(0.0, math.sqrt(2 * n * p))))


class SimNode:
    """One node's viewers per video, evolving one interval at a time."""

    def __init__(self, index: int, options: argparse.Namespace, rng: random.Random) -> None:
        self.index = index
        self.rng = rng
        busy_viewers = int(options.node_viewers * options.busy_share)
        weights = [1 / (k + 1) for k in range(options.busy_videos)]
        total = sum(weights)
        self.counts = {
            f"hot-{index}-{k}": max(1, round(busy_viewers * w / total))
            for k, w in enumerate(weights)
        }
        # The small videos (never busy) only add to the node's totals: one aggregate.
        self.small = options.node_viewers - busy_viewers
        self.small_videos = max(1, self.small // options.small_size)
        self.record: RtmsNode | None = None
        self.writes = 0

    def step(self, p_leave: float, drift: float) -> None:
        for video, n in self.counts.items():
            n = _churn(self.rng, n, p_leave)
            self.counts[video] = max(0, round(n * (1 + self.rng.gauss(0.0, drift))))
        self.small = _churn(self.rng, self.small, p_leave)

    def report(self) -> RtmsNode:
        listed = self.record.viewers_by_video if self.record is not None else {}
        live = {v: n for v, n in self.counts.items() if n}
        return RtmsNode(
            sse_url=f"https://rtms-{self.index}.example.com",
            grpc=f"10.0.{self.index // 250}.{self.index % 250}:9801",
            metrics=f"http://10.0.{self.index // 250}.{self.index % 250}:9900/metrics",
            boot=f"{self.index:012x}",
            connections=sum(live.values()) + self.small,
            videos=len(live) + self.small_videos,
            viewers_by_video=busy_videos(live, listed, busy_floor(SPREAD_VIEWERS), BUSY_CAP),
        )

    def tick(self) -> RtmsNode | None:
        """The record this node writes this interval, or None."""
        info = self.report()
        if worth_publishing(self.record, info, SPREAD_VIEWERS):
            self.record = info
            self.writes += 1
            return info
        return None


def simulate(options: argparse.Namespace, drift: float) -> dict[str, Any]:
    rng = random.Random(options.seed)
    nodes = [SimNode(i, options, rng) for i in range(options.nodes)]
    for node in nodes:
        node.tick()  # the join
    p_leave = options.interval / options.watch_s
    writes = 0
    for _ in range(options.steps):
        for node in nodes:
            node.step(p_leave, drift)
            writes += node.tick() is not None
    seconds = options.steps * options.interval
    sizes = [len(n.record.encode()) for n in nodes if n.record is not None]
    return {
        "drift": drift,
        "writes_per_s": writes / seconds,
        "writes_per_node_per_min": writes / options.nodes / (seconds / 60),
        "old_writes_per_s": options.nodes / options.interval,
        "record_bytes": round(sum(sizes) / len(sizes)),
        "busy_listed_per_node": sum(len(n.record.viewers_by_video) for n in nodes if n.record)
        / options.nodes,
    }


def measure_zk(
    options: argparse.Namespace, records: list[bytes], rates: list[float]
) -> list[dict[str, Any]]:
    """One ``NodeDirectory`` watching ``records`` rewritten at each of ``rates``."""
    from kazoo.client import KazooClient

    from livecomments.cli.launcher import free_port, start_zookeeper, stop_all, wait_zookeeper
    from livecomments.coord.paths import Paths

    paths = Paths(ROOT)
    out = []
    with tempfile.TemporaryDirectory(prefix="loadreports-") as tmp:
        port = free_port()
        zk_proc = start_zookeeper(Path(tmp), [port], heap_mb=512)
        try:
            wait_zookeeper([zk_proc])
            hosts = f"127.0.0.1:{port}"
            client = KazooClient(hosts=hosts, timeout=30)
            client.start(timeout=30)
            client.ensure_path(paths.rtms_nodes)
            names = [paths.rtms_node(f"node-{n:04d}") for n in range(len(records))]
            pipelined(client, list(zip(names, records, strict=True)))
            for rate in rates:
                watcher = spawn_reader(
                    ["nodes", "--zk", hosts, "--seconds", str(options.zk_seconds)]
                )
                next_json(watcher, 300)
                zk_cpu0, before = procstat.cpu_seconds(zk_proc.pid), mntr(port)
                started, writes = time.time(), 0
                while time.time() < started + options.zk_seconds - 0.5:
                    due = started + writes / rate
                    time.sleep(max(0.0, due - time.time()))
                    n = writes % len(records)
                    client.set_async(names[n], records[n])
                    writes += 1
                watched = next_json(watcher, 120)["nodes"]
                watcher.wait(30)
                seconds = time.time() - started
                after = mntr(port)
                cpu = watched["cpu_s"] / seconds
                row = {
                    "writes_per_s": writes / seconds,
                    "record_bytes": round(sum(map(len, records)) / len(records)),
                    "watcher_cpu_per_s": cpu,
                    "watcher_cpu_ms_per_write": 1000 * watched["cpu_s"] / max(1, writes),
                    "zk_cpu_per_s": (procstat.cpu_seconds(zk_proc.pid) - zk_cpu0) / seconds,
                    "zk_packets_sent_per_s": (
                        int(after["zk_packets_sent"]) - int(before["zk_packets_sent"])
                    )
                    / seconds,
                }
                out.append(row)
                print("zookeeper:", json.dumps(row), flush=True)
            client.stop()
        finally:
            stop_all([zk_proc])
    return out


async def measure_redis(options: argparse.Namespace) -> dict[str, Any]:
    from redis.asyncio import Redis

    from livecomments.cli.launcher import free_port, start_redis, stop_all
    from livecomments.kernel.redis.keys import Keys
    from livecomments.kernel.viewers import ViewerCounts

    with tempfile.TemporaryDirectory(prefix="loadreports-redis-") as tmp:
        port = free_port()
        proc = start_redis(Path(tmp), port)
        try:
            redis = Redis(port=port)
            await redis.ping()
            boots = {f"node-{n}": f"b{n}" for n in range(options.redis_nodes)}
            nodes = [(name, ViewerCounts(redis, Keys("lc:"), boots.get)) for name in boots]
            rng = random.Random(options.seed)
            # A node's videos; nodes 2m and 2m+1 serve the same ones, so each hash
            # has two fields to read and add up.
            videos = {
                name: {
                    f"video-{n // 2}-{k}": 1 + rng.randrange(50) for k in range(options.node_videos)
                }
                for n, name in enumerate(boots)
            }
            for name, counts in nodes:  # the first publish writes everything
                await counts.publish(name, boots[name], videos[name])
            redis_cpu0, own0 = procstat.cpu_seconds(proc.pid), time.process_time()
            calls, started = 0, time.monotonic()
            for _ in range(options.redis_rounds):
                for name, counts in nodes:
                    mine = videos[name]
                    for video in rng.sample(sorted(mine), int(len(mine) * options.changed)):
                        mine[video] = max(1, mine[video] + rng.choice((-1, 1)))
                    await counts.publish(name, boots[name], mine)
                    calls += 1
            seconds = time.monotonic() - started
            redis_cpu = procstat.cpu_seconds(proc.pid) - redis_cpu0
            own = time.process_time() - own0
            await redis.aclose()
        finally:
            stop_all([proc])
    per_call = redis_cpu / calls
    cluster_calls_per_s = options.nodes / options.viewer_interval
    return {
        "node_videos": options.node_videos,
        "changed_share": options.changed,
        "calls": calls,
        "seconds": seconds,
        "redis_cpu_ms_per_call": 1000 * per_call,
        "redis_cpu_us_per_video": 1e6 * per_call / options.node_videos,
        "node_cpu_ms_per_call": 1000 * own / calls,
        "derived_cluster": {
            "nodes": options.nodes,
            "calls_per_s": cluster_calls_per_s,
            "redis_cores": per_call * cluster_calls_per_s,
            "node_core_share": own / calls / options.viewer_interval,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--node-viewers", type=int, default=18000, help="max_viewers")
    parser.add_argument("--busy-share", type=float, default=0.5)
    parser.add_argument("--busy-videos", type=int, default=20)
    parser.add_argument("--small-size", type=int, default=20)
    parser.add_argument("--watch-s", type=float, default=600.0)
    parser.add_argument("--drifts", default="0,0.01,0.03")
    parser.add_argument("--interval", type=float, default=5.0, help="load_report_interval")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--zk-seconds", type=float, default=20.0)
    parser.add_argument("--redis-nodes", type=int, default=20)
    parser.add_argument("--node-videos", type=int, default=1000)
    parser.add_argument("--changed", type=float, default=0.2)
    parser.add_argument("--redis-rounds", type=int, default=10)
    parser.add_argument("--viewer-interval", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    results: dict[str, Any] = {"options": {k: v for k, v in vars(options).items() if k != "json"}}

    results["rule"] = []
    for drift in (float(d) for d in options.drifts.split(",")):
        row = simulate(options, drift)
        results["rule"].append(row)
        print("rule:", json.dumps(row), flush=True)

    sample = [SimNode(i, options, random.Random(i)) for i in range(options.nodes)]
    records = [n.report().encode() for n in sample]

    def as_before(node: SimNode) -> bytes:
        """The record nodes wrote before: every count, its 100 busiest videos."""
        top = sorted(node.counts.items(), key=lambda kv: -kv[1])
        top += [(f"small-{node.index}-{k}", node.small // node.small_videos) for k in range(100)]
        now = node.report()
        return RtmsNode(
            sse_url=now.sse_url, grpc=now.grpc, metrics=now.metrics,
            connections=now.connections, videos=now.videos, viewers_by_video=dict(top[:100]),
        ).encode()  # fmt: skip

    old = [as_before(n) for n in sample]
    busiest = max(row["writes_per_s"] for row in results["rule"])
    results["zookeeper"] = {
        "old": measure_zk(options, old, [options.nodes / options.interval])[0],
        "new": measure_zk(options, records, [max(1.0, busiest)])[0],
    }
    results["redis"] = asyncio.run(measure_redis(options))
    print("redis:", json.dumps(results["redis"]), flush=True)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
