"""``livecomments top``: a live terminal view of the cluster, from every process's metrics.

The processes are found in ZooKeeper (each publishes where its metrics are:
RTMS nodes and dispatchers in their membership records, comment services in
their worker leases), scraped together every interval, and shown as rates
between two scrapes. Nothing here is kept: it is an operator's first look, the
dashboard in deploy/grafana is the long view.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import click
import orjson
from prometheus_client.parser import text_string_to_metric_families

from livecomments.cli.ops import session
from livecomments.cli.runtime import load_settings
from livecomments.kernel import metrics as m
from livecomments.kernel import settings as cfg

if TYPE_CHECKING:
    from rich.console import RenderableType

    from livecomments.coord.intents import Intents

SCRAPE_TIMEOUT = 2.0
LOCAL_CA = Path(".run/tls/ca.pem")  # what `livecomments up` made, when run from here

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # rtms | dispatcher | comment-service
    name: str
    url: str  # its /metrics


@dataclass(slots=True)
class Scrape:
    """One process's samples at one moment: sample name -> labels -> value."""

    at: float
    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def parse(cls, text: str, at: float) -> Scrape:
        scrape = cls(at)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                scrape.samples.setdefault(sample.name, {})[labels] = sample.value
        return scrape

    def total(self, name: str, **match: str) -> float:
        """The sum of ``name``'s samples whose labels include ``match``."""
        values = self.samples.get(name, {})
        return sum(v for labels, v in values.items() if match.items() <= dict(labels).items())

    def by(self, name: str, label: str) -> dict[str, float]:
        """``name``'s samples summed per value of ``label``."""
        out: dict[str, float] = {}
        for labels, value in self.samples.get(name, {}).items():
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
        return out


def rate(now: Scrape, before: Scrape | None, name: str, **match: str) -> float:
    """Per second between two scrapes of one process (0 across a restart)."""
    if before is None or before.error or now.at <= before.at:
        return 0.0
    delta = now.total(name, **match) - before.total(name, **match)
    return max(delta, 0.0) / (now.at - before.at)


def quantile(now: Scrape, before: Scrape | None, name: str, q: float) -> float | None:
    """The ``q`` quantile of a histogram's observations between two scrapes (bucket bound)."""
    if before is None or before.error:
        return None
    buckets: dict[float, float] = {}
    for source, sign in ((now, 1.0), (before, -1.0)):
        for le, count in source.by(f"{name}_bucket", "le").items():
            buckets[float(le)] = buckets.get(float(le), 0.0) + sign * count
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    wanted = q * ordered[-1][1]
    for upper, cumulative in ordered:
        if cumulative >= wanted:
            return upper
    return math.inf


