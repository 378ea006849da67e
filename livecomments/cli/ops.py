"""The operator commands: read and change placement in ZooKeeper.

Each command adapts: options -> BackendSettings -> one ZooKeeper session ->
coord's recipes (:mod:`livecomments.coord.intents`, which owns what a pin, a
drain or a rebalance request means) -> a JSON-ready dict -> a table for people or
one JSON document for scripts. The layout is in docs/architecture.md, "The
ZooKeeper layout".

A command is one ``asyncio.run`` on the services' own client
(:class:`coord.client.ZK`), so every call has the same deadline: without a
quorum kazoo would wait forever, and an operator must get an error, not a hung
terminal.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from livecomments.cli.runtime import load_settings
from livecomments.kernel import settings as cfg

if TYPE_CHECKING:
    from rich.console import Console

    from livecomments.coord.intents import Intents, PinChange, Snapshot

T = TypeVar("T")

# kazoo logs every dropped connection at WARNING; with no logging configured
# Python would print those to stderr next to our one clear error message.
_quiet = logging.getLogger("livecomments.cli.ops.kazoo")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def operator() -> str:
    """``user@host``, recorded with every change so the next operator knows whom to ask."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without /etc/passwd entry)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# -- one session per command ---------------------------------------------------------


def zookeeper(work: Callable[[Intents], Awaitable[T]]) -> T:
    """``work`` on a session for one command; our errors become one line on stderr, exit 1."""
    from livecomments.kernel.errors import LiveCommentsError

    try:
        return asyncio.run(session(load_settings(cfg.BackendSettings), work))
    except LiveCommentsError as exc:
        raise click.ClickException(exc.message) from exc


async def session(settings: cfg.BackendSettings, work: Callable[[Intents], Awaitable[T]]) -> T:
    """Connect (Unavailable when ZooKeeper cannot be reached in time), ``work``, close."""
    from kazoo.exceptions import KazooException

    from livecomments.coord.client import ZK
    from livecomments.coord.intents import Intents
    from livecomments.coord.placement import Policy
    from livecomments.kernel.errors import CoordinationTimeout, Unavailable
    from livecomments.kernel.redis.keys import Keys
    from livecomments.kernel.redis.timed import connect as connect_redis
    from livecomments.kernel.viewers import Live, by_node

    zk = ZK(
        settings.zk_hosts,
        settings.zk_root,
        session_timeout=settings.zk_session_timeout,
        timeout=settings.zk_timeout,
        auth=settings.zk_auth,  # the services' credentials and ACLs
        logger=_quiet,
    )
    try:
        await zk.start(parents=False)  # a command that only reads writes nothing
    except CoordinationTimeout as exc:
        raise CoordinationTimeout(
            f"cannot reach ZooKeeper at {settings.zk_hosts} "
            f"within {settings.zk_timeout:g}s (LIVECOMMENTS_ZK_HOSTS)"
        ) from exc
    # Read only by the commands that show viewers per video (videos, move, pin, rebalance).
    redis = connect_redis(settings, socket_timeout=2.0, socket_connect_timeout=2.0)
    keys = Keys(settings.redis_prefix)

    async def viewers(videos: Sequence[str], live: Live) -> dict[str, dict[str, int]]:
        return await by_node(redis, keys, videos, live)

    try:
        return await work(Intents(zk, Policy.from_settings(settings), operator(), viewers))
    except KazooException as exc:  # e.g. NoAuthError, or the session is gone
        raise Unavailable(f"ZooKeeper failed: {type(exc).__name__}") from exc
    finally:
        await zk.stop()
        await redis.aclose()


# -- documents: what --json prints, and what the tables show ---------------------------


