"""Readiness (kernel/readiness.py) without servers: flags, probes, listeners, stopping.

The real thing, against stopped backends and real processes, is
tests/system/test_readiness.py; here the checks are functions the test controls.
"""

from __future__ import annotations

import asyncio

import pytest

from livecomments.kernel import settings as cfg
from livecomments.kernel.readiness import (
    DRAINING,
    REDIS,
    STARTING,
    STOPPING,
    STORE,
    ZOOKEEPER,
    Readiness,
)


class Backend:
    """A probe target that answers, fails or hangs, and counts the calls."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0

    async def ping(self) -> None:
        self.calls += 1
        if self.mode == "fail":
            raise ConnectionError("refused")
        if self.mode == "hang":
            await asyncio.sleep(3600)


async def test_not_ready_until_started_then_ready_then_stopping() -> None:
    readiness = Readiness(interval=0.02, timeout=0.5)
    assert readiness.state() == (False, (STARTING,))
    await readiness.start()
    assert readiness.state() == (True, ())
    assert readiness.answer() == (200, {"ready": True, "reasons": []})
    readiness.begin_stop()
    assert readiness.state() == (False, (STOPPING,))
    assert readiness.answer() == (503, {"ready": False, "reasons": [STOPPING]})
    await readiness.stop()
    assert readiness.state() == (False, (STOPPING,))


async def test_flags_are_read_at_each_question_and_reasons_keep_one_order() -> None:
    zk = {"connected": True}
    drained = {"on": False}
    readiness = Readiness(interval=0.02, timeout=0.5)
    readiness.flag(DRAINING, lambda: drained["on"])
    readiness.flag(ZOOKEEPER, lambda: not zk["connected"])
    await readiness.start()
    try:
        zk["connected"], drained["on"] = False, True
        assert readiness.state() == (False, (ZOOKEEPER, DRAINING))
        readiness.begin_stop()
        assert readiness.reasons == (STOPPING, ZOOKEEPER, DRAINING)
    finally:
        await readiness.stop()


async def test_a_failing_or_hanging_probe_makes_it_not_ready_and_never_blocks_a_question() -> None:
    redis, store = Backend(), Backend()
    readiness = Readiness(interval=0.02, timeout=0.1)
    readiness.probe(REDIS, redis.ping)
    readiness.probe(STORE, store.ping)
    await readiness.start()
    try:
        assert readiness.ready
        redis.mode, store.mode = "fail", "hang"
        for _ in range(200):
            if readiness.reasons == (REDIS, STORE):
                break
            await asyncio.sleep(0.02)
        assert readiness.state() == (False, (REDIS, STORE))
        redis.mode = store.mode = "ok"
        for _ in range(200):
            if readiness.ready:
                break
            await asyncio.sleep(0.02)
        assert readiness.state() == (True, ())
    finally:
        await readiness.stop()


async def test_a_flood_of_questions_costs_no_probe() -> None:
    redis = Backend()
    readiness = Readiness(interval=3600, timeout=0.5)
    readiness.probe(REDIS, redis.ping)
    await readiness.start()
    try:
        for _ in range(10_000):
            assert readiness.state() == (True, ())
        assert redis.calls == 1  # the start-up's round, nothing since
    finally:
        await readiness.stop()


async def test_listeners_hear_each_change_once() -> None:
    heard: list[tuple[bool, tuple[str, ...]]] = []
    zk = {"connected": True}
    readiness = Readiness(interval=3600, timeout=0.5)
    readiness.flag(ZOOKEEPER, lambda: not zk["connected"])
    readiness.add_listener(lambda ready, reasons: heard.append((ready, reasons)))
    await readiness.start()
    readiness.changed()  # nothing changed: nothing heard
    zk["connected"] = False
    readiness.changed()
    readiness.changed()
    zk["connected"] = True
    readiness.changed()
    await readiness.stop()
    assert heard == [(True, ()), (False, (ZOOKEEPER,)), (True, ()), (False, (STOPPING,))]


def test_the_shutdown_delay_is_a_setting_with_a_production_default() -> None:
    assert cfg.load(cfg.RTMSSettings, environ={}).shutdown_delay == 5.0
    env = {"LIVECOMMENTS_SHUTDOWN_DELAY": "0"}
    assert cfg.load(cfg.CommentServiceSettings, environ=env).shutdown_delay == 0.0
    with pytest.raises(cfg.ConfigError, match="LIVECOMMENTS_SHUTDOWN_DELAY"):
        cfg.load(cfg.DispatcherSettings, environ={"LIVECOMMENTS_SHUTDOWN_DELAY": "-1"})
