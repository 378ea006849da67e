"""Running one server until a signal: the only place that installs signal handlers."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

import click

from livecomments.kernel import settings as cfg
from livecomments.kernel.logs import JsonFormatter


class Server(Protocol):
    async def start(self) -> None: ...
    def begin_stop(self) -> None: ...
    async def stop(self, timeout: float = 5.0) -> None: ...


log = logging.getLogger(__name__)


def setup_logging(level: str, name: str, *, log_format: str = "text", node_id: str = "") -> None:
    """Logs on stderr: text lines for people, or JSON lines (``log_format="json"``).

    ``name`` is the component (rtms, dispatcher, comment-service); JSON lines also
    carry ``node_id``. In JSON, Python's warnings and an uncaught exception are
    records too, so that every line on stderr is one whole JSON object.
    """
    # Neither format shows the caller's file and line, the thread or the process:
    # not gathering them (the logging HOWTO's "Optimization") saves a stack walk
    # and a few us on every record, and every process logs a line per comment.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(name, node_id))
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
        )
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    logging.getLogger("kazoo").setLevel(logging.WARNING)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("livecomments").critical("uncaught exception", exc_info=(kind, exc, tb))


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def settle_heap() -> None:
    """Keep what start-up allocated out of every later garbage collection.

    A started server holds a few hundred thousand long-lived objects (modules,
    the OpenAPI document, the filter's tables, gRPC and pymongo state). A full
    (generation 2) collection walks all of them: measured under the 100-video
    benchmark, 22-90 ms pauses in the comment service and the RTMS, each one a
    latency spike for every comment in flight. Frozen, they are skipped; the
    same pauses then took under 2 ms. Objects made later (requests, viewers)
    are collected as usual.
    """
    gc.collect()
    gc.freeze()


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit.

    Every viewer is a socket. systemd units set both limits (``LimitNOFILE``), but a
    container runtime often leaves the soft one at 1024 under a hard one of a
    million, and nothing in a Kubernetes pod spec can change it: the process does.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("open files stay at %d: %s", soft, exc)


def serve(
    make: Callable[[], Server],
    *,
    ready: Callable[[], None] | None = None,
    shutdown_delay: float = 0.0,
) -> None:
    """Start a server, print readiness, stop on SIGINT/SIGTERM; a second signal forces exit.

    On the first signal the server turns not ready (``begin_stop``: ``/readyz``
    503 ``stopping``, gRPC health NOT_SERVING) and goes on serving for
    ``shutdown_delay`` seconds, so that load balancers stop sending it work
    before it closes; then it stops.
    """
    install_uvloop()
    raise_open_files_limit()

    async def main() -> None:
        server = make()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stopping.is_set():
                os._exit(1)
            stopping.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await server.start()
        settle_heap()
        if ready is not None:
            ready()
        await stopping.wait()
        server.begin_stop()
        if shutdown_delay > 0:
            log.info("not ready; serving %.1f s more before stopping", shutdown_delay)
            await asyncio.sleep(shutdown_delay)
        await server.stop()

    asyncio.run(main())


def load_settings(cls: type[cfg.S], flags: dict[str, Any] | None = None) -> cfg.S:
    """Settings, or one line on stderr naming the bad variable and exit status 78."""
    for variable, close in cfg.unknown_variables():
        hint = f" (did you mean {close}?)" if close else ""
        click.echo(f"livecomments: warning: {variable} is not a setting{hint}", err=True)
    try:
        return cfg.load(cls, flags)
    except cfg.ConfigError as exc:
        click.echo(f"livecomments: configuration error: {exc}", err=True)
        sys.exit(cfg.EXIT_CONFIG)