def nodes_doc(snap: Snapshot) -> dict[str, Any]:
    hosting: dict[str, list[str]] = {}
    for video, hosts in snap.hosted.items():
        for node in hosts:
            hosting.setdefault(node, []).append(video)
    rows = []
    # A drain outlives its node (it is persistent): show it, so it is not forgotten.
    for node in sorted(set(snap.rtms) | set(snap.drains)):
        report = snap.rtms.get(node)
        rows.append(
            {
                "node": node,
                "live": report is not None,
                "sse_url": report.sse_url if report else None,
                "grpc": report.grpc if report else None,
                "metrics": report.metrics if report else None,
                "connections": report.connections if report else 0,
                "videos": report.videos if report else 0,
                "hosted": sorted(hosting.get(node, [])),
                "draining": node in snap.drains,  # what the operator asked
                "draining_reported": report.draining if report else False,  # what the node says
                "viewers_by_video": report.viewers_by_video if report else {},
                "viral_videos": list(report.viral_videos) if report else [],
            }
        )
    dispatchers = [
        {"id": d, "grpc": info.grpc, "metrics": info.metrics}
        for d, info in sorted(snap.dispatchers.items())
    ]
    workers = [
        {"lease": w, "worker_id": info.worker_id, "url": info.url, "metrics": info.metrics}
        for w, info in sorted(snap.workers.items())
    ]
    return {"rtms": rows, "dispatchers": dispatchers, "comment_workers": workers}


def videos_doc(snap: Snapshot) -> dict[str, Any]:
    rows = []
    for video in snap.videos():
        by_node = snap.viewers_by_node(video)
        pin = snap.pins.get(video)
        rows.append(
            {
                "video": video,
                "placed": snap.placed(video),
                "hosted": snap.hosted.get(video, []),
                "viewers": sum(by_node.values()),
                "viewers_by_node": by_node,
                "pinned": list(pin.nodes) if pin is not None else None,
            }
        )
    rows.sort(key=_busiest_first)
    return {"videos": rows}


async def status_doc(intents: Intents, settings: cfg.BackendSettings) -> dict[str, Any]:
    snap = await intents.snapshot()
    server = await intents.server()
    return {
        "zookeeper": {
            "hosts": settings.zk_hosts,
            "root": intents.paths.root or "/",
            "reachable": True,
            "mode": server.mode,
            "version": server.version,
            "error": None,
        },
        "rtms_nodes": len(snap.rtms),
        "dispatchers": len(snap.dispatchers),
        "comment_workers": len(snap.workers),
        "hosted_videos": len(snap.hosted),
        # Every connection, in the records' coarse steps (within 10 %).
        "viewers": sum(report.connections for report in snap.rtms.values()),
        "pins": len(snap.pins),
        "drains": len(snap.drains),
        "rebalance_requests": len(snap.rebalances),
    }


def _busiest_first(row: dict[str, Any]) -> tuple[int, str]:
    return -int(row["viewers"]), str(row["video"])


def unreachable_status(settings: cfg.BackendSettings, error: str) -> dict[str, Any]:
    """``status`` when ZooKeeper cannot be asked: the same keys, nothing counted."""
    from livecomments.coord.paths import Paths

    counts = ("rtms_nodes", "dispatchers", "comment_workers", "hosted_videos", "viewers")
    intent = ("pins", "drains", "rebalance_requests")
    return {
        "zookeeper": {
            "hosts": settings.zk_hosts,
            "root": Paths(settings.zk_root).root or "/",
            "reachable": False,
            "mode": None,
            "version": None,
            "error": error,
        },
        **dict.fromkeys(counts + intent),
    }


def pin_doc(change: PinChange) -> dict[str, Any]:
    previous = change.previous
    return {
        "video": change.video,
        **change.pin.to_json(),
        "previous": list(previous.nodes) if previous is not None else None,
        "moving": change.moving,
    }


# -- rendering ---------------------------------------------------------------------------

as_json = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout (for scripts)."
)


def _emit(doc: dict[str, Any], json_out: bool, render: Callable[[Console, Any], None]) -> None:
    if json_out:
        click.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console

    # No guessing at what to colour in free text ("viewer(s)" is not a call).
    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped into grep or a file: whole lines, not folded at rich's default 80 columns.
        console = Console(highlight=False, width=10_000)
    render(console, doc)


