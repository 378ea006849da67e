"""First end-to-end latency probe: POST -> SSE for a handful of viewers on a running system.

    .venv/bin/python bench/e2e_latency.py --base https://127.0.0.1:8443 --ca .run/tls/ca.pem

One user posts everything from one address, faster than the default limits allow
(20/30 s per user, 60/30 s per address): start the system for it with
``LIVECOMMENTS_POST_LIMIT_USER=100000/1 LIVECOMMENTS_POST_LIMIT_IP=100000/1 make run``.

Opens V viewers of one video (spread over the RTMS nodes through the stream
redirect and directly), posts N comments at R/s through the HTTPS API, and
reports, per delivery: from the moment the POST was sent, and from the
server's accept timestamp (created_at_ms) to the SSE event being parsed.
It is a probe, not the benchmark harness (that comes with the fan-out work).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import time

import aiohttp
import orjson


async def viewer(
    session: aiohttp.ClientSession, url: str, got: dict[str, list[float]], ready: asyncio.Event
) -> None:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
        ready.set()
        buffer = b""
        async for chunk in response.content.iter_any():
            now = time.time()
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        body = orjson.loads(line[6:])
                        if "id" in body:
                            got.setdefault(body["id"], []).append(now)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="https://127.0.0.1:8443")
    parser.add_argument("--ca", default=".run/tls/ca.pem")
    parser.add_argument("--viewers", type=int, default=8)
    parser.add_argument("--comments", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0)
    args = parser.parse_args()
    ctx = ssl.create_default_context(cafile=args.ca)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=0)) as session:
        name = f"bench_{time.time_ns() % 10**9}"
        async with session.post(
            f"{args.base}/api/auth/register", json={"username": name, "password": "benchmark-pass"}
        ) as r:
            token = (await r.json())["token"]
        video = f"latency-{time.time_ns() % 10**9}"
        async with session.get(f"{args.base}/healthz") as r:
            await r.read()
        # Spread viewers over every RTMS node: the redirect picks one, the rest go direct.
        async with session.get(
            f"{args.base}/api/videos/{video}/stream", allow_redirects=False
        ) as r:
            placed = r.headers["Location"]
        got: dict[str, list[float]] = {}
        tasks, readies = [], []
        for i in range(args.viewers):
            ready = asyncio.Event()
            url = placed if i % 2 == 0 else f"{args.base}/api/videos/{video}/stream"
            tasks.append(asyncio.create_task(viewer(session, url, got, ready)))
            readies.append(ready)
        await asyncio.gather(*(r.wait() for r in readies))
        await asyncio.sleep(0.5)
        sent: dict[str, tuple[float, float]] = {}
        headers = {"Authorization": f"Bearer {token}"}
        for n in range(args.comments):
            t0 = time.time()
            async with session.post(
                f"{args.base}/api/videos/{video}/comments",
                json={"text": f"latency probe {n}"},
                headers=headers,
            ) as r:
                body = await r.json()
                if r.status != 201:
                    raise SystemExit(f"POST answered {r.status}: {body} (see the docstring)")
            sent[body["id"]] = (t0, body["created_at_ms"] / 1000)
            await asyncio.sleep(max(0.0, 1 / args.rate - (time.time() - t0)))
        await asyncio.sleep(1.0)
        for task in tasks:
            task.cancel()
        from_post, from_accept = [], []
        missing = duplicates = 0
        for cid, (t0, accepted) in sent.items():
            times = got.get(cid, [])
            missing += max(0, args.viewers - len(times))
            duplicates += max(0, len(times) - args.viewers)
            from_post += [(t - t0) * 1000 for t in times]
            from_accept += [(t - accepted) * 1000 for t in times]
        print(
            f"viewers={args.viewers} comments={args.comments} rate={args.rate}/s "
            f"deliveries={len(from_post)} missing={missing} duplicates={duplicates}"
        )
        for label, values in (("POST sent -> SSE", from_post), ("accepted -> SSE", from_accept)):
            if values:
                print(
                    f"  {label:17} p50 {statistics.median(values):6.1f} ms  "
                    f"p90 {pct(values, 90):6.1f}  p99 {pct(values, 99):6.1f}  "
                    f"max {max(values):6.1f}"
                )
    await asyncio.sleep(0.25)


if __name__ == "__main__":
    asyncio.run(main())
