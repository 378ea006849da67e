"""Both hops run over long-lived bidirectional gRPC streams with per-destination batching.

The sender's batching and failure handling are tested against an in-process
Delivery server we control; the rest against the real processes: a burst of
posts for one video, a dispatcher killed while its streams carry requests, and
an RTMS node restarted under its dispatchers' streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest

from livecomments.cli.cluster import Cluster
from livecomments.dispatcher.router import MAX_IN_FLIGHT, NodeGone, _Sender
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc
from livecomments.kernel.rpcstream import SERVER_OPTIONS
from tests.support import Api, Viewer, unique

SESSION_TIMEOUT = 4.0
CLUSTER_ENV = {"LIVECOMMENTS_ZK_SESSION_TIMEOUT": str(SESSION_TIMEOUT)}


# -- the dispatcher's sender against a Delivery server we control -----------------


class GatedDelivery(pb_grpc.DeliveryServicer):  # type: ignore[misc]
    """Records every DeliverStream message; answers only while ``gate`` is open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []  # the seqs of each message, in arrival order
        self.streams = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def DeliverStream(
        self, requests: AsyncIterator[pb.DeliverRequest], context: Any
    ) -> AsyncIterator[pb.DeliverReply]:
        self.streams += 1
        async for request in requests:
            self.batches.append([e.seq for e in request.events])
            await self.gate.wait()
            yield pb.DeliverReply(id=request.id, accepted=len(request.events))


@contextlib.asynccontextmanager
async def delivery_server(
    servicer: GatedDelivery, port: int = 0
) -> AsyncIterator[tuple[grpc.aio.Server, int]]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_DeliveryServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield server, bound
    finally:
        await server.stop(None)


def events(*seqs: int) -> list[pb.Event]:
    return [pb.Event(video_id="v", seq=s, frame=b"data: x\n\n") for s in seqs]


@pytest.mark.timeout(30)
async def test_a_burst_for_one_node_is_one_message_and_batches_fill_while_others_fly() -> None:
    servicer = GatedDelivery()
    async with delivery_server(servicer) as (_, port):
        sender = _Sender("n1", f"127.0.0.1:{port}", timeout=5.0)
        try:
            # Sent in one turn of the loop: one message.
            await asyncio.gather(*(sender.send(events(s)) for s in range(1, 101)))
            assert servicer.batches == [list(range(1, 101))]

            # With the node slow to answer, MAX_IN_FLIGHT messages are out and the
            # rest queue up and leave together once one is answered.
            servicer.gate.clear()
            waiting = []
            for s in range(101, 101 + MAX_IN_FLIGHT):
                waiting.append(sender.send(events(s)))
                await asyncio.sleep(0.05)
            waiting += [sender.send(events(s)) for s in range(201, 301)]
            await asyncio.sleep(0.2)
            assert len(servicer.batches) == 2  # the first message waits at the gate
            servicer.gate.set()
            await asyncio.gather(*waiting)
            later = servicer.batches[1:]
            assert [s for batch in later for s in batch] == [
                *range(101, 101 + MAX_IN_FLIGHT),
                *range(201, 301),
            ]
            assert later[-1] == list(range(201, 301))
            assert servicer.streams == 1  # all of it over one stream
        finally:
            await sender.close()


@pytest.mark.timeout(30)
async def test_a_broken_stream_fails_its_batches_and_the_next_send_reopens_it() -> None:
    servicer = GatedDelivery()
    async with delivery_server(servicer) as (server, port):
        sender = _Sender("n1", f"127.0.0.1:{port}", timeout=5.0)
        try:
            await sender.send(events(1))
            servicer.gate.clear()
            stuck = sender.send(events(2))
            await asyncio.sleep(0.1)
            await server.stop(None)  # the node goes away with a batch in flight
            with pytest.raises(NodeGone):
                await stuck
            with pytest.raises(NodeGone):  # nobody listens on the port now
                await sender.send(events(3))
            servicer.gate.set()
            async with delivery_server(servicer, port):  # back on the same address
                deadline = time.monotonic() + 5
                while True:
                    try:
                        await sender.send(events(4))
                        break
                    except NodeGone:
                        assert time.monotonic() < deadline, "the stream never reopened"
                        await asyncio.sleep(0.1)
            assert servicer.batches[-1] == [4]
            assert servicer.streams >= 2
        finally:
            await sender.close()


@pytest.mark.timeout(30)
async def test_a_batch_that_outlives_the_deliver_timeout_fails_everything_in_flight() -> None:
    servicer = GatedDelivery()
    async with delivery_server(servicer) as (_, port):
        sender = _Sender("n1", f"127.0.0.1:{port}", timeout=0.5)
        try:
            await sender.send(events(1))
            servicer.gate.clear()  # the node hangs
            started = time.monotonic()
            results = await asyncio.gather(
                sender.send(events(2)), sender.send(events(3)), return_exceptions=True
            )
            assert all(isinstance(r, NodeGone) for r in results), results
            assert 0.4 < time.monotonic() - started < 2.0
            servicer.gate.set()
            await sender.send(events(4))  # a new stream
            assert servicer.streams == 2
        finally:
            await sender.close()


