"""The ``livecomments`` command: run one component, or the whole system with ``up``.

The CLI only adapts: options -> settings -> server -> run.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from livecomments.cli import ops
from livecomments.cli.config import config
from livecomments.cli.launcher import (
    READY_MARK,
    LaunchError,
    missing_system_packages,
    port_holders,
)
from livecomments.cli.runtime import load_settings, serve, setup_logging
from livecomments.cli.top import top
from livecomments.kernel import settings as cfg


def _ready() -> None:
    print(READY_MARK, flush=True)


@click.group()
@click.version_option(package_name="livecomments")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, resolve_path=True),
    help="A TOML file of settings: the LIVECOMMENTS_ names in lower case without the "
    "prefix, at the top level or in a [rtms], [dispatcher] or [comment_service] table. "
    "Environment variables and flags override it. Same as LIVECOMMENTS_CONFIG.",
)
def main(config_file: str | None) -> None:
    """Live comments for live video."""
    if config_file:
        # Through the environment, so the processes `up` starts read it too.
        os.environ[cfg.CONFIG_VARIABLE] = config_file


@main.command()
@click.option("--node-id", help="Unique node id (default rtms-<host>-<port>).")
@click.option("--host", help="Address the SSE listener binds (viewers).")
@click.option("--port", type=int, help="SSE port.")
@click.option("--grpc-host", help="Private address for Delivery gRPC (published in ZooKeeper).")
@click.option("--grpc-port", type=int, help="Delivery gRPC port.")
@click.option(
    "--grpc-advertise", help="host:port published instead, when dispatchers reach gRPC elsewhere."
)
@click.option("--public-url", help="Base URL viewers reach this node at.")
def rtms(**flags: Any) -> None:
    """Run one realtime messaging server (SSE + gRPC Delivery)."""
    from livecomments.rtms.server import RTMSServer

    settings = load_settings(cfg.RTMSSettings, flags)
    node_id = settings.node_id or cfg.default_node_id("rtms", settings.port)
    setup_logging(settings.log_level, "rtms", log_format=settings.log_format, node_id=node_id)
    serve(lambda: RTMSServer(settings), ready=_ready, shutdown_delay=settings.shutdown_delay)


@main.command()
@click.option("--node-id", help="Unique replica id (default dispatcher-<host>-<port>).")
@click.option("--host", help="Address to bind.")
@click.option("--port", type=int, help="gRPC port.")
def dispatcher(**flags: Any) -> None:
    """Run one dispatcher replica."""
    from livecomments.dispatcher.server import DispatcherServer

    settings = load_settings(cfg.DispatcherSettings, flags)
    node_id = settings.node_id or cfg.default_node_id("dispatcher", settings.port)
    setup_logging(settings.log_level, "dispatcher", log_format=settings.log_format, node_id=node_id)
    serve(lambda: DispatcherServer(settings), ready=_ready, shutdown_delay=settings.shutdown_delay)


@main.command("comment-service")
@click.option("--host", help="Address to bind.")
@click.option("--port", type=int, help="HTTPS port.")
@click.option("--public-url", help="Base URL clients reach this service at.")
def comment_service(**flags: Any) -> None:
    """Run one comment-service process (the HTTPS API and the viewer page)."""
    from livecomments.comment_service.server import CommentServer

    settings = load_settings(cfg.CommentServiceSettings, flags)
    node_id = cfg.default_node_id("comment-service", settings.port)
    setup_logging(
        settings.log_level, "comment-service", log_format=settings.log_format, node_id=node_id
    )
    serve(lambda: CommentServer(settings), ready=_ready, shutdown_delay=settings.shutdown_delay)


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
    settings = load_settings(cfg.BackendSettings)
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

    settings = load_settings(cfg.BackendSettings)
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
@click.option(
    "--port-offset",
    default=0,
    show_default=True,
    type=click.IntRange(0, 30000),
    help="Shift every port `up` takes by this much (a second system on this machine).",
)
def up(
    run_dir: Path,
    dispatchers: int,
    rtms_nodes: int,
    comment_services: int,
    no_tls: bool,
    port_offset: int,
) -> None:
    """Start the whole system on loopback; Ctrl-C stops it.

    ZooKeeper, Redis and the embedded MongoDB-wire store are started as child
    processes unless LIVECOMMENTS_ZK_HOSTS, LIVECOMMENTS_REDIS_URL or
    LIVECOMMENTS_MONGO_URI point at running ones. A process that dies is started
    again (and said so), unless it keeps dying.
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
    shape = {"dispatchers": dispatchers, "rtms": rtms_nodes, "comment_services": comment_services}
    backends: Backends | None = None
    cluster: Cluster | None = None
    try:
        cluster = Cluster(
            run_dir,
            Backends("", "", ""),  # its backends are set once they run
            namespace=env.get("LIVECOMMENTS_NAMESPACE", "livecomments"),
            fixed_ports=True,
            port_offset=port_offset,
            tls=not no_tls,
        )
        plan = Backends.planned_ports(
            port_offset,
            zookeeper="LIVECOMMENTS_ZK_HOSTS" not in env,
            redis="LIVECOMMENTS_REDIS_URL" not in env,
            store="LIVECOMMENTS_MONGO_URI" not in env,
        )
        plan.update(cluster.planned_ports(**shape))
        taken = port_holders(plan)
        if taken:
            raise click.ClickException(
                "ports this system needs are taken (a leftover of an earlier run?):\n  "
                + "\n  ".join(taken)
                + "\nStop those processes, or start on other ports with --port-offset N."
            )
        stopping = {"signals": 0}

        def on_signal(signum: int, frame: Any) -> None:
            stopping["signals"] += 1
            if stopping["signals"] > 1:
                os._exit(1)
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        click.echo("starting backends ...")
        backends = Backends.start(
            run_dir,
            zk_hosts=env.get("LIVECOMMENTS_ZK_HOSTS"),
            redis_url=env.get("LIVECOMMENTS_REDIS_URL"),
            mongo_uri=env.get("LIVECOMMENTS_MONGO_URI"),
            fixed_ports=True,
            port_offset=port_offset,
        )
        cluster.backends = backends
        click.echo("starting services ...")
        cluster.start(**shape)
        _print_urls(cluster, backends, run_dir)
        watch = _Watchdog(cluster, backends)
        while True:
            time.sleep(1)
            watch.check()
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