def summarize(
    targets: Iterable[Target],
    now: Mapping[Target, Scrape],
    before: Mapping[Target, Scrape],
) -> dict[str, Any]:
    """What ``top`` shows: one row per process and the cluster's totals."""
    rows: dict[str, list[dict[str, Any]]] = {"rtms": [], "dispatcher": [], "comment-service": []}
    for target in sorted(targets, key=lambda t: (t.kind, t.name)):
        scrape, prior = now[target], before.get(target)
        row: dict[str, Any] = {"name": target.name, "metrics": target.url, "up": not scrape.error}
        if scrape.error:
            row["error"] = scrape.error
        elif target.kind == "rtms":
            p99 = quantile(scrape, prior, m.RTMS_LATENCY.name, 0.99)
            row |= {
                "viewers": int(scrape.total(m.RTMS_VIEWERS.name)),
                "connections": int(scrape.total(m.RTMS_CONNECTIONS.name)),
                "videos": int(scrape.total(m.RTMS_CHANNELS.name)),
                "viral_videos": int(scrape.total(m.RTMS_VIRAL_VIDEOS.name)),
                "draining": bool(scrape.total(m.RTMS_DRAINING.name)),
                "events_per_s": rate(scrape, prior, m.RTMS_ACCEPTED.name),
                "deliveries_per_s": rate(scrape, prior, m.RTMS_DELIVERIES.name),
                "slow_drops_per_s": rate(scrape, prior, m.RTMS_SLOW_DROPS.name),
                "fanout_p99_ms": None if p99 is None else p99 * 1000,
                "deliveries": int(scrape.total(m.RTMS_DELIVERIES.name)),
            }
        elif target.kind == "dispatcher":
            row |= {
                "events_per_s": rate(scrape, prior, m.DISPATCHER_EVENTS.name),
                "dropped_per_s": rate(scrape, prior, m.DISPATCHER_DROPPED.name),
                "events": int(scrape.total(m.DISPATCHER_EVENTS.name)),
                "zookeeper": bool(scrape.total(m.ZK_CONNECTED.name)),
            }
        else:
            p99 = quantile(scrape, prior, m.POST_DURATION.name, 0.99)
            row |= {
                "accepted_per_s": rate(scrape, prior, m.POSTS.name, outcome="accepted"),
                "held_per_s": rate(scrape, prior, m.POSTS.name, outcome="held"),
                "refused_per_s": rate(scrape, prior, m.POSTS.name, outcome="refused"),
                "failed_per_s": rate(scrape, prior, m.POSTS.name, outcome="failed"),
                "post_p99_ms": None if p99 is None else p99 * 1000,
                "outbox_depth": int(scrape.total(m.OUTBOX_DEPTH.name)),
                "outbox_oldest_s": scrape.total(m.OUTBOX_AGE.name),
                "accepted": int(scrape.total(m.POSTS.name, outcome="accepted")),
            }
        rows[target.kind].append(row)
    live = {kind: [r for r in kind_rows if r["up"]] for kind, kind_rows in rows.items()}
    comment = live["comment-service"]
    totals = {
        "rtms_nodes": len(live["rtms"]),
        "dispatchers": len(live["dispatcher"]),
        "comment_services": len(comment),
        "down": sum(not r["up"] for kind_rows in rows.values() for r in kind_rows),
        "viewers": sum(r["viewers"] for r in live["rtms"]),
        "videos": sum(r["videos"] for r in live["rtms"]),
        "viral_videos": sum(r["viral_videos"] for r in live["rtms"]),
        "posts_per_s": sum(r["accepted_per_s"] for r in comment),
        "refused_per_s": sum(r["refused_per_s"] for r in comment),
        "held_per_s": sum(r["held_per_s"] for r in comment),
        "deliveries_per_s": sum(r["deliveries_per_s"] for r in live["rtms"]),
        "slow_drops_per_s": sum(r["slow_drops_per_s"] for r in live["rtms"]),
        # The outbox is shared by every replica: each reports the same one.
        "outbox_depth": max((r["outbox_depth"] for r in comment), default=0),
        "outbox_oldest_s": max((r["outbox_oldest_s"] for r in comment), default=0.0),
    }
    return {"totals": totals, **rows}


# -- finding and scraping ------------------------------------------------------------


async def discover(intents: Intents) -> list[Target]:
    snap = await intents.snapshot()
    found = [Target("rtms", n, r.metrics) for n, r in snap.rtms.items() if r.metrics]
    found += [Target("dispatcher", n, d.metrics) for n, d in snap.dispatchers.items() if d.metrics]
    found += [
        Target("comment-service", f"worker-{w.worker_id}", w.metrics)
        for w in snap.workers.values()
        if w.metrics and w.worker_id is not None
    ]
    return found


async def scrape_one(http: aiohttp.ClientSession, target: Target) -> Scrape:
    at = time.monotonic()
    try:
        async with http.get(target.url) as answer:
            if answer.status != 200:
                return Scrape(at, error=f"HTTP {answer.status}")
            text = await answer.text()
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
        return Scrape(at, error=str(exc) or type(exc).__name__)
    try:
        return Scrape.parse(text, at)
    except ValueError as exc:
        return Scrape(at, error=f"not the Prometheus text format: {exc}")


async def scrape_all(http: aiohttp.ClientSession, targets: list[Target]) -> dict[Target, Scrape]:
    scrapes = await asyncio.gather(*(scrape_one(http, t) for t in targets))
    return dict(zip(targets, scrapes, strict=True))