def _table(*columns: str, title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, header_style="bold")
    for name in columns:
        # Ids and URLs are copied into the next command: never cut them short.
        table.add_column(name, overflow="fold")
    return table


def _names(nodes: list[str]) -> str:
    return ", ".join(nodes) if nodes else "-"


def _render_nodes(console: Console, doc: dict[str, Any]) -> None:
    table = _table(
        "node", "connections", "videos", "viral", "draining", "sse url", "grpc", title="RTMS"
    )
    for row in doc["rtms"]:
        if not row["live"]:
            draining = "yes (node gone)"
        elif row["draining"]:
            draining = "yes" if row["draining_reported"] else "yes (requested)"
        else:
            draining = "no"
        live = row["live"]
        table.add_row(
            row["node"],
            str(row["connections"]) if live else "-",
            str(row["videos"]) if live else "-",
            _names(row["viral_videos"]) if live and row["viral_videos"] else "-",
            draining,
            row["sse_url"] or "-",
            row["grpc"] or "-",
        )
    console.print(table if doc["rtms"] else "no RTMS node is live")
    console.print()
    dispatchers = _table("dispatcher", "grpc", title="dispatchers")
    for row in doc["dispatchers"]:
        dispatchers.add_row(row["id"], row["grpc"] or "-")
    console.print(dispatchers if doc["dispatchers"] else "no dispatcher is live")
    workers = doc["comment_workers"]
    console.print(
        f"\ncomment-service workers: {len(workers)}"
        + (f" (ids {', '.join(str(w['worker_id']) for w in workers)})" if workers else "")
    )


def _render_videos(console: Console, doc: dict[str, Any]) -> None:
    if not doc["videos"]:
        console.print("no video is hosted or pinned")
        return
    table = _table("video", "viewers", "hosted on (viewers)", "placed on", "pinned to")
    for row in doc["videos"]:
        hosted = ", ".join(f"{n} ({row['viewers_by_node'].get(n, 0)})" for n in row["hosted"])
        pinned = row["pinned"]
        table.add_row(
            row["video"],
            str(row["viewers"]),
            hosted or "-",
            _names(row["placed"]),
            "-" if pinned is None else _names(pinned),
        )
    console.print(table)


def _moving(moving: dict[str, int]) -> str:
    total = sum(moving.values())
    if not total:
        return "no viewers on other nodes"
    where = ", ".join(f"{node}: {n}" for node, n in moving.items())
    return f"{total} viewer(s) on other nodes are being moved ({where})"


def _render_pin(console: Console, doc: dict[str, Any]) -> None:
    was = f" (was pinned to {_names(doc['previous'])})" if doc["previous"] is not None else ""
    console.print(f"pinned {doc['video']} to {_names(doc['nodes'])}{was}")
    console.print(_moving(doc["moving"]))
    console.print(f"it stays pinned until: livecomments unpin {doc['video']}")


def _render_drain(console: Console, doc: dict[str, Any]) -> None:
    if doc["already"]:
        console.print(f"{doc['node']} was already drained (by {doc['by']} at {doc['at']})")
    else:
        console.print(
            f"draining {doc['node']}: it moves its viewers away and takes no new ones "
            f"(until `livecomments undrain {doc['node']}`)",
        )


def _render_plan(console: Console, doc: dict[str, Any]) -> None:
    plan = doc["plan"]
    if not plan:
        console.print("nothing to rebalance: every hosted video is on a node placed for it")
        return
    table = _table("video", "from", "to", "viewers", title="rebalance plan")
    for item in plan:
        table.add_row(item["video"], item["from"], _names(item["to"]), str(item["viewers"]))
    console.print(table)
    viewers = sum(item["viewers"] for item in plan)
    console.print(f"{viewers} viewer(s) of {len({i['video'] for i in plan})} video(s) to move")


