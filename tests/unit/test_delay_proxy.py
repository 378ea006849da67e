"""The benchmarks' delay proxy (bench/delay_proxy.py): bytes keep their order and arrive
no sooner than the delay, each way. Timings are asserted as lower bounds only: a busy
machine makes everything later, never earlier."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest

from bench import delay_proxy
from bench.delay_proxy import DelayProxy

DELAY = 0.04


class Echo:
    """A server that stamps each line when it has all of it, and sends it back."""

    def __init__(self) -> None:
        self.arrived: list[tuple[bytes, float]] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            self.arrived.append((line, time.monotonic()))
            writer.write(line)
        writer.close()  # the client half-closed: finish

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@pytest.fixture
async def relay() -> AsyncIterator[tuple[Echo, DelayProxy, int]]:
    echo = Echo()
    proxy = DelayProxy("127.0.0.1", await echo.start(), delay=DELAY)
    port = await proxy.start()
    yield echo, proxy, port
    await proxy.stop()
    assert echo.server is not None
    echo.server.close()


async def test_lines_keep_their_order_and_take_at_least_the_delay_each_way(
    relay: tuple[Echo, DelayProxy, int],
) -> None:
    echo, _, port = relay
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent: list[float] = []
    for i in range(30):
        sent.append(time.monotonic())
        writer.write(b"line %d\n" % i)
        await asyncio.sleep(0.003 if i % 3 else 0)  # some together, some apart
    back: list[tuple[bytes, float]] = []
    for _ in range(30):
        line = await asyncio.wait_for(reader.readline(), 10)
        back.append((line, time.monotonic()))
    writer.close()
    expected = [b"line %d\n" % i for i in range(30)]
    assert [line for line, _ in echo.arrived] == expected
    assert [line for line, _ in back] == expected
    for i in range(30):
        assert echo.arrived[i][1] - sent[i] >= DELAY
        assert back[i][1] - sent[i] >= 2 * DELAY


async def test_a_lowered_delay_never_overtakes_what_is_queued(
    relay: tuple[Echo, DelayProxy, int],
) -> None:
    echo, proxy, port = relay
    proxy.delay = 0.2
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(b"slow\n")
    await asyncio.sleep(0.01)
    proxy.delay = 0.0
    writer.write(b"fast\n")
    back = [await asyncio.wait_for(reader.readline(), 10) for _ in range(2)]
    writer.close()
    assert back == [b"slow\n", b"fast\n"]
    assert [line for line, _ in echo.arrived] == [b"slow\n", b"fast\n"]
    assert echo.arrived[0][1] - t0 >= 0.2


async def test_a_bulk_transfer_arrives_whole_through_backpressure_and_half_close(
    relay: tuple[Echo, DelayProxy, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small water marks, so 2 MiB pauses and resumes the reading many times.
    monkeypatch.setattr(delay_proxy, "HIGH_WATER", 64 * 1024)
    monkeypatch.setattr(delay_proxy, "LOW_WATER", 16 * 1024)
    _, proxy, port = relay
    proxy.delay = 0.005
    lines = [os.urandom(700).hex().encode() + b"\n" for _ in range(1500)]
    payload = b"".join(lines)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()  # the echo server ends its side after the last line

    sending = asyncio.create_task(send())
    received = await asyncio.wait_for(reader.read(), 30)  # until the relayed close
    await sending
    writer.close()
    assert received == payload
    assert proxy.stats.bytes == 2 * len(payload)
