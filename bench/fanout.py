"""Fan-out benchmark: the same viewers and poster against livecomments, nginx+nchan, Pushpin.

    .venv/bin/python -m bench.fanout --viewers 2000 --videos 1 --rate 5 --duration 10
    .venv/bin/python -m bench.fanout --viewers 10000 --find-max
    .venv/bin/python -m bench.fanout ... --targets nchan,livecomments --json

The targets run one after another in one run, each started fresh on loopback,
so results are ratios on the same machine at the same moment. For each target:

1. start it; read the RSS of its fan-out process(es);
2. start the viewer generators (``bench.viewers``, separate processes, up to
   ~9,000 connections each, over 127.0.0.2..N source addresses) and open the N
   SSE connections, timing the ramp (connect rate);
3. read the RSS again: (after - before) / N is the RSS per idle connection;
4. a measured window: post R messages/s for S seconds (open loop, evenly
   spaced: message k is due at k/R, round robin over the videos), then drain
   until every viewer got every accepted message (or nothing new arrived for a
   while, or the drain deadline passed); the CPU seconds of every server
   process (``/proc/PID/stat``) and of the generators (their own
   ``getrusage``) are read around it;
5. stop everything.

``--find-max`` repeats step 4 with the rate raised step by step (short steps)
until the p99 passes 1 s (or messages go missing, viewers are dropped, or the
publisher cannot post at the asked rate), and reports the highest sustained
deliveries/s. Every run stops by itself: durations, drains, connects and the
steps are all bounded.

Latency is what a user experiences, measured the same way for every target:
from the moment the commenter's POST is sent (the poster starts the comment's
text with its wall-clock milliseconds, read just before the request is
written) to the moment a viewer has the event. Next to it, for livecomments,
the server-accept latency: from the comment service's accept time
(``created_at_ms`` in the event, when the payload has it). Reported for each
window besides: the POST's round trip, the achieved post rate against the
asked one (and how late and how many in flight the posts were), the bytes of
an event's SSE frame, and the CPU of every server process per accepted comment
and per delivery, of the generators per event and of the poster per comment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import procstat
from bench.targets import TARGETS, Poster, Target, missing_packages

REPO = Path(__file__).resolve().parent.parent
FIND_MAX_RATES = [2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130, 160, 200]
LATENCY_POINTS = (50, 99, 99.9)


@dataclass(frozen=True)
class Scenario:
    viewers: int
    videos: int
    rate: float
    duration: float
    generators: int
    sources: int
    connect_concurrency: int
    post_concurrency: int
    drain: float  # the most seconds to wait for stragglers after the last post
    settle: float  # seconds between the last connect and the idle RSS reading
    find_max: bool
    step_duration: float
    max_rate: float
    p99_limit_ms: float
    env: dict[str, str] = field(default_factory=dict)  # --env: extra LIVECOMMENTS_* settings


# -- the generator processes -------------------------------------------------------


class Generators:
    """The viewer load-generator processes of one target run."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.conns_per_video: dict[int, int] = {}

    async def start(self, target: Target, videos: list[str], sc: Scenario) -> None:
        sources = [f"127.0.0.{2 + i}" for i in range(sc.sources)]
        per = math.ceil(sc.viewers / sc.generators)
        for g in range(sc.generators):
            lo, hi = g * per, min(sc.viewers, (g + 1) * per)
            if lo >= hi:
                break
            config = {
                "host": target.host, "port": target.port, "path": target.path,
                "videos": videos, "sources": sources, "lo": lo, "hi": hi,
                "concurrency": max(1, sc.connect_concurrency // sc.generators),
            }  # fmt: skip
            await self.spawn(config)
        for i in range(sc.viewers):
            v = i % len(videos)
            self.conns_per_video[v] = self.conns_per_video.get(v, 0) + 1

    async def spawn(self, config: dict[str, Any]) -> None:
        """One generator process (``bench.viewers``) with ``config``, once it answered."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.viewers",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=REPO, limit=64 * 1024 * 1024,
        )  # fmt: skip
        self.procs.append(proc)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(config).encode() + b"\n")
        await self._answer(proc, 30)

    @staticmethod
    async def _answer(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"viewer generator {proc.pid} exited ({proc.returncode})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def command(self, cmd: str, timeout: float = 30) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"cmd": cmd}).encode() + b"\n")
        return list(await asyncio.gather(*(self._answer(p, timeout) for p in self.procs)))

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None and proc.stdin is not None:
                try:
                    proc.stdin.write(b'{"cmd": "close"}\n')
                    proc.stdin.close()
                except (BrokenPipeError, ConnectionResetError):
                    pass
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# -- one measured window ---------------------------------------------------------


async def post_at_rate(
    poster: Poster, rate: float, duration: float, n_videos: int
) -> dict[str, int]:
    """Open loop: message k is due at start + k/rate and goes to video k % n_videos.

    The loop wakes when the next message is due and publishes what is due by
    then: one message a tick when it keeps up (every 5 ms at 200/s), more only
    to catch up after a late wake (or every ``min_interval`` for a batching
    poster). Answers how many it offered, in how many ticks, the most in one
    tick, and how many were still unanswered when the last was published.
    """
    loop = asyncio.get_running_loop()
    total = max(1, round(rate * duration))
    start, wall0 = loop.time(), time.time()
    sent = ticks = biggest = 0
    last_call = -1e9
    while sent < total:
        now = loop.time()
        due = min(total, int((now - start) * rate) + 1)
        if due > sent and now - last_call >= poster.min_interval:
            poster.publish(
                [k % n_videos for k in range(sent, due)],
                [wall0 + k / rate for k in range(sent, due)],
            )
            ticks, biggest = ticks + 1, max(biggest, due - sent)
            sent, last_call = due, now
        if sent >= total:
            break
        wake = max(start + sent / rate, last_call + poster.min_interval)
        await asyncio.sleep(max(0.0, wake - loop.time()))
    return {"offered": total, "ticks": ticks, "max_per_tick": biggest,
            "unanswered": poster.unanswered}  # fmt: skip


def quantile(ordered: list[float], q: float) -> float | None:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else None


def cpu_by_component(target: Target) -> dict[str, float]:
    return {name: procstat.total_cpu(pids) for name, pids in target.components().items()}


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drain(
    gens: Generators, expected: int, deadline: float, quiet: float = 2.0
) -> tuple[int, float]:
    """Wait until the viewers got ``expected`` events, nothing new came for ``quiet`` s,
    or ``deadline`` (monotonic) passed. Returns (events, seconds waited)."""
    started = time.monotonic()
    last_total, last_change = -1, started
    total = 0
    while True:
        total = sum(a["events"] for a in await gens.command("count"))
        now = time.monotonic()
        if total >= expected or now >= deadline:
            break
        if total != last_total:
            last_total, last_change = total, now
        elif now - last_change >= quiet:
            break
        await asyncio.sleep(0.1)
    return total, time.monotonic() - started


async def measure(
    target: Target, gens: Generators, poster: Poster, rate: float, duration: float, sc: Scenario
) -> dict[str, Any]:
    started = await gens.command("window")
    alive: dict[int, int] = {}
    for answer in started:
        for v, n in answer["alive"].items():
            alive[int(v)] = alive.get(int(v), 0) + n
    gens.conns_per_video = alive
    dropped_before = sum(a["dropped_before"] for a in started)
    poster.reset()
    cpu0, me0 = cpu_by_component(target), self_cpu()
    t0 = time.time()
    schedule = await post_at_rate(poster, rate, duration, sc.videos)
    posting_done = time.time()
    await poster.drain(timeout=max(10.0, sc.drain))
    posted = time.time()
    expected = sum(poster.accepted[v] * n for v, n in gens.conns_per_video.items())
    _, waited = await drain(gens, expected, time.monotonic() + sc.drain)
    t1 = time.time()
    cpu1, me1 = cpu_by_component(target), self_cpu()
    parts = await gens.command("collect")
    return summarize(
        target, gens, poster, parts, schedule=schedule, rate=rate, duration=duration,
        t0=t0, t1=t1, posting_done=posting_done, posted=posted, drained=waited,
        cpu={k: cpu1.get(k, 0.0) - cpu0.get(k, 0.0) for k in cpu1}, poster_cpu=me1 - me0,
        dropped_before=dropped_before,
    )  # fmt: skip


def summarize(
    target: Target,
    gens: Generators,
    poster: Poster,
    parts: list[dict[str, Any]],
    *,
    schedule: dict[str, int],
    rate: float,
    duration: float,
    t0: float,
    t1: float,
    posting_done: float,
    posted: float,
    drained: float,
    cpu: dict[str, float],
    poster_cpu: float,
    dropped_before: int,
) -> dict[str, Any]:
    events = sum(p["events"] for p in parts)
    hist = procstat.merge_hist(p["hist"] for p in parts)
    hist_accept = procstat.merge_hist(p.get("hist_accept", {}) for p in parts)
    per_video: dict[int, list[int]] = {}
    for part in parts:
        for v, row in part["videos"].items():
            acc = per_video.setdefault(int(v), [0, 0, 0, 0])
            for i in range(4):
                acc[i] += row[i]
    missing = extra = 0
    for v, (conns, new, _dups, _late) in per_video.items():
        expected_v = conns * poster.accepted[v]
        missing += max(0, expected_v - new)
        extra += max(0, new - expected_v)
    last_recv = max((p["last_recv"] for p in parts), default=0.0) / 1000
    span = max(duration, last_recv - t0) if last_recv else duration
    accepted = sum(poster.accepted)
    fanout = sum(cpu.get(c, 0.0) for c in target.fanout_components())
    server = sum(cpu.values()) - cpu.get("grip-backend", 0.0)
    gen_cpu = sum(p["cpu"] for p in parts)
    window = t1 - t0
    rtts = sorted(poster.rtts)
    lags = sorted(poster.lags)
    sc_videos = max(1, len(gens.conns_per_video))
    cores = os.cpu_count() or 1
    event_bytes = sum(p.get("event_bytes", 0) for p in parts)

    def per_delivery(seconds: float) -> float | None:
        return seconds / events * 1e6 if events else None

    def per_comment(seconds: float) -> float | None:  # ms of CPU per accepted message
        return seconds / accepted * 1e3 if accepted else None

    return {
        "rate": rate,
        "duration": duration,
        "offered_msgs": schedule["offered"],
        "accepted_msgs": accepted,
        "post_errors": poster.errors,
        "first_post_error": poster.first_error,
        # accepted/s, until the last answer: an answer that comes late counts as late
        "post_rate": accepted / max(duration, poster.last_answer - t0),
        "post_schedule": {
            "ticks": schedule["ticks"],
            "max_per_tick": schedule["max_per_tick"],
            "unanswered_at_posting_end": schedule["unanswered"],
            "peak_unanswered": poster.peak_unanswered,
            "late": sum(1 for lag in lags if lag > poster.LATE_MS),
            "late_limit_ms": poster.LATE_MS,
            "lag_ms": {
                "p50": quantile(lags, 0.5),
                "p99": quantile(lags, 0.99),
                "max": lags[-1] if lags else None,
            },
        },
        "publish_rtt_ms": {"p50": quantile(rtts, 0.5), "p99": quantile(rtts, 0.99)},
        "posting_s": posting_done - t0,
        "publish_drain_s": posted - posting_done,
        "drain_s": drained,
        "window_s": window,
        "expected_deliveries": sum(poster.accepted[v] * n for v, n in gens.conns_per_video.items()),
        "deliveries": events,
        "deliveries_per_s": events / span,
        "offered_deliveries_per_s": rate * sum(gens.conns_per_video.values()) / sc_videos,
        "latency_from": "send",  # the commenter's send; before: the accept or publish time
        "latency_ms": procstat.percentiles(hist, LATENCY_POINTS),
        "latency_events": sum(hist.values()),
        "accept_latency_ms": procstat.percentiles(hist_accept, LATENCY_POINTS),
        "accept_latency_events": sum(hist_accept.values()),
        "events_without_send_time": sum(p.get("no_send_time", 0) for p in parts),
        "bytes_per_event": event_bytes / events if events else None,
        "missing": missing,
        "unexpected": extra,
        "duplicates": sum(r[2] for r in per_video.values()),
        "reordered": sum(r[3] for r in per_video.values()),
        "viewers": sum(gens.conns_per_video.values()),
        "dropped_before_window": dropped_before,
        "disconnects": sum(p["disconnects"] for p in parts),
        "parse_errors": sum(p["parse_errors"] for p in parts),
        "cpu_s": {k: round(v, 3) for k, v in sorted(cpu.items())},
        "fanout_cpu_s": fanout,
        "server_cpu_s": server,
        "generator_cpu_s": gen_cpu,
        "generator_cpu_per_process": [round(p["cpu"], 3) for p in parts],
        "poster_cpu_s": poster_cpu,
        "fanout_us_per_delivery": per_delivery(fanout),
        "server_us_per_delivery": per_delivery(server),
        "generator_us_per_delivery": per_delivery(gen_cpu),
        "cpu_ms_per_comment": {k: per_comment(v) for k, v in sorted(cpu.items())},
        "cpu_us_per_delivery": {k: per_delivery(v) for k, v in sorted(cpu.items())},
        "server_ms_per_comment": per_comment(server),
        "poster_ms_per_comment": per_comment(poster_cpu),
        "generator_busy": gen_cpu / (window * len(parts)) if parts else None,
        "machine_busy": (sum(cpu.values()) + gen_cpu + poster_cpu) / (window * cores),
    }  # fmt: skip


# -- one target ------------------------------------------------------------------


async def run_target(name: str, sc: Scenario, prefix: str, keep: bool) -> dict[str, Any]:
    target = TARGETS[name](keep_dir=keep)
    target.env = dict(sc.env)
    gens = Generators()
    poster: Poster | None = None
    failed = True
    out: dict[str, Any] = {"target": name}
    try:
        log(f"[{name}] starting")
        await target.start()
        videos = target.video_names(f"{prefix}{name[:2]}", sc.videos)
        await asyncio.sleep(0.5)
        rss0 = procstat.total_rss_kb(target.fanout_pids())
        await gens.start(target, videos, sc)
        log(f"[{name}] connecting {sc.viewers} viewers")
        answers = await gens.command("connect", timeout=300)
        connected = sum(a["connected"] for a in answers)
        started = min(a["started"] for a in answers)
        ramp = max(a["last_ready"] for a in answers) - started
        await asyncio.sleep(sc.settle)
        rss1 = procstat.total_rss_kb(target.fanout_pids())
        out["connect"] = {
            "connected": connected,
            "failed": sum(a["failed"] for a in answers),
            "ramp_s": ramp,
            "per_s": connected / ramp if ramp > 0 else None,
        }
        out["rss"] = {
            "before_kb": rss0,
            "idle_kb": rss1,
            "per_idle_conn_bytes": (rss1 - rss0) * 1024 / connected if connected else None,
        }
        log(f"[{name}] {connected} connected in {ramp:.1f}s; RSS {rss0} -> {rss1} KiB")
        if connected == 0:
            raise RuntimeError("no viewer could connect")
        poster = target.poster(videos, sc.post_concurrency)
        await poster.open()
        if sc.find_max:
            out["steps"] = await find_max(name, target, gens, poster, sc)
            good = [s for s in out["steps"] if s["sustained"]]
            best = max(good, key=lambda s: s["deliveries_per_s"]) if good else None
            out["max_sustained_deliveries_per_s"] = best["deliveries_per_s"] if best else 0.0
            out["max_sustained_rate"] = best["rate"] if best else 0.0
            out["max_sustained_step"] = {
                k: best[k] if best else None
                for k in ("fanout_us_per_delivery", "server_us_per_delivery", "machine_busy")
            }
            out["max_sustained_step"]["p99_ms"] = best["latency_ms"]["p99"] if best else None
        else:
            log(f"[{name}] posting {sc.rate}/s for {sc.duration}s")
            out["window"] = await measure(target, gens, poster, sc.rate, sc.duration, sc)
            w = out["window"]
            log(
                f"[{name}] {w['deliveries']} deliveries, p99 from send"
                f" {w['latency_ms']['p99']} ms (from accept {w['accept_latency_ms']['p99']} ms),"
                f" {w['post_rate']:.1f} of {sc.rate:g} msg/s, missing {w['missing']}"
            )
            if w["events_without_send_time"]:
                log(f"[{name}] {w['events_without_send_time']} events without a send time")
            ps = w["post_schedule"]
            if ps["late"]:
                log(
                    f"[{name}] the poster fell behind its schedule: {ps['late']} posts late,"
                    f" up to {ps['lag_ms']['max']:.0f} ms, up to {ps['max_per_tick']} in one tick"
                )
        out["rss"]["after_load_kb"] = procstat.total_rss_kb(target.fanout_pids())
        failed = False
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        log(f"[{name}] FAILED: {out['error']}")
    finally:
        if poster is not None:
            await poster.close()
        await gens.close()
        await target.stop()
        target.cleanup(failed)
    return out


async def find_max(
    name: str, target: Target, gens: Generators, poster: Poster, sc: Scenario
) -> list[dict[str, Any]]:
    steps = []
    for rate in [r for r in FIND_MAX_RATES if r <= sc.max_rate]:
        step = await measure(target, gens, poster, rate, sc.step_duration, sc)
        p99 = step["latency_ms"]["p99"]
        reasons = []
        if p99 is None or p99 > sc.p99_limit_ms:
            reasons.append(f"p99 {p99} ms")
        if step["missing"]:
            reasons.append(f"{step['missing']} missing")
        if step["disconnects"]:
            reasons.append(f"{step['disconnects']} dropped")
        if step["post_rate"] < 0.9 * rate:
            reasons.append(f"posted only {step['post_rate']:.1f}/s")
        step["sustained"] = not reasons
        step["stopped_by"] = ", ".join(reasons)
        steps.append(step)
        log(
            f"[{name}] {rate}/s: {step['deliveries_per_s']:.0f} deliveries/s, p99 {p99} ms,"
            f" fan-out {fmt(step['fanout_us_per_delivery'], 1)} us/delivery"
            + (f" -> stop: {step['stopped_by']}" if reasons else "")
        )
        if reasons:
            break
        await asyncio.sleep(0.5)
    return steps


# -- report ----------------------------------------------------------------------


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S ") + message, file=sys.stderr, flush=True)


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def latency_cell(lat: dict[str, Any]) -> str:
    if lat["p50"] is None:
        return "-"
    return " / ".join(fmt(lat[k]) for k in ("p50", "p99", "p99.9", "max"))


def window_rows(w: dict[str, Any]) -> list[tuple[str, str]]:
    """A window's rows; a document saved before the latency was taken from the send
    (no ``latency_from``) gets its old rows, labelled with what they measured."""
    lat = w["latency_ms"]
    sent = w.get("latency_from") == "send"
    name = "latency from send" if sent else "latency from accept (ours) / publish (peers)"
    rtt = w["publish_rtt_ms"]
    rows = [
        ("viewers in the window (dropped before)",
         f"{w['viewers']:,} ({w['dropped_before_window']:,})"),
        ("messages accepted / offered", f"{w['accepted_msgs']:,} / {w['offered_msgs']:,}"),
        ("publish rate achieved / asked (msg/s)" if sent else "publish rate achieved (msg/s)",
         f"{fmt(w['post_rate'], 1)} / {fmt(w['rate'], 1)}" if sent else fmt(w["post_rate"], 1)),
    ]  # fmt: skip
    if "post_schedule" in w:
        ps = w["post_schedule"]
        rows += [
            ("posts late > 10 ms (send lag p99 / max ms)",
             f"{ps['late']:,} ({fmt(ps['lag_ms']['p99'], 1)} / {fmt(ps['lag_ms']['max'], 1)})"),
            ("posts unanswered at posting end (peak)",
             f"{ps['unanswered_at_posting_end']:,} ({ps['peak_unanswered']:,})"),
            ("most posts in one scheduler tick", fmt(ps["max_per_tick"])),
        ]  # fmt: skip
    rows += [
        ("publish round trip p50 / p99 (ms)", f"{fmt(rtt['p50'], 1)} / {fmt(rtt['p99'], 1)}"),
        ("deliveries (expected)", f"{w['deliveries']:,} ({w['expected_deliveries']:,})"),
        ("deliveries/s", fmt(w["deliveries_per_s"])),
        (f"{name} p50 (ms)", fmt(lat["p50"])),
        (f"{name} p99 (ms)", fmt(lat["p99"])),
        (f"{name} p99.9 (ms)", fmt(lat["p99.9"])),
        (f"{name} max (ms)", fmt(lat["max"])),
    ]
    if sent:
        rows += [
            ("server-accept latency p50 / p99 / p99.9 / max (ms)",
             latency_cell(w["accept_latency_ms"])),
            ("bytes per event (SSE frame)", fmt(w["bytes_per_event"], 0)),
        ]  # fmt: skip
        if w["events_without_send_time"]:
            rows.append(("events without a send time", fmt(w["events_without_send_time"])))
    rows += [
        ("missing / duplicated / reordered",
         f"{w['missing']:,} / {w['duplicates']:,} / {w['reordered']:,}"),
        ("viewers dropped during the window", fmt(w["disconnects"])),
        ("fan-out CPU s (us/delivery)",
         f"{w['fanout_cpu_s']:.2f} ({fmt(w['fanout_us_per_delivery'], 2)})"),
        ("all server CPU s (us/delivery)",
         f"{w['server_cpu_s']:.2f} ({fmt(w['server_us_per_delivery'], 2)})"),
    ]  # fmt: skip
    comments = w["accepted_msgs"]
    rows += [
        ("all server CPU ms/comment",
         fmt(w["server_cpu_s"] / comments * 1e3 if comments else None, 2)),
        ("generator CPU s (us/event, busy)",
         f"{w['generator_cpu_s']:.2f} ({fmt(w['generator_us_per_delivery'], 2)},"
         f" {w['generator_busy'] * 100:.0f}%)"),
        ("poster CPU s (ms/comment)",
         f"{w['poster_cpu_s']:.2f}"
         f" ({fmt(w['poster_cpu_s'] / comments * 1e3 if comments else None, 2)})"),
        ("machine busy (all cores)", f"{w['machine_busy'] * 100:.0f}%"),
        ("window s (posting + drain)", f"{w['window_s']:.1f}"),
    ]  # fmt: skip
    return rows


def target_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    if "error" in r:
        return [("error", r["error"])]
    c, m = r["connect"], r["rss"]
    rows = [
        ("viewers connected (failed)", f"{c['connected']:,} ({c['failed']:,})"),
        ("connect rate (conn/s)", fmt(c["per_s"])),
        ("RSS per idle connection (KB)", fmt((m["per_idle_conn_bytes"] or 0) / 1024, 2)),
    ]
    if "window" in r:
        rows += window_rows(r["window"])
    if "max_sustained_deliveries_per_s" in r:
        rows.append(("max sustained deliveries/s", fmt(r["max_sustained_deliveries_per_s"])))
        rows.append(("  at msg/s", fmt(r["max_sustained_rate"])))
        best = r["max_sustained_step"]
        rows.append(("  p99 there (ms)", fmt(best["p99_ms"])))
        rows.append(("  fan-out CPU us/delivery there", fmt(best["fanout_us_per_delivery"], 2)))
        rows.append(("  all server CPU us/delivery there", fmt(best["server_us_per_delivery"], 2)))
        busy = best["machine_busy"]
        rows.append(("  machine busy there", f"{busy * 100:.0f}%" if busy is not None else "-"))
    return rows


Table_ = tuple[str, list[str], list[list[str]]]  # title, column names, rows


def report_tables(doc: dict[str, Any]) -> list[Table_]:
    sc = doc["scenario"]
    title = (
        f"{sc['viewers']:,} viewers / {sc['videos']} videos / "
        + ("find-max" if sc["find_max"] else f"{sc['rate']:g} msg/s for {sc['duration']:g}s")
        + f" — {doc['machine']['cpus']} cores, loopback"
        + "".join(f", {k}={v}" for k, v in sorted(sc.get("env", {}).items()))
    )
    results = doc["results"]
    rows = [target_rows(r) for r in results]
    names: list[str] = []
    for rs in rows:
        names += [n for n, _ in rs if n not in names]
    tables: list[Table_] = [
        (
            title,
            ["metric", *[r["target"] for r in results]],
            [[n, *[dict(rs).get(n, "") for rs in rows]] for n in names],
        )
    ]
    last = " (the last step)" if sc["find_max"] else ""
    cpu_rows = []
    for r in results:
        w = r.get("window") or (r.get("steps") or [None])[-1]
        if not w:
            continue
        comments, events = w["accepted_msgs"], w["deliveries"]  # computed: old files too
        cpu_rows += [
            [r["target"], c, f"{secs:.2f}",
             fmt(secs / comments * 1e3 if comments else None, 3),
             fmt(secs / events * 1e6 if events else None, 2)]
            for c, secs in w["cpu_s"].items()
        ]  # fmt: skip
    tables.append(
        (f"server CPU by process during the window{last}",
         ["target", "process", "CPU s", "ms/comment", "us/delivery"], cpu_rows)
    )  # fmt: skip
    for r in results:
        if "steps" not in r:
            continue
        step_rows = []
        for st in r["steps"]:
            lat = st["latency_ms"]
            accept_p99 = st.get("accept_latency_ms", {}).get("p99")
            step_rows.append([
                fmt(st["rate"]), fmt(st["offered_deliveries_per_s"]),
                fmt(st["deliveries_per_s"]), fmt(lat["p50"]), fmt(lat["p99"]), fmt(lat["max"]),
                fmt(accept_p99),
                fmt(st["missing"]), fmt(st["fanout_us_per_delivery"], 2),
                fmt(st["server_us_per_delivery"], 2), fmt(st["generator_us_per_delivery"], 2),
                f"{st['generator_busy'] * 100:.0f}%", f"{st['machine_busy'] * 100:.0f}%",
                st["stopped_by"],
            ])  # fmt: skip
        tables.append((
            f"{r['target']}: rate steps ({sc['step_duration']:g}s each)",
            ["msg/s", "offered del/s", "deliveries/s", "p50 ms", "p99 ms", "max ms",
             "accept p99 ms", "missing",
             "fan-out us/del", "server us/del", "gen us/del", "gen busy", "machine busy", "stop"],
            step_rows,
        ))  # fmt: skip
    return tables


def print_tables(tables: list[Table_], markdown: bool = False) -> None:
    """Tables in Markdown (for docs/) or drawn with rich (for a terminal)."""
    if markdown:
        for title, columns, rows in tables:
            print(f"**{title}**\n")
            print("| " + " | ".join(columns) + " |")
            print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
            for row in rows:
                print("| " + " | ".join(row) + " |")
            print()
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    for title, columns, rows in tables:
        table = Table(title=title)
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def print_report(doc: dict[str, Any], markdown: bool = False) -> None:
    print_tables(report_tables(doc), markdown)
    if doc.get("ratios"):
        print(("ratios: `{}`\n" if markdown else "ratios: {}").format(json.dumps(doc["ratios"])))


def ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    """livecomments against each peer: throughput (x), p99 and CPU per delivery (/)."""
    by = {r["target"]: r for r in results if "error" not in r}
    ours = by.get("livecomments")
    if ours is None:
        return {}
    out: dict[str, Any] = {}
    for peer in ("nchan", "pushpin"):
        theirs = by.get(peer)
        if theirs is None:
            continue
        entry: dict[str, Any] = {}
        if "window" in ours and "window" in theirs:
            a, b = ours["window"], theirs["window"]
            for key in ("deliveries_per_s", "fanout_us_per_delivery", "server_us_per_delivery",
                        "bytes_per_event"):  # fmt: skip
                if a.get(key) and b.get(key):
                    entry[f"{key} ours/theirs"] = round(a[key] / b[key], 3)
            if a["latency_ms"]["p99"] is not None and b["latency_ms"]["p99"]:
                entry["p99 ours/theirs"] = round(a["latency_ms"]["p99"] / b["latency_ms"]["p99"], 3)
        if theirs.get("max_sustained_deliveries_per_s"):
            entry["max sustained ours/theirs"] = round(
                ours.get("max_sustained_deliveries_per_s", 0)
                / theirs["max_sustained_deliveries_per_s"], 3,
            )  # fmt: skip
            a, b = ours.get("max_sustained_step") or {}, theirs["max_sustained_step"]
            for key in ("fanout_us_per_delivery", "server_us_per_delivery"):
                if a.get(key) and b.get(key):
                    entry[f"{key} at max ours/theirs"] = round(a[key] / b[key], 3)
        a_rss = ours["rss"]["per_idle_conn_bytes"]
        b_rss = theirs["rss"]["per_idle_conn_bytes"]
        if a_rss and b_rss:
            entry["rss per conn ours/theirs"] = round(a_rss / b_rss, 3)
        out[f"livecomments vs {peer}"] = entry
    return out


# -- entry point -----------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[Scenario, list[str], argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="python -m bench.fanout", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    p.add_argument("--targets", default="livecomments,nchan,pushpin")
    p.add_argument("--viewers", type=int, default=None,
                   help="default 2,000 (10,000 with --find-max)")  # fmt: skip
    p.add_argument("--videos", type=int, default=1)
    p.add_argument("--rate", type=float, default=5.0, help="messages/s, all videos together")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of posting")
    p.add_argument("--find-max", action="store_true",
                   help="raise the rate step by step until p99 passes --p99-limit")  # fmt: skip
    p.add_argument("--step-duration", type=float, default=5.0)
    p.add_argument("--max-rate", type=float, default=200.0)
    p.add_argument("--p99-limit", type=float, default=1000.0, help="ms")
    p.add_argument("--generators", type=int, default=0,
                   help="viewer processes (0: one per 9,000 viewers, at least 2)")  # fmt: skip
    p.add_argument("--sources", type=int, default=8, help="source addresses 127.0.0.2..")
    p.add_argument("--connect-concurrency", type=int, default=100,
                   help="connects in flight, all generators together")  # fmt: skip
    p.add_argument("--post-concurrency", type=int, default=64)
    p.add_argument("--drain", type=float, default=0.0,
                   help="most seconds to wait after the last post"
                   " (0: max(5, duration/2))")  # fmt: skip
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for livecomments' processes, e.g. "
                   "LIVECOMMENTS_VIRAL_DELIVERIES=0 (repeatable; other targets ignore it)",
                   )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep each target's temp dir and logs")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--report", metavar="FILE", help="print the tables of a saved --json document")
    p.add_argument("--markdown", action="store_true", help="tables in Markdown (docs)")
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        p.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    if args.viewers is None:
        args.viewers = 10_000 if args.find_max else 2000
    generators = args.generators or max(2, math.ceil(args.viewers / 9000))
    if args.viewers / generators > 9500:
        p.error("more than ~9,500 viewers per generator process (20K open files each)")
    duration = args.step_duration if args.find_max else args.duration
    sc = Scenario(
        viewers=args.viewers, videos=args.videos, rate=args.rate, duration=args.duration,
        generators=generators, sources=args.sources,
        connect_concurrency=args.connect_concurrency, post_concurrency=args.post_concurrency,
        drain=args.drain or max(5.0, duration / 2), settle=args.settle, find_max=args.find_max,
        step_duration=args.step_duration, max_rate=args.max_rate, p99_limit_ms=args.p99_limit,
        env=dict(parse_env(p, item) for item in args.env),
    )  # fmt: skip
    return sc, targets, args


def parse_env(p: argparse.ArgumentParser, item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.startswith("LIVECOMMENTS_"):
        p.error(f"--env {item!r}: expected LIVECOMMENTS_NAME=VALUE")
    return key, value


def check_packages(targets: list[str]) -> None:
    missing: dict[str, list[str]] = {}
    for t in targets:
        pkgs = missing_packages(t)
        if pkgs:
            missing[t] = pkgs
    if missing:
        every = sorted({p for pkgs in missing.values() for p in pkgs})
        for t, pkgs in missing.items():
            print(f"target {t!r} needs the Debian packages: {' '.join(pkgs)}", file=sys.stderr)
        print(f"install them (as root): apt-get install -y {' '.join(every)}", file=sys.stderr)
        print("or leave those targets out with --targets", file=sys.stderr)
        raise SystemExit(2)


def code_version() -> dict[str, Any]:
    """Which code was measured: the commit, and the files changed since (the engine moves)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10
            ).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line[:2] != "??"]
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "rtms_commit": git("log", "-1", "--format=%h", "--", "rtms"),
        "changed": changed,
    }


async def main_async(sc: Scenario, targets: list[str], keep: bool) -> dict[str, Any]:
    prefix = f"fo{os.getpid() % 10000}{int(time.time()) % 100000}"
    results = []
    for name in targets:
        results.append(await run_target(name, sc, prefix, keep))
        await asyncio.sleep(1.0)  # let the kernel reap the previous run's sockets
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        },
        "code": code_version(),
        "scenario": asdict(sc),
        "results": results,
        "ratios": ratios(results),
    }


def main(argv: list[str] | None = None) -> None:
    sc, targets, args = parse_args(argv)
    if args.report:
        print_report(json.loads(Path(args.report).read_text()), args.markdown)
        return
    check_packages(targets)
    import uvloop

    doc = uvloop.run(main_async(sc, targets, args.keep))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_report(doc, args.markdown)


if __name__ == "__main__":
    main()