def _render_status(console: Console, doc: dict[str, Any]) -> None:
    zk = doc["zookeeper"]
    table = _table("", "")
    table.show_header = False
    reach = "reachable" if zk["reachable"] else f"UNREACHABLE: {zk.get('error')}"
    mode = f", {zk['mode']}" if zk.get("mode") else ""
    version = f", {zk['version']}" if zk.get("version") else ""
    table.add_row("zookeeper", f"{zk['hosts']} root {zk['root']}: {reach}{mode}{version}")
    for key in ("rtms_nodes", "dispatchers", "comment_workers", "hosted_videos", "viewers"):
        table.add_row(key.replace("_", " "), _or_dash(doc[key]))
    for key in ("pins", "drains", "rebalance_requests"):
        table.add_row(key.replace("_", " "), _or_dash(doc[key]))
    console.print(table)


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


# -- the commands ----------------------------------------------------------------------


@click.command()
@click.argument("video")
@click.argument("nodes", nargs=-1, required=True)
@as_json
def pin(video: str, nodes: tuple[str, ...], as_json: bool) -> None:
    """Pin VIDEO to NODES (live RTMS nodes) until `unpin`.

    Nodes hosting VIDEO that are not in the pin send their viewers a `moved`
    event pointing at a pinned node, and close them. New viewers go to the
    pinned nodes only.
    """
    change = zookeeper(lambda intents: intents.pin(video, nodes))
    _emit(pin_doc(change), as_json, _render_pin)


@click.command()
@click.argument("video")
@click.option("--to", "node", required=True, help="The RTMS node to move VIDEO to.")
@as_json
def move(video: str, node: str, as_json: bool) -> None:
    """Move every viewer of VIDEO to NODE, now.

    This pins VIDEO to NODE alone: it stays there, also for new viewers, until
    `livecomments unpin VIDEO`. VIDEO must be hosted somewhere or pinned.
    """
    change = zookeeper(lambda intents: intents.move(video, node))
    _emit(pin_doc(change), as_json, _render_pin)


@click.command()
@click.argument("video")
@as_json
def unpin(video: str, as_json: bool) -> None:
    """Remove VIDEO's pin (connected viewers stay put).

    New viewers go where hashing places them. Viewers already connected stay
    where they are until `livecomments rebalance` moves them.
    """
    removed = zookeeper(lambda intents: intents.unpin(video))
    doc = {"video": video, "unpinned": list(removed.nodes)}

    def render(console: Console, doc: dict[str, Any]) -> None:
        console.print(
            f"unpinned {doc['video']} (was pinned to {_names(doc['unpinned'])}); connected "
            "viewers stay where they are until `livecomments rebalance`",
        )

    _emit(doc, as_json, render)


@click.command()
@click.argument("node")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Then wait up to SECONDS for the node to report no connections (exit 1 if it does not).",
)
@as_json
def drain(node: str, wait: float | None, as_json: bool) -> None:
    """Move every viewer off NODE; it takes no new ones.

    NODE must be a live RTMS node (or already drained). Its viewers get a
    `moved` event pointing at a node placed for their video. The drain stays,
    also across the node's restarts, until `livecomments undrain NODE`.
    """

    async def work(intents: Intents) -> dict[str, Any]:
        change = await intents.drain(node)
        doc: dict[str, Any] = {"node": node, "already": change.already, **change.drain.to_json()}
        if not as_json:
            _emit(doc, False, _render_drain)
        if wait is not None:
            doc["connections_left"] = await _wait_drained(intents, node, wait)
        return doc

    doc = zookeeper(work)
    if as_json:
        _emit(doc, True, _render_drain)
    left = doc.get("connections_left", 0)
    if left:
        raise click.ClickException(
            f"{node} still reports {left} connection(s) after {wait:g}s (it stays drained)"
        )