class _Watchdog:
    """Starts again whatever process of ``up`` died, unless it keeps dying."""

    TRIES = 5  # restarts of one process ...
    WINDOW = 120.0  # ... within this many seconds, then it is left down

    def __init__(self, cluster: Any, backends: Any) -> None:
        self.cluster = cluster
        self.backends = backends
        self.restarts: dict[str, list[float]] = {}
        self.given_up: set[str] = set()

    def check(self) -> None:
        # Backends first: a component that died with its backend comes back to it.
        for name, proc in list(self.backends.procs.items()):
            if not proc.alive():
                self._restart(name, proc, functools.partial(self.backends.restart, name))
        for name, service in list(self.cluster.services.items()):
            if not service.proc.alive():
                self._restart(name, service.proc, functools.partial(self.cluster.restart, name))

    def _restart(self, name: str, proc: Any, start: Callable[[], Any]) -> None:
        if name in self.given_up:
            return
        status = proc.popen.returncode
        now = time.monotonic()
        recent = [t for t in self.restarts.get(name, []) if now - t < self.WINDOW]
        why = f"exited with status {status}" if status is not None else "exited"
        if status == cfg.EXIT_CONFIG or len(recent) >= self.TRIES:
            self.given_up.add(name)
            reason = (
                "its configuration is wrong"
                if status == cfg.EXIT_CONFIG
                else f"it died {len(recent) + 1} times in {self.WINDOW:.0f} s"
            )
            click.echo(f"!! {name} {why}; not restarting it: {reason}. Its log: {proc.log_path}",
                       err=True)  # fmt: skip
            return
        self.restarts[name] = [*recent, now]
        click.echo(f"!! {name} {why}; restarting it (its log: {proc.log_path})", err=True)
        try:
            new = start()
        except LaunchError as exc:
            click.echo(f"!! {name} did not come back: {exc}", err=True)
            return
        pid = getattr(new, "proc", new).pid  # a ServiceProc, or a backend's Proc
        click.echo(f"   {name} is back (pid {pid})", err=True)


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
        f"  metrics          {', '.join(cluster.metrics_urls().values())}",
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


# -- operators: read and change placement in ZooKeeper (livecomments.cli.ops) ---------

for _command in ops.COMMANDS:
    main.add_command(_command)
main.add_command(config)
main.add_command(top)
