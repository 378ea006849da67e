"""What one call of each client library costs the caller, next to the bare protocol.

    .venv/bin/python -m bench.floors

The write path makes, per comment, one HTTP answer, two Redis calls (admission and
settle), one store insert and one gRPC request on each hop. This measures the
CPU the calling process spends per call, with each library and with the bare wire
protocol on the same socket kind, against a Redis and an embedded store it starts
(and a gRPC echo server in a child process). Calls go one after another, each
waiting for its answer, at ``--rate`` calls/s (0: back to back). Spaced calls pay
a wake-up from idle every time, as 200 spaced comments/s do, and on a shared VM
that is not free: the first row is the pace alone, a timer wake-up with no call.

It answers one question: how much of a comment's CPU is the libraries' own per-call
work, which no change of ours removes (docs/benchmarks.md, issue 13).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bson
import grpc
import hiredis
import psutil
import uvloop
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from livecomments.cli.launcher import free_port, start_redis, start_store
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc

SCRIPT = "return {ARGV[1], 1, 2, 3}"


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _per_call(
    call: Callable[[int], Awaitable[Any]], n: int, rate: float, other: psutil.Process | None = None
) -> tuple[float, float]:
    """CPU µs per call of this process (and of ``other``), ``n`` calls at ``rate``/s."""
    for i in range(min(200, n)):  # warm up
        await call(10**8 + i)
    cpu, start = _cpu(), time.perf_counter()
    other_cpu = sum(other.cpu_times()[:2]) if other else 0.0
    for i in range(n):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await call(i)
    other_used = (sum(other.cpu_times()[:2]) - other_cpu) if other else 0.0
    return (_cpu() - cpu) / n * 1e6, other_used / n * 1e6


class _RawRedis(asyncio.Protocol):
    """RESP over a bare asyncio protocol, parsed by hiredis: the floor for a Redis call."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiting: list[asyncio.Future[Any]] = []

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._waiting.pop(0).set_result(reply)

    def call(self, *args: Any) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._transport.write(hiredis.pack_command(args))
        return future