async def _wait_drained(intents: Intents, node: str, seconds: float, interval: float = 0.5) -> int:
    """Poll until ``node`` reports no connections (or has left); the count left at the end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    last: int | None = None
    while True:
        left = await intents.connections(node) or 0
        if left != last:
            click.echo(f"{node}: {left} connection(s) left", err=True)  # progress, on stderr
            last = left
        if left == 0 or loop.time() >= deadline:
            return left
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))


@click.command()
@click.argument("node")
@as_json
def undrain(node: str, as_json: bool) -> None:
    """Let the drained NODE take new viewers again.

    Viewers moved away do not come back on their own; `rebalance` moves them.
    """
    removed = zookeeper(lambda intents: intents.undrain(node))
    doc = {"node": node, "drained": {"by": removed.by, "at": removed.at}}

    def render(console: Console, doc: dict[str, Any]) -> None:
        console.print(f"{doc['node']} takes new viewers again")

    _emit(doc, as_json, render)


@click.command()
@as_json
def nodes(as_json: bool) -> None:
    """List RTMS nodes, dispatchers and comment workers.

    Each RTMS node with its connections, videos and whether it drains. A
    drained node that is gone is listed too: its drain stays until `undrain`.
    """
    _emit(nodes_doc(zookeeper(lambda intents: intents.snapshot())), as_json, _render_nodes)


@click.command()
@as_json
def videos(as_json: bool) -> None:
    """List hosted and pinned videos: viewers, hosts, placement.

    "placed on" is where new viewers go (the pin, or rendezvous hashing over
    live, non-draining nodes); "hosted on" is where viewers are now.
    """
    _emit(videos_doc(zookeeper(lambda intents: intents.counted())), as_json, _render_videos)


@click.command()
@click.option("--dry-run", is_flag=True, help="Only show the plan.")
@click.option("--yes", is_flag=True, help="Apply the plan without asking.")
@as_json
def rebalance(dry_run: bool, yes: bool, as_json: bool) -> None:
    """Move viewers off nodes not placed for their video.

    Shows the plan (video, from, to, viewers), then asks RTMS nodes to carry
    it out: each sends those viewers a `moved` event to a placed node. Without
    --yes it asks first (and refuses when stdin is not a terminal).
    """
    if dry_run and yes:
        raise click.UsageError("--dry-run and --yes contradict each other")

    async def work(intents: Intents) -> dict[str, Any]:
        plan = (await intents.counted()).plan()
        doc: dict[str, Any] = {"plan": plan, "applied": False, "request": None}
        if not as_json:
            _emit(doc, False, _render_plan)
        if plan and not dry_run:
            if not yes:
                if not sys.stdin.isatty():
                    raise click.ClickException(
                        "not applied: stdin is not a terminal; "
                        "pass --yes to apply, or --dry-run to only show the plan"
                    )
                # On the loop's thread, on purpose: kazoo keeps the session on its own
                # threads, and Ctrl-C here must abort, not leave a thread reading stdin.
                click.confirm("apply this plan?", abort=True, err=True)
            change = await intents.request_rebalance(plan)
            record = change.record
            doc["request"] = {"request": change.request, "at": record.at, "by": record.by}
            doc["applied"] = True
        return doc

    doc = zookeeper(work)
    if as_json:
        _emit(doc, True, _render_plan)
    elif doc["applied"]:
        click.echo(f"requested: {doc['request']['request']}; the RTMS nodes move the viewers now")


@click.command()
@as_json
def status(as_json: bool) -> None:
    """Summarise ZooKeeper, counts, viewers, pins and drains.

    Exits 1 when ZooKeeper cannot be reached (and says so, also with --json).
    """
    from livecomments.kernel.errors import Unavailable

    settings = load_settings(cfg.BackendSettings)
    try:
        doc = asyncio.run(session(settings, lambda intents: status_doc(intents, settings)))
    except Unavailable as exc:
        # Still one document: "unreachable" is the answer a script asked for.
        _emit(unreachable_status(settings, exc.message), as_json, _render_status)
        raise click.ClickException(exc.message) from exc
    _emit(doc, as_json, _render_status)


COMMANDS = (pin, move, unpin, drain, undrain, nodes, videos, rebalance, status)