# -- showing -------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def render(doc: dict[str, Any], zk: str) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = doc["totals"]
    head = Text.assemble(
        ("livecomments", "bold"),
        f"  {t['rtms_nodes']} RTMS · {t['dispatchers']} dispatchers · "
        f"{t['comment_services']} comment services",
        (f" · {t['down']} down" if t["down"] else "", "bold red"),
        f"   ZooKeeper {zk}\n",
        f"viewers {_n(t['viewers'])} on {_n(t['videos'])} videos"
        f" ({t['viral_videos']} viral) · posts/s {_n(t['posts_per_s'], 1)}"
        f" (refused {_n(t['refused_per_s'], 1)}, held {_n(t['held_per_s'], 1)})"
        f" · deliveries/s {_n(t['deliveries_per_s'])} · slow drops/s {_n(t['slow_drops_per_s'], 1)}"
        f" · outbox {t['outbox_depth']} (oldest {_n(t['outbox_oldest_s'], 1)} s)",
    )

    def table(title: str, *columns: str) -> Table:
        out = Table(title=title, title_justify="left", expand=False, pad_edge=False)
        for i, column in enumerate(columns):
            out.add_column(column, justify="left" if i == 0 else "right")
        return out

    def down(row: dict[str, Any], width: int) -> list[str]:
        return [row["name"], f"[red]down: {row['error'][:60]}[/red]", *[""] * (width - 2)]

    def rtms_row(r: dict[str, Any]) -> list[str]:
        return [
            r["name"], _n(r["viewers"]), _n(r["videos"]), _n(r["viral_videos"]),
            _n(r["events_per_s"], 1), _n(r["deliveries_per_s"]), _n(r["fanout_p99_ms"], 1),
            _n(r["slow_drops_per_s"], 1), "yes" if r["draining"] else "",
        ]  # fmt: skip

    def dispatcher_row(r: dict[str, Any]) -> list[str]:
        zk = "ok" if r["zookeeper"] else "[red]lost[/red]"
        return [r["name"], _n(r["events_per_s"], 1), _n(r["dropped_per_s"], 1), zk]

    def comment_row(r: dict[str, Any]) -> list[str]:
        return [
            r["name"], _n(r["accepted_per_s"], 1), _n(r["refused_per_s"], 1),
            _n(r["held_per_s"], 1), _n(r["post_p99_ms"], 1), _n(r["outbox_depth"]),
            _n(r["outbox_oldest_s"], 1),
        ]  # fmt: skip

    rtms = table("RTMS nodes", "node", "viewers", "videos", "viral", "events/s", "deliveries/s",
                 "fan-out p99 ms", "slow drops/s", "draining")  # fmt: skip
    dispatchers = table("dispatchers", "replica", "events/s", "dropped/s", "ZooKeeper")
    comments = table("comment services", "worker", "posts/s", "refused/s", "held/s",
                     "post p99 ms", "outbox", "oldest s")  # fmt: skip
    for shown, kind, make in (
        (rtms, "rtms", rtms_row),
        (dispatchers, "dispatcher", dispatcher_row),
        (comments, "comment-service", comment_row),
    ):
        width = len(shown.columns)
        for r in doc[kind]:
            shown.add_row(*(make(r) if r["up"] else down(r, width)))
    return Group(head, rtms, dispatchers, comments)


def _http_session(ca: Path | None, insecure: bool) -> aiohttp.ClientSession:
    context = ssl.create_default_context()
    if ca is not None:
        context.load_verify_locations(ca)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT),
        connector=aiohttp.TCPConnector(ssl=context, limit=64),
    )


@click.command()
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.5, 60))
@click.option("--once", is_flag=True, help="Scrape twice, --interval apart, print, exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: one JSON document.")
@click.option(
    "--ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"CA of HTTPS metrics endpoints (default: {LOCAL_CA} when it exists, `up`'s CA).",
)
@click.option("--insecure", is_flag=True, help="Do not verify HTTPS certificates.")
def top(interval: float, once: bool, as_json: bool, ca: Path | None, insecure: bool) -> None:
    """A live view of the cluster: nodes, viewers, posts/s, deliveries/s, outbox, viral videos.

    Finds every process through ZooKeeper and reads its /metrics every
    --interval seconds. Ctrl-C leaves.
    """
    from livecomments.kernel.errors import LiveCommentsError

    if as_json and not once:
        raise click.UsageError("--json goes with --once")
    settings = load_settings(cfg.BackendSettings)
    ca = ca or (LOCAL_CA if LOCAL_CA.exists() else None)

    async def work(intents: Intents) -> None:
        async with _http_session(ca, insecure) as http:
            targets = await discover(intents)
            before = await scrape_all(http, targets)
            if once:
                await asyncio.sleep(interval)
                now = await scrape_all(http, targets)
                doc = summarize(targets, now, before)
                if as_json:
                    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
                else:
                    from rich.console import Console

                    Console().print(render(doc, settings.zk_hosts))
                return
            await _live(intents, http, targets, before, interval, settings.zk_hosts)

    try:
        asyncio.run(session(settings, work))
    except LiveCommentsError as exc:
        raise click.ClickException(exc.message) from exc
    except KeyboardInterrupt:
        pass


async def _live(
    intents: Intents,
    http: aiohttp.ClientSession,
    targets: list[Target],
    before: dict[Target, Scrape],
    interval: float,
    zk: str,
) -> None:
    from rich.live import Live

    with Live(render(summarize(targets, before, {}), zk), auto_refresh=False) as screen:
        rounds = 0
        while True:
            await asyncio.sleep(interval)
            rounds += 1
            if rounds % 5 == 0:  # processes come and go: look again now and then
                targets = await discover(intents)
            now = await scrape_all(http, targets)
            screen.update(render(summarize(targets, now, before), zk), refresh=True)
            before = now
