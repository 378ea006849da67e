"""Accepted comments per second through one comment-service process.

    .venv/bin/python -m bench.post_rate --seconds 10 --concurrency 64

Starts its own system (embedded store, Redis, ZooKeeper, one dispatcher, one
RTMS node, one comment service, plain HTTP, limits lifted), then keeps
``--concurrency`` POSTs in flight from several users over ``--videos`` videos
for ``--seconds``, and prints accepted/s, latency percentiles and the CPU
seconds of every process over the window (the embedded store is a large part
of the write path's cost here; production uses mongos).

The client is ``wrk`` (Debian package ``wrk``; ``make bench`` installs it) with
a Lua script that varies the video, the user and the text of every POST: a C
client costs ~20 µs of CPU per request, where the Python one (``--client
python``) costs ~300 µs and takes a third of a core from the two the servers
share. "accepted" counts the 201 answers; the store is counted afterwards too.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from livecomments.cli.cluster import Backends, Cluster

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


USERS = 16

# One wrk thread; every request a new text, video and user (so duplicate
# suppression and per-user state are exercised as in real traffic).
WRK_SCRIPT = """
local tokens = {%(tokens)s}
local videos = %(videos)d
local threads = {}
local n = 0
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  created, other = 0, 0
end
function request()
  n = n + 1
  local k = n * 8 + tid
  return wrk.format("POST", "/api/videos/bench" .. (k %% videos) .. "/comments",
    {["Authorization"] = "Bearer " .. tokens[(k %% #tokens) + 1],
     ["Content-Type"] = "application/json"},
    '{"text":"comment number ' .. k .. '"}')
end
function response(status, headers, body)
  if status == 201 then created = created + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local c, o = 0, 0
  for _, t in ipairs(threads) do c = c + t:get("created"); o = o + t:get("other") end
  io.write(string.format("LC created=%%d other=%%d p50=%%.3f p99=%%.3f seconds=%%.3f\\n", c, o,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration / 1e6))
end
"""


async def register(base: str) -> list[str]:
    async with aiohttp.ClientSession() as http:
        tokens = []
        for n in range(USERS):
            async with http.post(
                f"{base}/api/auth/register",
                json={"username": f"bench_{n}_{time.time_ns() % 10**8}", "password": "bench-pass"},
            ) as r:
                tokens.append((await r.json())["token"])
        return tokens


def run_wrk(
    base: str, tokens: list[str], seconds: float, concurrency: int, videos: int, tmp: Path
) -> dict[str, float]:
    script = tmp / "post.lua"
    quoted = ", ".join(f'"{t}"' for t in tokens)
    script.write_text(WRK_SCRIPT % {"tokens": quoted, "videos": videos})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            script,
            base,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = re.search(
        r"LC created=(\d+) other=(\d+) p50=([\d.]+) p99=([\d.]+) seconds=([\d.]+)", out.stdout
    )
    if m is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}{out.stderr}")
    created, other, p50, p99, elapsed = m.groups()
    return {
        "accepted": int(created),
        "failed": int(other),
        "seconds": round(float(elapsed), 2),
        "accepted_per_s": round(int(created) / float(elapsed), 1),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "client_cpu_s": round(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2
        ),
    }


async def run_python(
    base: str, tokens: list[str], seconds: float, concurrency: int, videos: int
) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
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
    after = resource.getrusage(resource.RUSAGE_SELF)
    ordered = sorted(latencies) or [0.0]
    return {
        "accepted": len(latencies),
        "failed": failed,
        "seconds": round(elapsed, 2),
        "accepted_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1),
        "client_cpu_s": round(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2
        ),
    }


async def stored(mongo_uri: str, db: str, videos: int) -> int:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_uri)
    try:
        coll = client[db]["comments"]
        return await coll.count_documents(
            {"video_id": {"$in": [f"bench{v}" for v in range(videos)]}}
        )
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument(
        "--client",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="wrk (C, cheap; the default when installed) or an aiohttp client",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lc-post-rate-") as tmp:
        run_dir = Path(tmp)
        backends = Backends.start(run_dir / "backends", memory_store=True)
        cluster = Cluster(run_dir, backends, namespace="postrate", tls=False, extra_env=LIFTED)
        try:
            cluster.start(dispatchers=1, rtms=1, comment_services=1)
            comment = cluster.services["comment-1"]
            pids = {name: svc.proc.pid for name, svc in cluster.services.items()}
            pids.update({name: proc.pid for name, proc in backends.procs.items()})
            tokens = asyncio.run(register(comment.url))
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            if args.client == "wrk":
                result = run_wrk(
                    comment.url, tokens, args.seconds, args.concurrency, args.videos, run_dir
                )
            else:
                result = asyncio.run(
                    run_python(comment.url, tokens, args.seconds, args.concurrency, args.videos)
                )
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
            time.sleep(0.5)  # let the last answers' comments land
            result["stored"] = asyncio.run(stored(backends.mongo_uri, "postrate", args.videos))
            result["client"] = args.client
            for name in pids:
                result[f"cpu_s.{name}"] = round(after[name] - before[name], 2)
            per_post = 1e6 / max(1, int(result["accepted"]))
            for name in ("comment-1", "store"):
                result[f"cpu_us_per_post.{name}"] = round(result[f"cpu_s.{name}"] * per_post)
        finally:
            cluster.stop()
            backends.stop()
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        for key, value in result.items():
            print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
