"""Running one server until a signal: the only place that installs signal handlers."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol

import click

from livecomments.kernel import settings as cfg


class Server(Protocol):
    async def start(self) -> None: ...
    def begin_stop(self) -> None: ...
    async def stop(self, timeout: float = 5.0) -> None: ...


log = logging.getLogger(__name__)


def setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kazoo").setLevel(logging.WARNING)


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
