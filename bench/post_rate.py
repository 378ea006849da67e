"""Accepted comments per second through one comment-service process.

    .venv/bin/python -m bench.post_rate --seconds 10 --concurrency 64

Starts its own system (embedded store, Redis, ZooKeeper, one dispatcher, one
RTMS node, one comment service, plain HTTP, limits lifted), then keeps
``--concurrency`` POSTs in flight from several users over ``--videos`` videos
for ``--seconds``, and prints accepted/s, latency percentiles and the CPU
seconds of the comment service and of the store (the embedded store is a
large part of the write path's cost here; production uses mongos).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from livecomments.cluster import Backends, Cluster

LIFTED = {
    "LIVECOMMENTS_POST_LIMIT_USER": "1000000/1",
    "LIVECOMMENTS_POST_LIMIT_IP": "1000000/1",
    "LIVECOMMENTS_REGISTER_LIMIT_IP": "1000000/1",
    "LIVECOMMENTS_DUPLICATE_WINDOW": "0",
    "LIVECOMMENTS_LOG_LEVEL": "WARNING",
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


async def run(base: str, seconds: float, concurrency: int, videos: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        tokens = []
        for n in range(16):
            async with http.post(
                f"{base}/api/auth/register",
                json={"username": f"bench_{n}_{time.time_ns() % 10**8}", "password": "bench-pass"},
            ) as r:
                tokens.append((await r.json())["token"])
        latencies: list[float] = []
        failed = 0
        counter = itertools.count()
        stop_at = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal failed
            while time.monotonic() < stop_at:
                n = next(counter)
                body = orjson.dumps({"text": f"comment number {n}"})
                t0 = time.perf_counter()
                async with http.post(
                    f"{base}/api/videos/bench{n % videos}/comments",
                    data=body,
                    headers={
                        "Authorization": f"Bearer {tokens[n % len(tokens)]}",
                        "Content-Type": "application/json",
                    },
                ) as r:
                    await r.read()
                    if r.status == 201:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        failed += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    ordered = sorted(latencies) or [0.0]
    return {
        "accepted": len(latencies),
        "failed": failed,
        "seconds": round(elapsed, 2),
        "accepted_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lc-post-rate-") as tmp:
        run_dir = Path(tmp)
        backends = Backends.start(run_dir / "backends", memory_store=True)
        cluster = Cluster(run_dir, backends, namespace="postrate", tls=False, extra_env=LIFTED)
        try:
            cluster.start(dispatchers=1, rtms=1, comment_services=1)
            comment = cluster.services["comment-1"]
            store = backends.procs["store"]
            before = cpu_seconds(comment.proc.pid), cpu_seconds(store.pid)
            result = asyncio.run(run(comment.url, args.seconds, args.concurrency, args.videos))
            after = cpu_seconds(comment.proc.pid), cpu_seconds(store.pid)
            result["comment_service_cpu_s"] = round(after[0] - before[0], 2)
            result["store_cpu_s"] = round(after[1] - before[1], 2)
        finally:
            cluster.stop()
            backends.stop()
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        for key, value in result.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
