"""Readiness: whether this process should be sent work now, and if not, why.

Alive (``/healthz``) and ready are different questions. A process that lost
ZooKeeper, cannot reach Redis or the store, is being drained or is stopping
is alive, and still serves what it holds, but a load balancer should stop
sending it new work. ``/readyz`` (comment service, RTMS) and the standard
``grpc.health.v1`` service (dispatcher, RTMS: :mod:`livecomments.kernel.grpchealth`)
answer from one :class:`Readiness` per process, so they always agree.

A :class:`Readiness` holds named checks, each of which gives a stable reason
code when it fails:

- *flags* (:meth:`Readiness.flag`) are read on every question: a ZooKeeper
  session state, a drain the node knows of, nothing that waits;
- *probes* (:meth:`Readiness.probe`, a Redis PING, a store ping) are run by
  one background task every ``interval`` seconds, each bounded by
  ``timeout``, and their last results are kept: a flood of probes costs
  nothing and no question ever waits on a dead backend.

Listeners (:meth:`Readiness.add_listener`) hear each change of the answer,
which the gRPC health service follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

# The reasons, stable codes (operators' alerts and load balancers may match them).
STARTING = "starting"  # start() has not finished
STOPPING = "stopping"  # a SIGTERM arrived: the shutdown delay, then the stop
ZOOKEEPER = "zookeeper_disconnected"  # the session is not CONNECTED (SUSPENDED or LOST)
REDIS = "redis_unavailable"  # PING did not answer within the timeout
STORE = "store_unavailable"  # the store's ping did not answer within the timeout
DRAINING = "draining"  # an operator drained this RTMS node (`livecomments drain`)
ROUTING = "routing_table_not_loaded"  # a dispatcher without its whole table yet
REASONS = (STARTING, STOPPING, ZOOKEEPER, REDIS, STORE, DRAINING, ROUTING)

PROBE_INTERVAL = 1.0  # seconds between two rounds of backend probes
PROBE_TIMEOUT = 1.0  # a probe that takes longer counts as failed

Listener = Callable[[bool, tuple[str, ...]], None]


class Readiness:
    """Named checks → the reasons this process is not ready (none: ready)."""

    def __init__(self, *, interval: float = PROBE_INTERVAL, timeout: float = PROBE_TIMEOUT) -> None:
        self._interval = interval
        self._timeout = timeout
        self._flags: list[tuple[str, Callable[[], bool]]] = []
        self._probes: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        self._failed: set[str] = set()  # probes that failed their last round
        self._listeners: list[Listener] = []
        self._starting = True
        self._stopping = False
        self._last: tuple[str, ...] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- wiring ------------------------------------------------------------------

    def flag(self, reason: str, failing: Callable[[], bool]) -> None:
        """Not ready with ``reason`` whenever ``failing()`` (cheap, no I/O) is true."""
        self._flags.append((reason, failing))

    def probe(self, reason: str, call: Callable[[], Awaitable[object]]) -> None:
        """Not ready with ``reason`` while ``call()`` last raised or timed out."""
        self._probes.append((reason, call))

    def add_listener(self, listener: Listener) -> None:
        """``listener(ready, reasons)`` on the loop each time the answer changes."""
        self._listeners.append(listener)

    # -- the answer --------------------------------------------------------------

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why this process is not ready now, in a fixed order; () when it is."""
        found = {reason for reason, failing in self._flags if failing()} | self._failed
        if self._starting:
            found.add(STARTING)
        if self._stopping:
            found.add(STOPPING)
        return tuple(r for r in REASONS if r in found) + tuple(sorted(found - set(REASONS)))

    def state(self) -> tuple[bool, tuple[str, ...]]:
        """``(ready, reasons)``: what ``/readyz`` answers, never waiting on a backend."""
        reasons = self.reasons
        return not reasons, reasons

    def answer(self) -> tuple[int, dict[str, Any]]:
        """``/readyz``'s status and JSON body: 200, or 503 with the reasons."""
        ready, reasons = self.state()
        return (200 if ready else 503), {"ready": ready, "reasons": list(reasons)}

    @property
    def ready(self) -> bool:
        return not self.reasons

    @property
    def stopping(self) -> bool:
        return self._stopping

    def changed(self) -> None:
        """Something a flag reads changed: tell the listeners now if the answer did."""
        reasons = self.reasons
        if reasons == self._last:
            return
        previous, self._last = self._last, reasons
        # For the operator's log: every change once started (becoming ready at
        # the end of start-up is not news).
        if previous is not None and STARTING not in reasons:
            if reasons:
                log.warning("not ready: %s", ", ".join(reasons))
            elif previous != (STARTING,):
                log.info("ready again")
        for listener in list(self._listeners):
            try:
                listener(not reasons, reasons)
            except Exception:
                log.exception("readiness listener failed")

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """The process has started: probe once (so the first answer is a real one),
        then keep probing in the background. Idempotent."""
        if self._task is not None:
            return
        await self._round()
        self._starting = False
        self.changed()
        self._task = asyncio.create_task(self._every())

    def begin_stop(self) -> None:
        """Not ready from now on (``stopping``); the process goes on serving."""
        self._stopping = True
        self.changed()

    async def stop(self) -> None:
        self.begin_stop()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._round()
            except Exception:  # never leave the loop: the next round tries again
                log.exception("readiness probes failed")
            self.changed()

    async def _round(self) -> None:
        """Run every probe at once, each bounded by the timeout."""
        results = await asyncio.gather(*(self._run(call) for _, call in self._probes))
        self._failed = {
            reason for (reason, _), ok in zip(self._probes, results, strict=True) if not ok
        }

    async def _run(self, call: Callable[[], Awaitable[object]]) -> bool:
        try:
            await asyncio.wait_for(call(), self._timeout)
        except Exception as exc:  # a probe's only answer is yes or no
            log.debug("readiness probe failed: %r", exc)
            return False
        return True