class _RawMongo(asyncio.Protocol):
    """OP_MSG over a bare asyncio protocol, BSON by pymongo's C codec: the floor for an insert."""

    def __init__(self) -> None:
        self._buffer = b""
        self._waiting: asyncio.Future[dict[str, Any]] | None = None
        self._request = 0

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= 4:
            (length,) = struct.unpack_from("<i", self._buffer)
            if len(self._buffer) >= length and self._waiting is not None:
                body, self._buffer = self._buffer[21:length], self._buffer[length:]
                self._waiting.set_result(bson.decode(body))

    def command(self, doc: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        self._request += 1
        body = b"\x00\x00\x00\x00\x00" + bson.encode(doc)
        header = struct.pack("<iiii", 16 + len(body), self._request, 0, 2013)
        self._waiting = asyncio.get_running_loop().create_future()
        self._transport.write(header + body)
        return self._waiting


class _Echo(pb_grpc.DispatcherServicer):  # type: ignore[misc]
    async def DispatchStream(self, requests: Any, context: Any) -> Any:
        async for request in requests:
            yield pb.DispatchReply(id=request.id, nodes=1, delivered=1)


async def _echo_server(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_DispatcherServicer_to_server(_Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _doc(i: int, tag: int) -> dict[str, Any]:
    return {"_id": tag * 10**10 + i, "video_id": "v", "seq": i, "text": "x" * 60}


async def _measure(redis_url: str, mongo_port: int, grpc_port: int, echo_pid: int,
                   n: int, rate: float) -> list[tuple[str, float, float]]:  # fmt: skip
    loop = asyncio.get_running_loop()
    rows: list[tuple[str, float, float]] = []

    async def nothing(i: int) -> None:
        pass

    # The pace alone: at a rate, each call starts after an idle wait (a cold wake-up).
    rows.append(("no call (the pace alone)", *await _per_call(nothing, n, rate)))
    redis = Redis.from_url(redis_url)
    sha = await redis.script_load(SCRIPT)
    conn = redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    await conn.connect()
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    _, raw_redis = await loop.create_connection(_RawRedis, "127.0.0.1", port)

    async def evalsha(i: int) -> None:
        await redis.evalsha(sha, 2, "a", "b", "x", 1, 2, 3)  # type: ignore[misc]

    async def direct(i: int) -> None:
        await conn.send_packed_command(conn.pack_command("EVALSHA", sha, 2, "a", "b", "x", 1, 2, 3))
        await conn.read_response()

    async def raw_evalsha(i: int) -> None:
        await raw_redis.call("EVALSHA", sha, 2, "a", "b", "x", 1, 2, 3)

    for name, call in (("redis-py EVALSHA", evalsha), ("redis-py connection, EVALSHA", direct),
                       ("bare RESP + hiredis, EVALSHA", raw_evalsha)):  # fmt: skip
        rows.append((name, *await _per_call(call, n, rate)))
    await conn.disconnect()
    await redis.aclose()

    uri = f"mongodb://127.0.0.1:{mongo_port}/?retryWrites=false"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, socketTimeoutMS=5000)
    collection = client["floors"]["c"]
    await collection.find_one({})
    _, raw_mongo = await loop.create_connection(_RawMongo, "127.0.0.1", mongo_port)
    raw_mongo_sock = raw_mongo._transport.get_extra_info("socket")
    raw_mongo_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def insert_one(i: int) -> None:
        await collection.insert_one(_doc(i, 1))

    async def raw_insert(i: int) -> None:
        reply = await raw_mongo.command(
            {"insert": "c", "documents": [_doc(i, 2)], "ordered": False, "$db": "floors"}
        )
        assert reply.get("n") == 1, reply

    for name, call in (("pymongo insert_one", insert_one), ("bare OP_MSG insert", raw_insert)):
        rows.append((name, *await _per_call(call, n, rate)))
    await collection.drop()
    await client.close()

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    stream = pb_grpc.DispatcherStub(channel).DispatchStream()
    event = pb.Event(comment_id=1, video_id="v", seq=1, epoch=1, frame=b"x" * 228)

    async def echo(i: int) -> None:
        await stream.write(pb.DispatchRequest(id=i, events=[event]))
        await stream.read()

    echo_process = psutil.Process(echo_pid)
    rows.append(
        ("grpc aio bidi stream: request + reply", *await _per_call(echo, n, rate, echo_process))
    )
    await stream.done_writing()
    await channel.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rate", type=float, default=200.0, help="calls/s (0: back to back)")
    args = p.parse_args(argv)
    grpc_port = free_port()
    echo_pid = os.fork()
    if echo_pid == 0:  # the gRPC echo server, alone in its process
        uvloop.run(_echo_server(grpc_port))
        os._exit(0)
    with tempfile.TemporaryDirectory(prefix="lc-floors-") as tmp:
        run = Path(tmp)
        procs = [start_redis(run, free_port()), start_store(run, free_port(), memory=True)]
        try:
            time.sleep(1.0)  # the echo server's port
            rows = uvloop.run(
                _measure(
                    f"redis://127.0.0.1:{procs[0].port}/0",
                    procs[1].port,
                    grpc_port,
                    echo_pid,
                    args.calls,
                    args.rate,
                )
            )
        finally:
            for proc in procs:
                proc.stop()
            os.kill(echo_pid, 9)
            os.waitpid(echo_pid, 0)
    pace = f"{args.rate:g} calls/s" if args.rate else "back to back"
    print(f"CPU of the calling process per call ({args.calls} calls, {pace}):")
    for name, mine, other in rows:
        server = f"   (the echo server: {other:.0f} µs)" if other else ""
        print(f"  {name:40} {mine:7.0f} µs{server}")


if __name__ == "__main__":
    main()
