"""Scaling over RTMS nodes on one machine: 1, 2, 4, 6 nodes, the same viewers.

    .venv/bin/python -m bench.scale                       # 6,000 viewers, nodes 1,2,4,6
    .venv/bin/python -m bench.scale --viewers 600 --duration 5 --nodes 1,2
    .venv/bin/python -m bench.scale --report bench/results/FILE.json --markdown

One set of backends (ZooKeeper, Redis, the in-memory MongoDB-wire store) for the
whole run; for each step a fresh cluster in a namespace of its own (ZooKeeper
root, Redis prefix, database): N RTMS nodes, ``--dispatchers`` dispatchers and
``--comment-services`` comment services, the limits lifted as in bench.fanout.
Each step:

1. pins the hot video to every RTMS node of the step (``livecomments pin hot
   rtms-1 .. rtms-N``, through the same recipe the CLI uses); the small videos
   are placed by the normal placement (rendezvous hashing, one node each);
2. connects the same viewers the way the page does: ``GET
   /api/videos/{video}/stream`` on a comment service, then the 307 to a node
   placed for the video (a random one of the pinned nodes for the hot video).
   Half the viewers watch the hot video, the other half the ``--small-videos``
   small ones, round robin. The generators (``bench.viewers``, separate
   processes, <= 9,000 connections each, over 127.0.0.2.. source addresses)
   follow a ``moved`` event to the URL it names, as the page does, and go on
   counting on the new connection as the same viewer;
3. reads every process's CPU over ``--idle`` seconds with nothing posted (the
   background: heartbeats, load reports, watches);
4. a measured window: posts ``--hot-rate``/s to the hot video and
   ``--small-rate``/s round robin over the small ones for ``--duration`` s,
   open loop, alternately through each comment service; then waits until every
   viewer has every accepted comment of its video (bounded by ``--drain``).
   The CPU seconds of every process are read around it (``/proc``), the viewers'
   deliveries are counted per RTMS node (by the port they came from);
5. in the largest step, a second window, the move phase: while posting goes on,
   at 1/3 of it the last node is drained (its viewers, the hot video's and the
   small ones', get ``moved`` to another placed node and follow it), at 2/3 it
   is undrained and the hot video pinned to every node again. Every viewer must
   still get every comment exactly once.

Reported per step: each RTMS node's viewers, deliveries and CPU us per delivery;
each dispatcher's CPU ms per comment and the hosting nodes per comment (from
``/hosted`` in ZooKeeper: N for the hot video, 1 for a small one); the comment
services', Redis', the store's and ZooKeeper's CPU per comment; deliveries
against expected, missing and duplicated; latency from the POST's send on the
client clock (as bench.fanout); the generators' and the poster's own CPU. A
summary across steps gives the RTMS CPU per delivery as a ratio to the 1-node
step, and a least-squares line through the dispatchers' CPU per comment against
the hosting nodes per comment. Everything is bounded: connects, posting, drains
and every ZooKeeper call have deadlines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import procstat
from bench.fanout import (
    LATENCY_POINTS,
    Generators,
    Table_,
    code_version,
    drain,
    fmt,
    print_tables,
    self_cpu,
)
from bench.targets import LiveCommentsPoster, LiveCommentsTarget

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
HOT = 0  # the hot video's index; the small ones are 1..S
STREAM_PATH = "/api/videos/{video}/stream"  # the page's way in: a 307 to a placed node
ZK_DEADLINE = 30.0


@dataclass(frozen=True)
class ScaleConfig:
    nodes: tuple[int, ...]
    viewers: int
    small_videos: int
    hot_rate: float
    small_rate: float
    duration: float
    dispatchers: int
    comment_services: int
    generators: int
    sources: int
    connect_concurrency: int
    post_concurrency: int
    drain: float
    idle: float
    move: bool


# -- the pure parts: who watches what, what is posted when, the arithmetic ----------


def video_names(small_videos: int) -> list[str]:
    return ["hot", *(f"s{i}" for i in range(small_videos))]


def split_viewers(viewers: int, small_videos: int) -> list[int]:
    """The video index of each viewer: every other one watches the hot video (index 0),
    the rest go round robin over the small ones (1..small_videos).

    Interleaved, so any contiguous slice (one generator's share) has both kinds.
    """
    if small_videos <= 0:
        return [HOT] * viewers
    return [HOT if i % 2 == 0 else 1 + (i // 2) % small_videos for i in range(viewers)]


def schedule(
    hot_rate: float, small_rate: float, duration: float, small_videos: int, posters: int
) -> list[tuple[float, int, int]]:
    """Every post as (due offset in s, video index, poster index), in due order.

    Two open-loop streams: hot message k is due at k/hot_rate, small message j at
    j/small_rate and goes to small video 1 + j % small_videos. Within each stream
    the posters (comment services) take turns.
    """
    plan: list[tuple[float, int, int]] = []
    for k in range(round(hot_rate * duration) if hot_rate > 0 else 0):
        plan.append((k / hot_rate, HOT, k % posters))
    if small_videos > 0 and small_rate > 0:
        for j in range(round(small_rate * duration)):
            plan.append((j / small_rate, 1 + j % small_videos, j % posters))
    plan.sort(key=lambda p: p[0])
    return plan


def hosting_per_comment(accepted: Sequence[int], hosts: Sequence[int]) -> float | None:
    """Mean RTMS nodes a comment was dispatched to: hosts[v] for each comment of video v."""
    total = sum(accepted)
    if not total:
        return None
    return sum(a * h for a, h in zip(accepted, hosts, strict=True)) / total


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least squares ``y = a + b x``: (a, b); None with fewer than two distinct x."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def fit_two(
    rows: Sequence[tuple[float, float, float]],
) -> tuple[float, float] | None:
    """Least squares ``z = a x + b y`` (no intercept) over (x, y, z): (a, b)."""
    sxx = sum(x * x for x, _, _ in rows)
    syy = sum(y * y for _, y, _ in rows)
    sxy = sum(x * y for x, y, _ in rows)
    sxz = sum(x * z for x, _, z in rows)
    syz = sum(y * z for _, y, z in rows)
    det = sxx * syy - sxy * sxy
    if len(rows) < 2 or abs(det) < 1e-12 * max(1.0, sxx * syy):
        return None
    return (sxz * syy - syz * sxy) / det, (syz * sxx - sxz * sxy) / det


def ratios_to_first(values: Sequence[float | None]) -> list[float | None]:
    """Each value over the first one (None where either is missing)."""
    first = values[0] if values else None
    return [None if v is None or not first else v / first for v in values]


def per(seconds: float, count: int, scale: float) -> float | None:
    return seconds / count * scale if count else None


# -- one step's cluster ---------------------------------------------------------------


class Step:
    """A cluster of N RTMS nodes on the shared backends, and the ZooKeeper recipes on it."""

    def __init__(self, n: int, sc: ScaleConfig, backends: Any, run_dir: Path) -> None:
        from livecomments.cli.cluster import Cluster

        self.n = n
        self.sc = sc
        self.backends = backends
        self.cluster = Cluster(
            run_dir / f"n{n}", backends, namespace=f"scale{n}", tls=False,
            extra_env=dict(LiveCommentsTarget.ENV),
        )  # fmt: skip
        self.nodes = [f"rtms-{i}" for i in range(1, n + 1)]

    async def start(self) -> None:
        await asyncio.to_thread(
            self.cluster.start, dispatchers=self.sc.dispatchers, rtms=self.n,
            comment_services=self.sc.comment_services,
        )  # fmt: skip

    async def stop(self) -> None:
        await asyncio.to_thread(self.cluster.stop)

    def port_of_node(self) -> dict[int, str]:
        return {
            int(self.cluster.services[n].url.rsplit(":", 1)[1]): n for n in self.nodes
        }  # fmt: skip

    def comment_urls(self) -> list[str]:
        return [
            self.cluster.services[f"comment-{i}"].url
            for i in range(1, self.sc.comment_services + 1)
        ]

    def components(self) -> dict[str, list[int]]:
        out = {name: [s.proc.pid] for name, s in self.cluster.services.items()}
        out.update({name: [p.pid] for name, p in self.backends.procs.items()})
        return out

    def cpu(self) -> dict[str, float]:
        return {name: procstat.total_cpu(pids) for name, pids in self.components().items()}

    async def intent(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        """``work(intents)`` on a ZooKeeper session of this cluster (what the CLI runs)."""
        from livecomments.cli.ops import session
        from livecomments.kernel import settings as cfg

        settings = cfg.load(cfg.BackendSettings, environ=self.cluster.base_env())
        return await asyncio.wait_for(session(settings, work), ZK_DEADLINE)

    async def hosted(self, videos: list[str]) -> list[list[str]]:
        """The nodes hosting each video (``/hosted/{video}/{node}``)."""
        snap = await self.intent(lambda intents: intents.snapshot())
        return [list(snap.hosted.get(v, [])) for v in videos]


class ViewerProcesses(Generators):
    """bench.viewers processes that enter through the comment services' 307 and follow moves."""

    async def start_scale(self, urls: list[str], videos: list[str], sc: ScaleConfig) -> None:
        sources = [f"127.0.0.{2 + i}" for i in range(sc.sources)]
        assign = split_viewers(sc.viewers, sc.small_videos)
        per_gen = math.ceil(sc.viewers / sc.generators)
        for g in range(sc.generators):
            lo, hi = g * per_gen, min(sc.viewers, (g + 1) * per_gen)
            if lo >= hi:
                break
            port = int(urls[g % len(urls)].rsplit(":", 1)[1])
            config = {
                "host": "127.0.0.1", "port": port, "path": STREAM_PATH, "videos": videos,
                "sources": sources, "lo": lo, "hi": hi, "assign": assign[lo:hi],
                "follow": True,
                "concurrency": max(1, sc.connect_concurrency // sc.generators),
            }  # fmt: skip
            await self.spawn(config)


# -- a measured window ----------------------------------------------------------------


async def post_plan(
    posters: list[LiveCommentsPoster], plan: list[tuple[float, int, int]]
) -> dict[str, Any]:
    """Open loop: each post at its due time (what is due together goes out together)."""
    loop = asyncio.get_running_loop()
    start, wall0 = loop.time(), time.time()
    i = ticks = 0
    while i < len(plan):
        now = loop.time() - start
        due: dict[int, tuple[list[int], list[float]]] = {}
        while i < len(plan) and plan[i][0] <= now:
            offset, video, who = plan[i]
            vids, dues = due.setdefault(who, ([], []))
            vids.append(video)
            dues.append(wall0 + offset)
            i += 1
        for who, (vids, dues) in due.items():
            posters[who].publish(vids, dues)
        ticks += bool(due)
        if i < len(plan):
            await asyncio.sleep(max(0.0, plan[i][0] - (loop.time() - start)))
    return {"offered": len(plan), "ticks": ticks}


async def idle_cpu(step: Step, seconds: float) -> dict[str, float]:
    """CPU seconds per second of each process with viewers connected and nothing posted."""
    if seconds <= 0:
        return {}
    cpu0, t0 = step.cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, span = step.cpu(), time.monotonic() - t0
    return {k: (cpu1[k] - cpu0.get(k, 0.0)) / span for k in cpu1}


async def window(
    step: Step,
    gens: ViewerProcesses,
    posters: list[LiveCommentsPoster],
    videos: list[str],
    actions: Sequence[tuple[float, str, Callable[[], Awaitable[Any]]]] = (),
) -> dict[str, Any]:
    """Post the schedule, drain, and measure; ``actions`` run at their offsets (s) meanwhile."""
    sc = step.sc
    started = await gens.command("window")
    alive = [0] * len(videos)
    for answer in started:
        for v, n in answer["alive"].items():
            alive[int(v)] += n
    for p in posters:
        p.reset()
    plan = schedule(sc.hot_rate, sc.small_rate, sc.duration, sc.small_videos, len(posters))
    cpu0, me0, t0 = step.cpu(), self_cpu(), time.time()
    done: list[dict[str, Any]] = []

    async def act(at: float, what: str, work: Callable[[], Awaitable[Any]]) -> None:
        await asyncio.sleep(at)
        began = time.time()
        try:
            result = await work()
            done.append({"at_s": round(began - t0, 2), "what": what, "result": result})
        except Exception as exc:  # reported, never silent: the window goes on
            done.append({"at_s": round(began - t0, 2), "what": what, "error": repr(exc)})

    tasks = [asyncio.ensure_future(act(at, what, work)) for at, what, work in actions]
    sent = await post_plan(posters, plan)
    posting_done = time.time()
    await asyncio.gather(*(p.drain(timeout=max(10.0, sc.drain)) for p in posters))
    if tasks:
        await asyncio.wait(tasks, timeout=ZK_DEADLINE)
    accepted = [sum(p.accepted[v] for p in posters) for v in range(len(videos))]
    expected = sum(a * n for a, n in zip(accepted, alive, strict=True))
    _, waited = await drain(gens, expected, time.monotonic() + sc.drain)
    t1 = time.time()
    cpu1, me1 = step.cpu(), self_cpu()
    parts = await gens.command("collect")
    hosted = await step.hosted(videos)
    return {
        "posting_s": posting_done - t0,
        "drain_s": waited,
        "window_s": t1 - t0,
        "offered": sent["offered"],
        "accepted": accepted,
        "alive_at_start": alive,
        "viewers_by_port_at_start": _merge_counts(a["by_port"] for a in started),
        "hosts": [len(nodes) for nodes in hosted],
        "hosted_on": hosted,
        "post_errors": sum(p.errors for p in posters),
        "first_post_error": next((p.first_error for p in posters if p.first_error), ""),
        "rtts": sorted(r for p in posters for r in p.rtts),
        "cpu_s": {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1},
        "poster_cpu_s": me1 - me0,
        "parts": parts,
        "actions": done,
    }


def _merge_counts(parts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for k, n in part.items():
            out[k] = out.get(k, 0) + n
    return out


def summarize(raw: dict[str, Any], step: Step, idle: dict[str, float]) -> dict[str, Any]:
    """The window's numbers, per process and in total (raw parts dropped)."""
    parts, cpu = raw.pop("parts"), raw["cpu_s"]
    rtts = raw.pop("rtts")
    accepted, alive, hosts = raw["accepted"], raw["alive_at_start"], raw["hosts"]
    comments = sum(accepted)
    events = sum(p["events"] for p in parts)
    by_port = _merge_counts(p["events_by_port"] for p in parts)
    viewers_end = _merge_counts(p["viewers_by_port"] for p in parts)
    per_video: dict[int, list[int]] = {}
    for part in parts:
        for v, row in part["videos"].items():
            acc = per_video.setdefault(int(v), [0, 0, 0, 0])
            for i in range(4):
                acc[i] += row[i]
    missing = unexpected = 0
    for v, (conns, new, _dups, _late) in per_video.items():
        missing += max(0, conns * accepted[v] - new)
        unexpected += max(0, new - conns * accepted[v])
    hist = procstat.merge_hist(p["hist"] for p in parts)
    nodes = []
    for port, name in sorted(step.port_of_node().items(), key=lambda x: x[1]):
        delivered = by_port.get(str(port), 0)
        nodes.append({
            "node": name,
            "comments_in": sum(
                a for a, on in zip(accepted, raw["hosted_on"], strict=True) if name in on
            ),
            "viewers_at_start": raw["viewers_by_port_at_start"].get(str(port), 0),
            "viewers_at_end": viewers_end.get(str(port), 0),
            "deliveries": delivered,
            "cpu_s": cpu.get(name, 0.0),
            "us_per_delivery": per(cpu.get(name, 0.0), delivered, 1e6),
            "idle_cpu_per_s": idle.get(name),
        })  # fmt: skip
    rtms_cpu = sum(n["cpu_s"] for n in nodes)
    rtms_delivered = sum(n["deliveries"] for n in nodes)
    window_s = raw["window_s"]

    def group(prefix: str) -> dict[str, Any]:
        names = sorted(k for k in cpu if k.startswith(prefix))
        secs = sum(cpu[k] for k in names)
        idle_s = sum(idle.get(k, 0.0) for k in names) * window_s
        return {
            "cpu_s": secs,
            "ms_per_comment": per(secs, comments, 1e3),
            "ms_per_comment_over_idle": per(secs - idle_s, comments, 1e3) if idle else None,
            "each_ms_per_comment": {k: per(cpu[k], comments, 1e3) for k in names},
        }

    gen_cpu = sum(p["cpu"] for p in parts)
    everything = sum(cpu.values()) + gen_cpu + raw["poster_cpu_s"]
    hot_comments = accepted[HOT]
    return {
        **{k: v for k, v in raw.items() if k not in ("cpu_s",)},
        "cpu_s": {k: round(v, 3) for k, v in sorted(cpu.items())},
        "comments": comments,
        "hot_comments": hot_comments,
        "hot_hosts": hosts[HOT],
        "hosting_nodes_per_comment": hosting_per_comment(accepted, hosts),
        "expected_deliveries": sum(a * n for a, n in zip(accepted, alive, strict=True)),
        "deliveries": events,
        "deliveries_per_s": events / window_s if window_s else None,
        "missing": missing,
        "unexpected": unexpected,
        "duplicates": sum(r[2] for r in per_video.values()),
        "reordered": sum(r[3] for r in per_video.values()),
        "disconnects": sum(p["disconnects"] for p in parts),
        "moved_followed": sum(p["moved"] for p in parts),
        "follow_failed": sum(p["follow_failed"] for p in parts),
        "parse_errors": sum(p["parse_errors"] for p in parts),
        "latency_ms": procstat.percentiles(hist, LATENCY_POINTS),
        "publish_rtt_ms": {
            "p50": rtts[len(rtts) // 2] if rtts else None,
            "p99": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] if rtts else None,
        },
        "rtms_nodes": nodes,
        "rtms_us_per_delivery": per(rtms_cpu, rtms_delivered, 1e6),
        "rtms_us_per_delivery_max": max(
            (n["us_per_delivery"] for n in nodes if n["us_per_delivery"] is not None),
            default=None,
        ),
        "dispatchers": group("dispatcher"),
        "comment_services": group("comment"),
        "redis": group("redis"),
        "store": group("store"),
        "zookeeper": group("zookeeper"),
        "generator_cpu_s": gen_cpu,
        "generator_us_per_event": per(gen_cpu, events, 1e6),
        "poster_ms_per_comment": per(raw["poster_cpu_s"], comments, 1e3),
        "machine_busy": everything / (window_s * (os.cpu_count() or 1)) if window_s else None,
    }


# -- a step, and the run --------------------------------------------------------------


async def run_step(n: int, sc: ScaleConfig, backends: Any, run_dir: Path, move: bool) -> Any:
    step = Step(n, sc, backends, run_dir)
    videos = video_names(sc.small_videos)
    gens = ViewerProcesses()
    posters: list[LiveCommentsPoster] = []
    out: dict[str, Any] = {"nodes": n}
    print(f"[scale] {n} RTMS node(s): starting", file=sys.stderr)
    await step.start()
    try:
        await step.intent(lambda intents: intents.pin(videos[HOT], step.nodes))
        await asyncio.sleep(1.0)  # the comment services' and nodes' mirrors see the pin
        await gens.start_scale(step.comment_urls(), videos, sc)
        t = time.monotonic()
        answers = await gens.command("connect", timeout=max(60.0, sc.viewers / 50))
        out["connect"] = {
            "connected": sum(a["connected"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "seconds": time.monotonic() - t,
        }
        print(f"[scale] {n}: connected {out['connect']}", file=sys.stderr)
        posters = [
            LiveCommentsPoster(url, videos, sc.post_concurrency) for url in step.comment_urls()
        ]
        for p in posters:
            await p.open()
        await asyncio.sleep(1.0)
        idle = await idle_cpu(step, sc.idle)
        out["idle_cpu_per_s"] = {k: round(v, 4) for k, v in sorted(idle.items())}
        out["window"] = summarize(await window(step, gens, posters, videos), step, idle)
        print(f"[scale] {n}: window done", file=sys.stderr)
        if move:
            out["move"] = await move_phase(step, gens, posters, videos, idle)
            print(f"[scale] {n}: move phase done", file=sys.stderr)
    except Exception as exc:
        out["error"] = repr(exc)
        out["logs"] = step.cluster.logs()[-6000:]
        print(f"[scale] {n}: failed: {exc!r}", file=sys.stderr)
    finally:
        for p in posters:
            await p.close()
        await gens.close()
        await step.stop()
    return out


async def move_phase(
    step: Step,
    gens: ViewerProcesses,
    posters: list[LiveCommentsPoster],
    videos: list[str],
    idle: dict[str, float],
) -> dict[str, Any]:
    """Drain the last node under posting, then undrain it and pin the hot video to all."""
    last, hot, d = step.nodes[-1], videos[HOT], step.sc.duration

    async def away() -> dict[str, Any]:
        change = await step.intent(lambda intents: intents.drain(last))
        return {"drained": change.node}

    async def back() -> dict[str, Any]:
        await step.intent(lambda intents: intents.undrain(last))
        change = await step.intent(lambda intents: intents.pin(hot, step.nodes))
        return {"undrained": last, "pinned": list(change.pin.nodes)}

    actions = [
        (d / 3, f"drain {last}", away),
        (2 * d / 3, f"undrain {last}, pin {hot} to all", back),
    ]
    return summarize(await window(step, gens, posters, videos, actions), step, idle)


async def main_async(sc: ScaleConfig, keep: bool) -> dict[str, Any]:
    from livecomments.cli.cluster import Backends

    run_dir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    backends = await asyncio.to_thread(Backends.start, run_dir, memory_store=True)
    steps = []
    failed = False
    try:
        for n in sc.nodes:
            move = sc.move and n == max(sc.nodes)
            steps.append(await run_step(n, sc, backends, run_dir, move))
            failed = failed or "error" in steps[-1]
            await asyncio.sleep(1.0)  # let the kernel reap the previous step's sockets
    finally:
        await asyncio.to_thread(backends.stop)
        if keep or failed:
            print(f"[scale] logs kept in {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    doc = {
        "machine": {
            "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "code": code_version(),
        "scenario": asdict(sc),
        "steps": steps,
    }  # fmt: skip
    doc["summary"] = summary(doc)
    return doc


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """Across steps: RTMS flatness (ratio to the first step) and the dispatcher model."""
    ok = [s for s in doc["steps"] if "window" in s]
    rtms = [s["window"]["rtms_us_per_delivery"] for s in ok]
    xs = [s["window"]["hosting_nodes_per_comment"] for s in ok]
    fits: dict[str, Any] = {}
    for key in ("ms_per_comment", "ms_per_comment_over_idle"):
        ys = [s["window"]["dispatchers"][key] for s in ok]
        pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None and y is not None]
        fit = linear_fit([p[0] for p in pairs], [p[1] for p in pairs])
        if fit is not None:
            fits[key] = {"fixed_ms_per_comment": fit[0], "ms_per_hosting_node": fit[1]}
    return {
        "nodes": [s["nodes"] for s in ok],
        "rtms_model": rtms_model(ok),
        "rtms_us_per_delivery": rtms,
        "rtms_ratio_to_first": ratios_to_first(rtms),
        "dispatcher_model": fits,
    }


def rtms_model(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Each RTMS node's CPU in a window, less its idle CPU, as ``a`` per comment it
    received + ``b`` per delivery it made (least squares over every node of every step).

    A node receives each comment of every video it hosts once (from a dispatcher, over
    gRPC) and writes it to each of its viewers of that video: ``a`` is what does not
    shrink as its viewers do, the reason CPU per delivery rises with nodes.
    """
    rows = []
    for s in steps:
        w = s["window"]
        n, small = s["nodes"], sum(w["accepted"]) - w["accepted"][HOT]
        for node in w["rtms_nodes"]:
            # Older files lack comments_in: the hot video's comments (it is on every
            # node) + the small ones' share of one node in n.
            comments = node.get("comments_in", w["accepted"][HOT] + small / n)
            busy = node["cpu_s"] - (node["idle_cpu_per_s"] or 0.0) * w["window_s"]
            rows.append((float(comments), float(node["deliveries"]), busy))
    fit = fit_two(rows)
    if fit is None:
        return None
    return {"ms_per_comment_in": fit[0] * 1e3, "us_per_delivery": fit[1] * 1e6, "points": len(rows)}


# -- tables ---------------------------------------------------------------------------


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def window_tables(label: str, w: dict[str, Any]) -> list[Table_]:
    lat = w["latency_ms"]
    node_rows = [
        [n["node"], fmt(n["viewers_at_start"]), fmt(n["viewers_at_end"]), fmt(n["deliveries"]),
         f"{n['cpu_s']:.2f}", fmt(n["us_per_delivery"], 2)]
        for n in w["rtms_nodes"]
    ]  # fmt: skip
    proc_rows = []
    for group in ("dispatchers", "comment_services", "redis", "store", "zookeeper"):
        g = w[group]
        for name, ms in g["each_ms_per_comment"].items():
            proc_rows.append([name, f"{w['cpu_s'].get(name, 0.0):.2f}", fmt(ms, 3)])
        if len(g["each_ms_per_comment"]) > 1:
            proc_rows.append([f"{group} together", f"{g['cpu_s']:.2f}",
                              fmt(g["ms_per_comment"], 3)])  # fmt: skip
    facts = [
        ["comments accepted (hot / small), post errors",
         f"{w['comments']:,} ({w['hot_comments']:,} / {w['comments'] - w['hot_comments']:,}),"
         f" {w['post_errors']:,}"],
        ["hot video hosted on / hosting nodes per comment",
         f"{w['hot_hosts']} / {fmt(w['hosting_nodes_per_comment'], 2)}"],
        ["deliveries / expected", f"{w['deliveries']:,} / {w['expected_deliveries']:,}"],
        ["missing / duplicated / unexpected / reordered",
         f"{w['missing']:,} / {w['duplicates']:,} / {w['unexpected']:,} / {w['reordered']:,}"],
        ["moved events followed (failed) / disconnects",
         f"{w['moved_followed']:,} ({w['follow_failed']:,}) / {w['disconnects']:,}"],
        ["latency from send p50 / p99 / max (ms)",
         f"{fmt(lat['p50'])} / {fmt(lat['p99'])} / {fmt(lat['max'])}"],
        ["POST round trip p50 / p99 (ms)",
         f"{fmt(w['publish_rtt_ms']['p50'], 1)} / {fmt(w['publish_rtt_ms']['p99'], 1)}"],
        ["RTMS us/delivery (all nodes)", fmt(w["rtms_us_per_delivery"], 2)],
        ["generators CPU s (us/event)",
         f"{w['generator_cpu_s']:.2f} ({fmt(w['generator_us_per_event'], 2)})"],
        ["poster ms/comment", fmt(w["poster_ms_per_comment"], 2)],
        ["window s (posting + drain), machine busy",
         f"{w['window_s']:.1f}, {pct(w['machine_busy'])}"],
    ]  # fmt: skip
    for a in w.get("actions", []):
        facts.append(
            [f"at {a['at_s']} s: {a['what']}", json.dumps(a.get("result", a.get("error")))]
        )
    return [
        (f"{label}: RTMS nodes", ["node", "viewers (start)", "viewers (end)", "deliveries",
                                  "CPU s", "us/delivery"], node_rows),
        (f"{label}: CPU per comment", ["process", "CPU s", "ms/comment"], proc_rows),
        (f"{label}: deliveries and latency", ["", "value"], facts),
    ]  # fmt: skip


def report_tables(doc: dict[str, Any]) -> list[Table_]:
    sc = doc["scenario"]
    tables: list[Table_] = []
    for s in doc["steps"]:
        if "error" in s:
            tables.append((f"{s['nodes']} RTMS node(s)", ["error"], [[s["error"]]]))
            continue
        tables += window_tables(f"{s['nodes']} RTMS node(s)", s["window"])
        if "move" in s:
            tables += window_tables(f"{s['nodes']} RTMS node(s), move phase", s["move"])
    summ = doc["summary"]
    fanout_rows, comment_rows = [], []
    ok = [s for s in doc["steps"] if "window" in s]
    for s, ratio in zip(ok, summ["rtms_ratio_to_first"], strict=True):
        w = s["window"]
        lat = w["latency_ms"]
        fanout_rows.append([
            str(s["nodes"]), fmt(sc["viewers"] / s["nodes"]), fmt(w["deliveries_per_s"]),
            fmt(w["rtms_us_per_delivery"], 2), fmt(ratio, 2), fmt(w["rtms_us_per_delivery_max"], 2),
            f"{w['deliveries']:,} / {w['expected_deliveries']:,}",
            f"{w['missing']:,} / {w['duplicates']:,}", f"{fmt(lat['p50'])} / {fmt(lat['p99'])}",
            fmt(w["generator_us_per_event"], 2), pct(w["machine_busy"]),
        ])  # fmt: skip
        comment_rows.append([
            str(s["nodes"]), fmt(w["comments"]), fmt(w["hosting_nodes_per_comment"], 2),
            fmt(w["dispatchers"]["ms_per_comment"], 3),
            fmt(w["dispatchers"]["ms_per_comment_over_idle"], 3),
            fmt(w["comment_services"]["ms_per_comment"], 3), fmt(w["redis"]["ms_per_comment"], 3),
            fmt(w["store"]["ms_per_comment"], 3), fmt(w["zookeeper"]["ms_per_comment"], 3),
        ])  # fmt: skip
    what = (
        f"{sc['viewers']:,} viewers (half on one hot video pinned to every node, half on "
        f"{sc['small_videos']} small ones), {sc['hot_rate']:g} + {sc['small_rate']:g} comments/s "
        f"for {sc['duration']:g} s, {sc['dispatchers']} dispatchers, {sc['comment_services']} "
        f"comment services — {doc['machine']['cpus']} cores, loopback"
    )
    tables.append((
        f"fan-out across steps: {what}",
        ["RTMS nodes", "viewers/node", "deliveries/s", "RTMS us/delivery", "ratio to 1st step",
         "worst node us/del", "delivered / expected", "missing / dup", "p50 / p99 ms",
         "generator us/event", "machine busy"],
        fanout_rows,
    ))  # fmt: skip
    tables.append((
        "CPU per comment across steps (ms; dispatchers and comment services: all together)",
        ["RTMS nodes", "comments", "hosting nodes/comment", "dispatchers", "dispatchers over idle",
         "comment services", "Redis", "store", "ZooKeeper"],
        comment_rows,
    ))  # fmt: skip
    rm = summ.get("rtms_model")
    if rm:
        tables.append((
            "an RTMS node's CPU over idle = per comment it receives + per delivery"
            f" (least squares over {rm['points']} node-windows)",
            ["ms per comment received", "us per delivery"],
            [[fmt(rm["ms_per_comment_in"], 3), fmt(rm["us_per_delivery"], 2)]],
        ))  # fmt: skip
    model = summ["dispatcher_model"]
    if model:
        tables.append((
            "dispatchers' CPU per comment = fixed + per hosting node"
            " (least squares over the steps)",
            ["measured as", "fixed ms/comment", "ms per hosting node"],
            [[k, fmt(v["fixed_ms_per_comment"], 3), fmt(v["ms_per_hosting_node"], 3)]
             for k, v in model.items()],
        ))  # fmt: skip
    return tables


# -- entry point ----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[ScaleConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    p.add_argument("--nodes", default="1,2,4,6", help="RTMS nodes of each step")
    p.add_argument("--viewers", type=int, default=6000, help="the same in every step")
    p.add_argument("--small-videos", type=int, default=200)
    p.add_argument("--hot-rate", type=float, default=20.0, help="comments/s to the hot video")
    p.add_argument("--small-rate", type=float, default=20.0,
                   help="comments/s over the small videos, round robin")  # fmt: skip
    p.add_argument("--duration", type=float, default=20.0, help="seconds of posting per window")
    p.add_argument("--dispatchers", type=int, default=2)
    p.add_argument("--comment-services", type=int, default=2)
    p.add_argument("--generators", type=int, default=0,
                   help="viewer processes (0: one per 9,000 viewers, at least 2)")  # fmt: skip
    p.add_argument("--sources", type=int, default=8, help="source addresses 127.0.0.2..")
    p.add_argument("--connect-concurrency", type=int, default=100)
    p.add_argument("--post-concurrency", type=int, default=64)
    p.add_argument("--drain", type=float, default=0.0,
                   help="most seconds to wait after the last post"
                   " (0: max(5, duration/2))")  # fmt: skip
    p.add_argument("--idle", type=float, default=3.0,
                   help="seconds of background CPU read before each window (0: none)")  # fmt: skip
    p.add_argument("--no-move", action="store_true", help="skip the move phase")
    p.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    p.add_argument("--out", metavar="FILE", help="where to write the JSON (default: bench/results/"
                   "2026-12-02-i15-scale-VIEWERS-NODES.json)")  # fmt: skip
    p.add_argument("--report", metavar="FILE", help="print the tables of a saved JSON document")
    p.add_argument("--markdown", action="store_true", help="tables in Markdown (docs)")
    args = p.parse_args(argv)
    try:
        nodes = tuple(sorted({int(x) for x in args.nodes.split(",") if x.strip()}))
    except ValueError:
        p.error(f"--nodes {args.nodes!r}: a comma-separated list of numbers")
    if not nodes or nodes[0] < 1:
        p.error("--nodes: at least one step of at least 1 node")
    generators = args.generators or max(2, math.ceil(args.viewers / 9000))
    if args.viewers / generators > 9500:
        p.error("more than ~9,500 viewers per generator process (20K open files each)")
    if args.viewers / nodes[0] > 19000:
        p.error("more than 19,000 viewers on one RTMS node (20K open files each)")
    sc = ScaleConfig(
        nodes=nodes, viewers=args.viewers, small_videos=args.small_videos,
        hot_rate=args.hot_rate, small_rate=args.small_rate, duration=args.duration,
        dispatchers=args.dispatchers, comment_services=args.comment_services,
        generators=generators, sources=args.sources,
        connect_concurrency=args.connect_concurrency, post_concurrency=args.post_concurrency,
        drain=args.drain or max(5.0, args.duration / 2), idle=args.idle, move=not args.no_move,
    )  # fmt: skip
    return sc, args


def main(argv: list[str] | None = None) -> None:
    sc, args = parse_args(argv)
    if args.report:
        doc = json.loads(Path(args.report).read_text())
        doc["summary"] = summary(doc)  # recomputed: older files get the newer models
        print_tables(report_tables(doc), args.markdown)
        return
    from bench.targets import missing_packages

    missing = missing_packages("livecomments")
    if missing:
        print(f"needs the Debian packages: apt-get install -y {' '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)
    import uvloop

    doc = uvloop.run(main_async(sc, args.keep))
    nodes = "-".join(str(n) for n in sc.nodes)
    out = (
        Path(args.out) if args.out else RESULTS / f"2026-12-02-i15-scale-{sc.viewers}-{nodes}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print_tables(report_tables(doc), args.markdown)
    print(f"written to {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()
