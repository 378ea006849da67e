"""The ``livecomments`` command: run one component, or the whole system with ``up``.

The CLI only adapts: options -> settings -> server -> run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from livecomments.cli.launcher import READY_MARK, LaunchError, missing_system_packages
from livecomments.cli.runtime import serve, setup_logging
from livecomments.kernel import settings as cfg

if TYPE_CHECKING:
    from rich.console import Console

    from livecomments.cli.ops import Ops


def _ready() -> None:
    print(READY_MARK, flush=True)


@click.group()
@click.version_option(package_name="livecomments")
def main() -> None:
    """Live comments for live video."""


@main.command()
@click.option("--node-id", help="Unique node id (default rtms-<host>-<port>).")
@click.option("--host", help="Address the SSE listener binds (viewers).")
@click.option("--port", type=int, help="SSE port.")
@click.option("--grpc-host", help="Private address for Delivery gRPC (published in ZooKeeper).")
@click.option("--grpc-port", type=int, help="Delivery gRPC port.")
@click.option("--public-url", help="Base URL viewers reach this node at.")
def rtms(**flags: Any) -> None:
    """Run one realtime messaging server (SSE + gRPC Delivery)."""
    from livecomments.rtms.server import RTMSServer

    settings = cfg.load(cfg.RTMSSettings, flags)
    setup_logging(settings.log_level, "rtms")
    serve(lambda: RTMSServer(settings), ready=_ready)


@main.command()
@click.option("--node-id", help="Unique replica id (default dispatcher-<host>-<port>).")
@click.option("--host", help="Address to bind.")
@click.option("--port", type=int, help="gRPC port.")
def dispatcher(**flags: Any) -> None:
    """Run one dispatcher replica."""
    from livecomments.dispatcher.server import DispatcherServer

    settings = cfg.load(cfg.DispatcherSettings, flags)
    setup_logging(settings.log_level, "dispatcher")
    serve(lambda: DispatcherServer(settings), ready=_ready)


@main.command("comment-service")
@click.option("--host", help="Address to bind.")
@click.option("--port", type=int, help="HTTPS port.")
@click.option("--public-url", help="Base URL clients reach this service at.")
def comment_service(**flags: Any) -> None:
    """Run one comment-service process (the HTTPS API and the viewer page)."""
    from livecomments.comment_service.server import CommentServer

    settings = cfg.load(cfg.CommentServiceSettings, flags)
    setup_logging(settings.log_level, "comment-service")
    serve(lambda: CommentServer(settings), ready=_ready)


@main.group()
def users() -> None:
    """Accounts: the first admin, and roles (talks to the store and ZooKeeper directly)."""


@users.command("create-admin")
@click.argument("username")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from stdin instead of a prompt."
)
def create_admin(username: str, password_stdin: bool) -> None:
    """Create USERNAME with the admin role (the first admin of an installation)."""
    import asyncio

    from livecomments.comment_service.admin import create_admin as create
    from livecomments.kernel.errors import LiveCommentsError

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    settings = cfg.load(cfg.BackendSettings)
    try:
        user = asyncio.run(create(settings, username, password))
    except LiveCommentsError as exc:
        raise click.ClickException(f"{exc.message} ({exc.code})") from exc
    click.echo(f"created admin {user['username']} (id {user['_id']})")


@users.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice(["viewer", "moderator", "admin"]))
def set_role(username: str, role: str) -> None:
    """Give USERNAME the ROLE (admins can also do this with PUT /api/users/{id}/role)."""
    import asyncio

    from livecomments.comment_service.admin import set_role as assign
    from livecomments.kernel.errors import LiveCommentsError

    settings = cfg.load(cfg.BackendSettings)
    try:
        user = asyncio.run(assign(settings, username, role))
    except LiveCommentsError as exc:
        raise click.ClickException(f"{exc.message} ({exc.code})") from exc
    click.echo(f"{user['username']} (id {user['_id']}) is now {role}")


@main.command()
@click.option(
    "--run-dir",
    default=".run",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where data, logs and the local TLS certificates go.",
)
@click.option("--dispatchers", default=2, show_default=True)
@click.option("--rtms", "rtms_nodes", default=2, show_default=True)
@click.option("--comment-services", default=1, show_default=True)
@click.option("--no-tls", is_flag=True, help="Serve plain HTTP (not for browsers on other hosts).")
def up(
    run_dir: Path, dispatchers: int, rtms_nodes: int, comment_services: int, no_tls: bool
) -> None:
    """Start the whole system on loopback; Ctrl-C stops it.

    ZooKeeper, Redis and the embedded MongoDB-wire store are started as child
    processes unless LIVECOMMENTS_ZK_HOSTS, LIVECOMMENTS_REDIS_URL or
    LIVECOMMENTS_MONGO_URI point at running ones.
    """
    from livecomments.cli.cluster import Backends, Cluster

    env = os.environ
    starts_own = "LIVECOMMENTS_ZK_HOSTS" not in env or "LIVECOMMENTS_REDIS_URL" not in env
    missing = missing_system_packages() if starts_own else []
    if missing:
        raise click.ClickException(
            "missing system packages: "
            + " ".join(missing)
            + f"\n  install them with: apt-get install -y {' '.join(missing)}"
        )
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    stopping = {"signals": 0}

    def on_signal(signum: int, frame: Any) -> None:
        stopping["signals"] += 1
        if stopping["signals"] > 1:
            os._exit(1)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    backends: Backends | None = None
    cluster: Cluster | None = None
    try:
        click.echo("starting backends ...")
        backends = Backends.start(
            run_dir,
            zk_hosts=env.get("LIVECOMMENTS_ZK_HOSTS"),
            redis_url=env.get("LIVECOMMENTS_REDIS_URL"),
            mongo_uri=env.get("LIVECOMMENTS_MONGO_URI"),
            fixed_ports=True,
        )
        cluster = Cluster(
            run_dir,
            backends,
            namespace=env.get("LIVECOMMENTS_NAMESPACE", "livecomments"),
            fixed_ports=True,
            tls=not no_tls,
        )
        click.echo("starting services ...")
        cluster.start(dispatchers=dispatchers, rtms=rtms_nodes, comment_services=comment_services)
        _print_urls(cluster, backends, run_dir)
        while True:
            time.sleep(1)
            for name, service in cluster.services.items():
                if not service.proc.alive() and not service.proc.extra.get("reported"):
                    service.proc.extra["reported"] = True
                    click.echo(f"!! {name} exited; its log: {service.proc.log_path}", err=True)
    except LaunchError as exc:
        click.echo(f"failed to start: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("\nstopping ...")
    finally:
        if cluster is not None:
            cluster.stop()
        if backends is not None:
            backends.stop()
    click.echo("stopped.")


def _print_urls(cluster: Any, backends: Any, run_dir: Path) -> None:
    comment = [s for s in cluster.services.values() if s.kind == "comment-service"]
    rtms_urls = [s.url for s in cluster.services.values() if s.kind == "rtms"]
    dispatch = [s.url for s in cluster.services.values() if s.kind == "dispatcher"]
    lines = [
        "",
        "livecomments is up.",
        f"  viewer page      {comment[0].url}/?v=demo" if comment else "",
        f"  API              {', '.join(s.url for s in comment)}/api",
        f"  RTMS (SSE)       {', '.join(rtms_urls)}",
        f"  dispatchers      {', '.join(dispatch)}",
        f"  ZooKeeper        {backends.zk_hosts}  (root /{cluster.namespace})",
        f"  Redis            {backends.redis_url}",
        f"  MongoDB          {backends.mongo_uri}",
        f"  TLS CA           {cluster.ca_file or '(plain HTTP)'}",
        f"  gRPC (mTLS)      per-role certificates in {run_dir / 'tls' / 'grpc'}",
        f"  logs             {run_dir / 'logs'}",
        "First admin (in another shell): .venv/bin/livecomments users create-admin NAME",
        "Ctrl-C stops everything.",
    ]
    click.echo("\n".join(line for line in lines if line))


# -- operators: read and change placement in ZooKeeper -----------------------------
#
# Each command adapts: options -> BackendSettings -> one ZooKeeper session (ops.Ops)
# -> a JSON-ready dict -> a table for people or one JSON document for scripts.

as_json = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout (for scripts)."
)


@contextmanager
def _zookeeper() -> Iterator[Ops]:
    """A session for one command; our errors become one clear line on stderr, exit 1."""
    from livecomments.cli.ops import Ops
    from livecomments.kernel.errors import LiveCommentsError

    try:
        with Ops.connect(cfg.load(cfg.BackendSettings)) as ops:
            yield ops
    except LiveCommentsError as exc:
        raise click.ClickException(exc.message) from exc


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


@main.command()
@click.argument("video")
@click.argument("nodes", nargs=-1, required=True)
@as_json
def pin(video: str, nodes: tuple[str, ...], as_json: bool) -> None:
    """Pin VIDEO to NODES (live RTMS nodes) until `unpin`.

    Nodes hosting VIDEO that are not in the pin send their viewers a `moved`
    event pointing at a pinned node, and close them. New viewers go to the
    pinned nodes only.
    """
    with _zookeeper() as ops:
        doc = ops.pin(video, nodes)
    _emit(doc, as_json, _render_pin)


@main.command()
@click.argument("video")
@click.option("--to", "node", required=True, help="The RTMS node to move VIDEO to.")
@as_json
def move(video: str, node: str, as_json: bool) -> None:
    """Move every viewer of VIDEO to NODE, now.

    This pins VIDEO to NODE alone: it stays there, also for new viewers, until
    `livecomments unpin VIDEO`. VIDEO must be hosted somewhere or pinned.
    """
    with _zookeeper() as ops:
        doc = ops.move(video, node)
    _emit(doc, as_json, _render_pin)


@main.command()
@click.argument("video")
@as_json
def unpin(video: str, as_json: bool) -> None:
    """Remove VIDEO's pin (connected viewers stay put).

    New viewers go where hashing places them. Viewers already connected stay
    where they are until `livecomments rebalance` moves them.
    """
    with _zookeeper() as ops:
        doc = ops.unpin(video)

    def render(console: Console, doc: dict[str, Any]) -> None:
        console.print(
            f"unpinned {doc['video']} (was pinned to {_names(doc['unpinned'])}); connected "
            "viewers stay where they are until `livecomments rebalance`",
        )

    _emit(doc, as_json, render)


@main.command()
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
    with _zookeeper() as ops:
        doc = ops.drain(node)
        if not as_json:
            _emit(doc, False, _render_drain)
        if wait is not None:

            def progress(left: int) -> None:
                click.echo(f"{node}: {left} connection(s) left", err=True)

            doc["connections_left"] = ops.wait_drained(node, wait, progress)
    if as_json:
        _emit(doc, True, _render_drain)
    left = doc.get("connections_left", 0)
    if left:
        raise click.ClickException(
            f"{node} still reports {left} connection(s) after {wait:g}s (it stays drained)"
        )


def _render_drain(console: Console, doc: dict[str, Any]) -> None:
    if doc["already"]:
        console.print(f"{doc['node']} was already drained (by {doc['by']} at {doc['at']})")
    else:
        console.print(
            f"draining {doc['node']}: it moves its viewers away and takes no new ones "
            f"(until `livecomments undrain {doc['node']}`)",
        )


@main.command()
@click.argument("node")
@as_json
def undrain(node: str, as_json: bool) -> None:
    """Let the drained NODE take new viewers again.

    Viewers moved away do not come back on their own; `rebalance` moves them.
    """
    with _zookeeper() as ops:
        doc = ops.undrain(node)

    def render(console: Console, doc: dict[str, Any]) -> None:
        console.print(f"{doc['node']} takes new viewers again")

    _emit(doc, as_json, render)


@main.command()
@as_json
def nodes(as_json: bool) -> None:
    """List RTMS nodes, dispatchers and comment workers.

    Each RTMS node with its connections, videos and whether it drains. A
    drained node that is gone is listed too: its drain stays until `undrain`.
    """
    with _zookeeper() as ops:
        doc = ops.nodes()
    _emit(doc, as_json, _render_nodes)


@main.command()
@as_json
def videos(as_json: bool) -> None:
    """List hosted and pinned videos: viewers, hosts, placement.

    "placed on" is where new viewers go (the pin, or rendezvous hashing over
    live, non-draining nodes); "hosted on" is where viewers are now.
    """
    with _zookeeper() as ops:
        doc = ops.videos()
    _emit(doc, as_json, _render_videos)


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


@main.command()
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
    with _zookeeper() as ops:
        doc: dict[str, Any] = {"plan": ops.plan(), "applied": False, "request": None}
        if not as_json:
            _emit(doc, False, _render_plan)
        if doc["plan"] and not dry_run:
            if not yes:
                if not sys.stdin.isatty():
                    raise click.ClickException(
                        "not applied: stdin is not a terminal; "
                        "pass --yes to apply, or --dry-run to only show the plan"
                    )
                click.confirm("apply this plan?", abort=True, err=True)
            doc["request"] = ops.request_rebalance(doc["plan"])
            doc["applied"] = True
    if as_json:
        _emit(doc, True, _render_plan)
    elif doc["applied"]:
        click.echo(f"requested: {doc['request']['request']}; the RTMS nodes move the viewers now")


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


@main.command()
@as_json
def status(as_json: bool) -> None:
    """Summarise ZooKeeper, counts, viewers, pins and drains.

    Exits 1 when ZooKeeper cannot be reached (and says so, also with --json).
    """
    from livecomments.cli.ops import Ops, unreachable_status
    from livecomments.kernel.errors import Unavailable

    settings = cfg.load(cfg.BackendSettings)
    try:
        with Ops.connect(settings) as ops:
            doc = ops.status()
    except Unavailable as exc:
        # Still one document: "unreachable" is the answer a script asked for.
        _emit(unreachable_status(settings, exc.message), as_json, _render_status)
        raise click.ClickException(exc.message) from exc
    _emit(doc, as_json, _render_status)
