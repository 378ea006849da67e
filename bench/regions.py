"""The cross-region hop of a three-region deployment, simulated on loopback.

    .venv/bin/python -m bench.regions                        # one-way 0, 35 and 75 ms
    .venv/bin/python -m bench.regions --delays-ms 0,75 --viewers 20 --duration 5
    .venv/bin/python -m bench.regions --json bench/results/FILE.json
    .venv/bin/python -m bench.regions --report bench/results/FILE.json --markdown

The video's home region H holds the comment service, the dispatcher and the
RTMS node ``near``. The RTMS node(s) ``far-N`` stand in another region: the
dispatcher reaches their Delivery gRPC only through a delay proxy
(``bench/delay_proxy.py``: a one-way delay each way, made in user space, as
there is no netem here), whose address each far node publishes in ZooKeeper
as its ``LIVECOMMENTS_GRPC_ADVERTISE``. The proxy relays the gRPC's mutual TLS
untouched. The video is pinned to every node (``livecomments pin``'s recipe);
``--viewers`` viewers watch it on each node (one ``bench.viewers`` process per
node, straight to its ``/stream`` with ``?redirected=1``, plain HTTP).

One cluster for the whole run; each one-way delay of ``--delays-ms`` is a step
(35 ms is about US-East to US-West or Europe, 75 ms about the US to Asia-Pacific).
A step sets the delay and measures two windows of ``--rate`` comments/s for
``--duration`` s each (open loop), each after a warm-up (a burst that opens
the poster's ``--post-concurrency`` connections, then ``--warmup`` s at the
rate, all delivered before the window starts):

1. ``local``: the commenter is in H and posts straight to the comment service;
2. ``remote``: the commenter is in region A (the paper design's worst path):
   its POSTs reach the comment service's HTTPS port through a second delay
   proxy with the same one-way delay, on kept-alive connections (a new one
   would pay its TLS handshake across the link: the proxies count them).

For every delivery, send -> receive on the client's clock (the comment's text
starts with its send time) per region: p50, p90, p99, max, and accept ->
receive (from the comment service's accept time in the event); and every
viewer must have every accepted comment exactly once (checked per viewer).
What a Deliver on an open stream should cost is one one-way trip, so far -
near should be about the delay, and a remote post should add about the
delay to both regions. Also reported: the POST's round trip, the comment
service's mean time in its write stages (``post_stage_duration_seconds``:
dispatch lasts until every hosting node answered), and how late the proxies
released bytes against their due time (their own error). Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import ssl
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import procstat
from bench.fanout import (
    Generators,
    Table_,
    code_version,
    drain,
    fmt,
    post_at_rate,
    print_tables,
    quantile,
)
from bench.targets import LiveCommentsPoster, LiveCommentsTarget

REPO = Path(__file__).resolve().parent.parent
VIDEO = "regions"
NEAR = "near"
POINTS = (50, 90, 99)
ZK_DEADLINE = 30.0
STAGE = re.compile(
    r'^livecomments_post_stage_duration_seconds_(sum|count)\{[^}]*stage="(\w+)"[^}]*\} (\S+)$'
)


@dataclass(frozen=True)
class RegionsConfig:
    delays_ms: tuple[float, ...]
    viewers: int  # per RTMS node
    far_nodes: int
    rate: float
    duration: float
    warmup: float
    drain: float
    post_path: bool
    post_concurrency: int


# -- processes ------------------------------------------------------------------------


class Proxy:
    """A ``bench.delay_proxy`` process, told its delay over its stdin."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, upstream: str) -> int:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.delay_proxy", upstream,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        self.port = int((await self._answer())["port"])
        return self.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _answer(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        if not line:
            raise RuntimeError(f"delay proxy {self.name} exited ({self.proc.returncode})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def command(self, **command: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        return await self._answer()

    async def close(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # end of stdin: it stops
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@dataclass
class Region:
    """One RTMS node and the viewers watching on it."""

    node: str
    port: int  # its SSE listener
    one_way_ms: float = 0.0  # to the home region, this step
    gens: Generators | None = None
    alive: int = 0


class Run:
    """Backends, the cluster, the proxies, the viewers and the posters of one run."""

    def __init__(self, rc: RegionsConfig, run_dir: Path) -> None:
        self.rc = rc
        self.run_dir = run_dir
        self.backends: Any = None
        self.cluster: Any = None
        self.far_proxies = [Proxy(f"far-{i}") for i in range(1, rc.far_nodes + 1)]
        self.post_proxy = Proxy("post")
        self.regions: list[Region] = []
        self.posters: dict[str, LiveCommentsPoster] = {}
        self.published: dict[str, str] = {}

    @property
    def proxies(self) -> list[Proxy]:
        return [*self.far_proxies, *([self.post_proxy] if self.post_proxy.proc else [])]

    async def start(self) -> None:
        from livecomments.cli.cluster import Backends
        from livecomments.cli.launcher import free_port

        self.backends = await asyncio.to_thread(Backends.start, self.run_dir, memory_store=True)
        grpc_ports = [free_port() for _ in self.far_proxies]
        for proxy, port in zip(self.far_proxies, grpc_ports, strict=True):
            await proxy.start(f"127.0.0.1:{port}")  # it dials when dialed: the node may come later
        await asyncio.to_thread(self._start_cluster, grpc_ports)
        comment = self.cluster.services["comment-1"].url
        if self.rc.post_path:
            await self.post_proxy.start(comment.split("://", 1)[1])
        await self._pin()
        await self._check_published()
        await asyncio.sleep(1.0)  # the nodes' and the comment service's mirrors see the pin
        for region in self.regions:
            region.gens = await self._viewers(region)
        context = ssl.create_default_context(cafile=self.cluster.ca_file)
        bases = {"local": comment}
        if self.rc.post_path:
            bases["remote"] = f"https://{self.post_proxy.address}"
        for name, base in bases.items():
            poster = LiveCommentsPoster(base, [VIDEO], self.rc.post_concurrency)
            poster.ssl_context = context
            await poster.open()
            self.posters[name] = poster

    def _start_cluster(self, grpc_ports: list[int]) -> None:
        from livecomments.cli.cluster import Cluster
        from livecomments.cli.launcher import wait_ready

        # HTTPS for the comment service (the commenter's link); the viewers'
        # generators speak plain HTTP, so the RTMS nodes serve it.
        self.cluster = Cluster(
            self.run_dir, self.backends, namespace="regions", tls=True,
            extra_env={**LiveCommentsTarget.ENV, "LIVECOMMENTS_PASSWORD_HASHING": "test-only"},
        )  # fmt: skip
        plain = {"LIVECOMMENTS_TLS_CERT": "", "LIVECOMMENTS_TLS_KEY": ""}
        c = self.cluster
        try:
            started = [c.start_dispatcher(wait=False)]
            started.append(c.start_rtms(wait=False, env={**plain, "LIVECOMMENTS_NODE_ID": NEAR}))
            self.regions = [Region(NEAR, _port(started[-1].url))]
            for proxy, grpc_port in zip(self.far_proxies, grpc_ports, strict=True):
                started.append(c.start_rtms(wait=False, env={
                    **plain, "LIVECOMMENTS_NODE_ID": proxy.name,
                    "LIVECOMMENTS_GRPC_PORT": str(grpc_port),
                    "LIVECOMMENTS_GRPC_ADVERTISE": proxy.address,
                }))  # fmt: skip
                self.regions.append(Region(proxy.name, _port(started[-1].url)))
            started.append(c.start_comment_service(wait=False))
            for service in started:
                wait_ready(service.proc)
        except BaseException:
            c.stop()
            raise

    async def _intent(self, work: Any) -> Any:
        from livecomments.cli.ops import session
        from livecomments.kernel import settings as cfg

        settings = cfg.load(cfg.BackendSettings, environ=self.cluster.base_env())
        return await asyncio.wait_for(session(settings, work), ZK_DEADLINE)

    async def _pin(self) -> None:
        nodes = [r.node for r in self.regions]
        await self._intent(lambda intents: intents.pin(VIDEO, nodes))

    async def _check_published(self) -> None:
        """The far nodes' ZooKeeper records name their proxies (or the run means nothing)."""
        snap = await self._intent(lambda intents: intents.snapshot())
        self.published = {node: report.grpc for node, report in sorted(snap.rtms.items())}
        for proxy in self.far_proxies:
            if self.published.get(proxy.name) != proxy.address:
                raise RuntimeError(
                    f"{proxy.name} publishes {self.published.get(proxy.name)!r},"
                    f" not its proxy {proxy.address}"
                )

    async def _viewers(self, region: Region) -> Generators:
        gens = Generators()
        await gens.spawn({
            "host": "127.0.0.1", "port": region.port, "path": LiveCommentsTarget.path,
            "videos": [VIDEO], "sources": ["127.0.0.2", "127.0.0.3"],
            "lo": 0, "hi": self.rc.viewers, "concurrency": 50,
        })  # fmt: skip
        [answer] = await gens.command("connect", timeout=60)
        if answer["failed"]:
            raise RuntimeError(f"{answer['failed']} viewers could not connect to {region.node}")
        return gens

    async def stop(self) -> None:
        for poster in self.posters.values():
            await poster.close()
        for region in self.regions:
            if region.gens is not None:
                await region.gens.close()
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
        for proxy in [*self.far_proxies, self.post_proxy]:
            await proxy.close()
        if self.backends is not None:
            await asyncio.to_thread(self.backends.stop)

    # -- measuring ------------------------------------------------------------------

    async def set_delay(self, ms: float) -> None:
        for proxy in self.proxies:
            await proxy.command(cmd="delay", ms=ms)
        for region in self.regions:
            region.one_way_ms = 0.0 if region.node == NEAR else ms

    async def stage_sums(self) -> dict[str, tuple[float, float]]:
        """The comment service's write stages so far: (seconds, posts) by stage."""
        poster = self.posters["local"]
        assert poster.session is not None
        url = self.cluster.services["comment-1"].metrics_url
        async with poster.session.get(url) as r:
            text = await r.text()
        sums: dict[str, list[float]] = {}
        for line in text.splitlines():
            m = STAGE.match(line)
            if m:
                row = sums.setdefault(m.group(2), [0.0, 0.0])
                row[m.group(1) == "count"] += float(m.group(3))
        return {stage: (row[0], row[1]) for stage, row in sums.items()}

    async def warm_up(self, path: str) -> None:
        """Just before a window: a burst of ``post_concurrency`` posts at once (that many
        connections, TLS included, kept alive through the window: none is opened in it),
        then ``warmup`` s at the rate; the viewers get all of it before the window."""
        poster = self.posters[path]
        for region in self.regions:
            assert region.gens is not None
            await region.gens.command("window")
        poster.reset()
        burst = self.rc.post_concurrency
        poster.publish([0] * burst, [time.time()] * burst)
        await poster.drain(timeout=10)
        await post_at_rate(poster, self.rc.rate, self.rc.warmup, 1)
        await poster.drain(timeout=10)
        for region in self.regions:
            assert region.gens is not None
            await drain(region.gens, poster.accepted[0] * self.rc.viewers, time.monotonic() + 10)

    async def window(self, path: str, post_ms: float) -> dict[str, Any]:
        """One measured window: posts through ``path`` (local or remote), every region's
        viewers counted."""
        rc, poster = self.rc, self.posters[path]
        for region in self.regions:
            assert region.gens is not None
            [started] = await region.gens.command("window")
            region.alive = sum(started["alive"].values())
        poster.reset()
        stages0 = await self.stage_sums()
        for proxy in self.proxies:
            await proxy.command(cmd="stats")  # the next answer is this window's
        t0 = time.time()
        schedule = await post_at_rate(poster, rc.rate, rc.duration, 1)
        await poster.drain(timeout=max(10.0, rc.drain))
        accepted = poster.accepted[0]
        deadline = time.monotonic() + rc.drain
        regions = []
        for region in self.regions:
            assert region.gens is not None
            await drain(region.gens, accepted * region.alive, deadline)
            [part] = await region.gens.command("collect")
            regions.append(region_result(region, part, accepted))
        proxies = {p.name: await p.command(cmd="stats") for p in self.proxies}
        stages1 = await self.stage_sums()
        rtts = sorted(poster.rtts)
        return {
            "path": path,
            "post_one_way_ms": post_ms,
            "window_s": time.time() - t0,
            "offered": schedule["offered"],
            "accepted": accepted,
            "post_errors": poster.errors,
            "first_post_error": poster.first_error,
            "post_rtt_ms": {f"p{p}": quantile(rtts, p / 100) for p in (50, 99)},
            "stage_mean_ms": stage_means(stages0, stages1),
            "regions": regions,
            "far_minus_near_ms": differences(regions),
            "proxies": proxies,
        }


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def stage_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float | None]:
    """Mean ms per post of each write stage between two reads of the counters."""
    out: dict[str, float | None] = {}
    for stage, (secs, count) in sorted(after.items()):
        secs0, count0 = before.get(stage, (0.0, 0.0))
        n = count - count0
        out[stage] = (secs - secs0) / n * 1e3 if n > 0 else None
    return out


def region_result(region: Region, part: dict[str, Any], accepted: int) -> dict[str, Any]:
    """One region's deliveries in a window, and whether each viewer had each comment once."""
    rows = list(part["videos"].values())
    viewers = sum(r[0] for r in rows)
    unique, dups, late = (sum(r[i] for r in rows) for i in (1, 2, 3))
    per_viewer = part.get("unique_per_viewer", {})
    expected = accepted * region.alive
    exactly_once = (
        viewers == region.alive
        and per_viewer == {str(accepted): region.alive}
        and dups == 0
        and part["events"] == expected
    )
    return {
        "node": region.node,
        "one_way_ms": region.one_way_ms,
        "viewers": region.alive,
        "expected": expected,
        "deliveries": part["events"],
        "missing": max(0, expected - unique),
        "duplicates": dups,
        "reordered": late,
        "unique_per_viewer": per_viewer,
        "exactly_once": exactly_once,
        "disconnects": part["disconnects"],
        "parse_errors": part["parse_errors"],
        "no_send_time": part["no_send_time"],
        "latency_ms": procstat.percentiles(procstat.merge_hist([part["hist"]]), POINTS),
        "accept_latency_ms": procstat.percentiles(
            procstat.merge_hist([part["hist_accept"]]), POINTS
        ),
    }


def differences(regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each far node's percentiles less the near node's (ms)."""
    near = next((r["latency_ms"] for r in regions if r["node"] == NEAR), None)
    out = []
    for r in regions:
        if r["node"] == NEAR or near is None:
            continue
        lat = r["latency_ms"]
        out.append({
            "node": r["node"], "one_way_ms": r["one_way_ms"],
            **{k: None if lat[k] is None or near[k] is None else lat[k] - near[k]
               for k in ("p50", "p90", "p99", "mean")},
        })  # fmt: skip
    return out


# -- the run --------------------------------------------------------------------------


async def main_async(rc: RegionsConfig, keep: bool) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-regions-"))
    run = Run(rc, run_dir)
    steps: list[dict[str, Any]] = []
    doc: dict[str, Any] = {}
    failed = False
    try:
        log(f"starting backends, the cluster and {len(run.far_proxies)} far node(s)")
        await run.start()
        log(f"{rc.viewers} viewers on each of {', '.join(r.node for r in run.regions)}")
        for ms in rc.delays_ms:
            await run.set_delay(ms)
            step: dict[str, Any] = {"one_way_ms": ms, "windows": []}
            for path in ["local", "remote"] if rc.post_path else ["local"]:
                await run.warm_up(path)
                step["windows"].append(await run.window(path, ms if path == "remote" else 0.0))
                log(f"{ms:g} ms: {path} post done")
            steps.append(step)
    except Exception as exc:
        failed = True
        doc["error"] = repr(exc)
        if run.cluster is not None:
            doc["logs"] = run.cluster.logs()[-6000:]
        log(f"failed: {exc!r}")
    finally:
        await run.stop()
        if keep or failed:
            log(f"logs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "machine": {
            "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "code": code_version(),
        "scenario": asdict(rc),
        "published_grpc": run.published,
        "steps": steps,
        **doc,
    }  # fmt: skip


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S ") + "[regions] " + message, file=sys.stderr, flush=True)


# -- tables ---------------------------------------------------------------------------


def _who(w: dict[str, Any]) -> str:
    return "H (local)" if w["path"] == "local" else f"A (+{w['post_one_way_ms']:g} ms)"


def report_tables(doc: dict[str, Any]) -> list[Table_]:
    sc = doc["scenario"]
    what = (
        f"{sc['rate']:g} comments/s for {sc['duration']:g} s per window, {sc['viewers']} viewers"
        f" per node, {doc['machine']['cpus']} cores, loopback"
    )
    rows, diffs, extra = [], [], []
    for step in doc["steps"]:
        for w in step["windows"]:
            for r in w["regions"]:
                lat, acc = r["latency_ms"], r["accept_latency_ms"]
                rows.append([
                    f"{step['one_way_ms']:g}", _who(w), r["node"], f"{r['one_way_ms']:g}",
                    f"{r['deliveries']:,} / {r['expected']:,}",
                    "yes" if r["exactly_once"] else
                    f"NO ({r['missing']} missing, {r['duplicates']} dup)",
                    fmt(lat["p50"]), fmt(lat["p90"]), fmt(lat["p99"]), fmt(lat["max"]),
                    fmt(acc["p50"]),
                ])  # fmt: skip
            for d in w["far_minus_near_ms"]:
                diffs.append([
                    f"{step['one_way_ms']:g}", _who(w), d["node"], fmt(d["p50"]), fmt(d["p90"]),
                    fmt(d["p99"]), fmt(d["mean"], 1), fmt(w["post_rtt_ms"]["p50"], 1),
                    fmt(w["post_rtt_ms"]["p99"], 1),
                    fmt(w["stage_mean_ms"].get("dispatch"), 1),
                    f"{w['accepted']} / {w['offered']}",
                ])  # fmt: skip
            for name, st in w["proxies"].items():
                extra.append([
                    f"{step['one_way_ms']:g}", _who(w), name, fmt(st["connections"]),
                    fmt(st["bytes"]), fmt(st["late_ms_mean"], 2), fmt(st["late_ms_max"], 2),
                ])  # fmt: skip
    tables: list[Table_] = [
        (
            f"send -> receive per region, ms on the client clock ({what})",
            ["one-way ms", "commenter in", "node", "node's one-way ms", "delivered / expected",
             "each viewer each comment once", "p50", "p90", "p99", "max", "accept->recv p50"],
            rows,
        ),
        (
            "far - near (ms), and the write path",
            ["one-way ms", "commenter in", "far node", "p50", "p90", "p99", "mean",
             "POST rtt p50", "POST rtt p99", "dispatch stage mean", "accepted / offered"],
            diffs,
        ),
        (
            "delay proxies in each window (connections opened; late: a release after its due"
            " time)",
            ["one-way ms", "commenter in", "proxy", "connections", "bytes", "late ms mean",
             "late ms max"],
            extra,
        ),
    ]  # fmt: skip
    if doc.get("error"):
        tables.append(("the run failed", ["error"], [[doc["error"]]]))
    return tables


# -- entry point ----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[RegionsConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="python -m bench.regions", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    p.add_argument("--delays-ms", default="0,35,75",
                   help="one-way delays to the far node(s), one step each")  # fmt: skip
    p.add_argument("--viewers", type=int, default=50, help="viewers on each RTMS node")
    p.add_argument("--far-nodes", type=int, default=1, help="RTMS nodes behind the delay")
    p.add_argument("--rate", type=float, default=20.0, help="comments/s")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of posting per window")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of posting before a step")
    p.add_argument("--drain", type=float, default=10.0,
                   help="most seconds to wait for the viewers after the last post")  # fmt: skip
    p.add_argument("--no-post-path", action="store_true",
                   help="skip the remote commenter's window")  # fmt: skip
    p.add_argument("--post-concurrency", type=int, default=16,
                   help="a poster's connections (all opened before a window)")  # fmt: skip
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--report", metavar="PATH", help="print the tables of a saved JSON document")
    p.add_argument("--markdown", action="store_true", help="tables in Markdown (docs)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    args = p.parse_args(argv)
    try:
        delays = tuple(float(x) for x in args.delays_ms.split(",") if x.strip())
    except ValueError:
        p.error(f"--delays-ms {args.delays_ms!r}: a comma-separated list of milliseconds")
    if not delays or min(delays) < 0:
        p.error("--delays-ms: at least one delay, none negative")
    if not 1 <= args.viewers <= 9000 or args.far_nodes < 1 or args.rate <= 0:
        p.error("--viewers 1..9000, --far-nodes >= 1, --rate > 0")
    rc = RegionsConfig(
        delays_ms=delays, viewers=args.viewers, far_nodes=args.far_nodes, rate=args.rate,
        duration=args.duration, warmup=args.warmup, drain=args.drain,
        post_path=not args.no_post_path, post_concurrency=args.post_concurrency,
    )  # fmt: skip
    return rc, args


def main(argv: list[str] | None = None) -> None:
    rc, args = parse_args(argv)
    if args.report:
        print_tables(report_tables(json.loads(Path(args.report).read_text())), args.markdown)
        return
    from bench.targets import missing_packages

    missing = missing_packages("livecomments")
    if missing:
        print(f"needs the Debian packages: apt-get install -y {' '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)
    import uvloop

    doc = uvloop.run(main_async(rc, args.keep))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
    print_tables(report_tables(doc), args.markdown)
    if args.json:
        print(f"written to {args.json}")
    if doc.get("error"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