# -- the real processes ------------------------------------------------------------


def rtms_url(cluster: Cluster, index: int) -> str:
    return cluster.services[f"rtms-{index}"].url


def assert_exactly_once_in_order(got: list[Any], posted: list[dict[str, Any]]) -> None:
    ids = [e.json()["id"] for e in got]
    assert len(ids) == len(set(ids)), "a comment arrived twice"
    assert set(ids) == {c["id"] for c in posted}
    seqs = [e.seq for e in got]
    assert seqs == sorted(seqs), "out of seq order"


@pytest.mark.timeout(90)
async def test_a_burst_for_one_video_reaches_every_viewer_once_in_order(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("streamburst")
    tokens = [await api.register(unique("u")) for _ in range(8)]
    viewers = [
        await Viewer(f"{rtms_url(cluster, i)}/stream/{video}", session).connect() for i in (1, 2)
    ]

    async def post(n: int) -> dict[str, Any]:
        return await api.post(video, f"b{n}", tokens[n % 8])

    try:
        posted = await asyncio.gather(*(post(n) for n in range(300)))
        assert sorted(c["seq"] for c in posted) == list(range(1, 301))
        for viewer in viewers:
            got = await viewer.wait_for(300, timeout=30)
            assert_exactly_once_in_order(got, posted)
        await asyncio.sleep(0.3)
        assert all(len(v.of("comment")) == 300 for v in viewers)
    finally:
        for viewer in viewers:
            await viewer.close()


@pytest.mark.faults
@pytest.mark.timeout(90)
async def test_a_dispatcher_killed_mid_stream_loses_no_acknowledged_comment(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("streamkill")
    tokens = [await api.register(unique("u")) for _ in range(4)]
    viewers = [
        await Viewer(f"{rtms_url(cluster, i)}/stream/{video}", session).connect() for i in (1, 2)
    ]
    posted: list[dict[str, Any]] = []
    underway = asyncio.Event()

    async def poster(token: str, n: int) -> None:
        for k in range(n):
            posted.append(await api.post(video, f"{token[-6:]} {k}", token))
            if len(posted) >= 40:
                underway.set()
            await asyncio.sleep(0.01)

    try:
        posting = asyncio.gather(*(poster(t, 40) for t in tokens))
        await asyncio.wait_for(underway.wait(), 30)
        cluster.services["dispatcher-1"].proc.kill()  # kill -9 with requests on its streams
        await posting  # every POST was acknowledged (201)
        assert len(posted) == 160
        for viewer in viewers:
            got = await viewer.wait_for(160, timeout=30)
            assert_exactly_once_in_order(got, posted)
        await asyncio.sleep(0.5)
        assert all(len(v.of("comment")) == 160 for v in viewers)
    finally:
        for viewer in viewers:
            await viewer.close()
        cluster.restart("dispatcher-1")


@pytest.mark.faults
@pytest.mark.timeout(90)
async def test_deliveries_resume_after_an_rtms_node_restarts_under_the_streams(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("streamrestart")
    token = await api.register(unique("poster"))
    viewer = await Viewer(f"{rtms_url(cluster, 1)}/stream/{video}", session).connect()
    first = await api.post(video, "before", token)
    (seen,) = await viewer.wait_for(1)
    await viewer.close()

    # kill -9 and back at once, same id and address: the dispatchers keep their
    # channel to it, their streams broke and must be opened again.
    cluster.services["rtms-1"].proc.kill()
    cluster.restart("rtms-1")
    back = await Viewer(
        f"{rtms_url(cluster, 1)}/stream/{video}?last_event_id={seen.id}", session
    ).connect()
    try:
        assert back.status == 200, (back.status, back.error)
        posted = []
        started = time.monotonic()
        while time.monotonic() - started < 15:
            posted.append(await api.post(video, f"after {len(posted)}", token))
            sent_at = time.monotonic()
            with contextlib.suppress(AssertionError):
                await back.wait_for(len(posted), timeout=0.5)
                if len(posted) >= 5 and time.monotonic() - sent_at < 0.5:
                    break  # live again: the last one arrived as it was posted
        else:
            raise AssertionError(f"deliveries never resumed: {[e.id for e in back.events]}")
        got = await back.wait_for(len(posted))
        assert first["id"] not in {e.json()["id"] for e in got}
        assert_exactly_once_in_order(got, posted)
    finally:
        await back.close()
