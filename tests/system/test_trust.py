"""The internal trust boundaries (issue 10, items 9 and 10).

- gRPC between the components is mutual TLS with one certificate per role: a
  caller without the cluster's credentials (plaintext, TLS without a client
  certificate, a certificate from another CA) is refused by the dispatcher and
  by the RTMS node, and an authenticated peer in the wrong role is refused too.
- The RTMS node treats wire events as untrusted: a bad kind, an id that is not
  ``{epoch}-{seq}``, an oversize frame, a smuggled second SSE event or an epoch
  Redis does not confirm never reach a viewer, and the video keeps flowing. A
  genuine epoch change (Redis lost the counter) still resets viewers.
- The RTMS gRPC listens on its own address (``grpc_host``, 127.0.0.2 here), the
  one published in ZooKeeper.
- ZooKeeper: with ``zk_auth`` every znode the project creates is closed to a
  client without the credentials (NoAuthError), while the cluster and the CLI
  (with them) work.

The module's cluster runs with all of it: ZooKeeper digest auth, gRPC on
127.0.0.2, mutual TLS (as every cluster does).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import trustme
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import make_digest_acl_credential
from redis.asyncio import Redis

from livecomments.cli.cluster import Backends, Cluster
from livecomments.cli.launcher import port_open, spawn
from livecomments.coord.paths import Paths
from livecomments.kernel import events
from livecomments.kernel.grpcauth import (
    COMMENT_SERVICE,
    DISPATCHER,
    OPERATOR,
    RTMS,
    GrpcConfigError,
    GrpcSecurity,
    role_name,
)
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc
from livecomments.kernel.redis.keys import Keys
from livecomments.kernel.settings import BackendSettings
from livecomments.rtms.wire import refusal
from tests.conftest import NO_LIMITS, make_cluster
from tests.support import Api, Viewer, cli, unique

ZK_AUTH = "livecomments:s3cret-for-tests"
GRPC_HOST = "127.0.0.2"  # not the SSE host (127.0.0.1)
MAX_FRAME = 8192


@pytest.fixture(scope="module")
def cluster(run_root: Path, backends: Backends) -> Iterator[Cluster]:
    started = make_cluster(
        run_root,
        backends,
        "trust",
        zk_auth=ZK_AUTH,
        extra_env={
            **NO_LIMITS,
            "LIVECOMMENTS_GRPC_HOST": GRPC_HOST,
            "LIVECOMMENTS_MAX_FRAME_BYTES": str(MAX_FRAME),
        },
    )
    started.start(dispatchers=1, rtms=1, comment_services=1)
    yield started
    started.stop()


def rtms_grpc(cluster: Cluster) -> str:
    return f"{GRPC_HOST}:{cluster.services['rtms-1'].env['LIVECOMMENTS_GRPC_PORT']}"


def dispatcher_grpc(cluster: Cluster) -> str:
    return cluster.services["dispatcher-1"].url


async def health(cluster: Cluster, session: aiohttp.ClientSession) -> dict[str, Any]:
    async with session.get(cluster.services["rtms-1"].url + "/healthz") as response:
        assert response.status == 200
        return dict(await response.json())


async def viewer_with(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession, text: str
) -> tuple[str, str, Viewer, dict[str, Any]]:
    """A new video with one viewer that got one comment: (video, token, viewer, comment)."""
    video = unique("trust")
    token = await api.register(unique("poster"))
    viewer = await Viewer(f"{cluster.services['rtms-1'].url}/stream/{video}", session).connect()
    first = await api.post(video, text, token)
    await viewer.wait_for(1)
    return video, token, viewer, first


# -- who may speak gRPC ------------------------------------------------------------


async def routes(channel: grpc.aio.Channel) -> pb.RoutesReply:
    return await pb_grpc.DispatcherStub(channel).Routes(pb.RoutesRequest(), timeout=5)


async def deliver(channel: grpc.aio.Channel, *batch: pb.Event) -> pb.DeliverReply:
    stub = pb_grpc.DeliveryStub(channel)
    return await stub.Deliver(pb.DeliverRequest(events=list(batch)), timeout=5)


def foreign(role: str, cluster: Cluster) -> GrpcSecurity:
    """A certificate for the right role name, signed by another CA."""
    ca = trustme.CA(organization_name="not livecomments")
    cert = ca.issue_cert(role_name(role))
    return GrpcSecurity(
        Path(cluster.grpc_roles[role]["LIVECOMMENTS_GRPC_CA"]).read_bytes(),
        b"".join(blob.bytes() for blob in cert.cert_chain_pems),
        cert.private_key_pem.bytes(),
    )


async def refused_code(channel: grpc.aio.Channel, call: Any) -> grpc.StatusCode:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(channel)
    return caught.value.code()


@pytest.mark.timeout(60)
async def test_grpc_refuses_callers_without_the_cluster_credentials(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    targets = [(dispatcher_grpc(cluster), DISPATCHER, routes), (rtms_grpc(cluster), RTMS, deliver)]
    ca = cluster.grpc_security(OPERATOR).ca
    for address, role, call in targets:
        # Plaintext: the TLS handshake never happens.
        plain = grpc.aio.insecure_channel(address)
        assert await refused_code(plain, call) == grpc.StatusCode.UNAVAILABLE
        # TLS trusting the cluster's CA, but no client certificate.
        anonymous = grpc.aio.secure_channel(
            address,
            grpc.ssl_channel_credentials(root_certificates=ca),
            options=[("grpc.ssl_target_name_override", role_name(role))],
        )
        assert await refused_code(anonymous, call) == grpc.StatusCode.UNAVAILABLE
        # A certificate naming the right role, from another CA.
        impostor = foreign(DISPATCHER if role == RTMS else OPERATOR, cluster)
        assert await refused_code(impostor.channel(address, role), call) == (
            grpc.StatusCode.UNAVAILABLE
        )

    # Authenticated, but in a role that may not do this.
    as_comment_service = cluster.grpc_security(COMMENT_SERVICE)
    assert (
        await refused_code(as_comment_service.channel(rtms_grpc(cluster), RTMS), deliver)
        == grpc.StatusCode.PERMISSION_DENIED
    )
    as_rtms = cluster.grpc_security(RTMS)

    async def dispatch(channel: grpc.aio.Channel) -> Any:
        stub = pb_grpc.DispatcherStub(channel)
        return await stub.Dispatch(pb.DispatchRequest(), timeout=5)

    assert await refused_code(as_rtms.channel(dispatcher_grpc(cluster), DISPATCHER), dispatch) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # A client checks the server's role too: the dispatcher is not an RTMS node.
    as_dispatcher = cluster.grpc_security(DISPATCHER)
    assert (
        await refused_code(as_dispatcher.channel(dispatcher_grpc(cluster), RTMS), routes)
        == grpc.StatusCode.UNAVAILABLE
    )

    # With the right credentials: the operator's tool reads Routes, a dispatcher delivers.
    async with cluster.grpc_security(OPERATOR).channel(
        dispatcher_grpc(cluster), DISPATCHER
    ) as channel:
        assert "rtms-1" in (await routes(channel)).live_nodes
    async with as_dispatcher.channel(rtms_grpc(cluster), RTMS) as channel:
        assert (await deliver(channel)).accepted == 0

    # And the cluster served its own traffic throughout.
    video, token, viewer, _ = await viewer_with(cluster, api, session, "still here")
    await api.post(video, "and here", token)
    assert [e.json()["text"] for e in await viewer.wait_for(2)] == ["still here", "and here"]
    await viewer.close()


async def test_a_process_without_grpc_credentials_refuses_to_start(
    cluster: Cluster, tmp_path: Path
) -> None:
    env = {**cluster.base_env(), "LIVECOMMENTS_GRPC_CA": "", "LIVECOMMENTS_GRPC_CERT": "",
           "LIVECOMMENTS_GRPC_KEY": "", "LIVECOMMENTS_GRPC_INSECURE": "0",
           "LIVECOMMENTS_PORT": "0"}  # fmt: skip
    proc = spawn("dispatcher", [sys.executable, "-m", "livecomments", "dispatcher"], tmp_path, env)
    code = await asyncio.to_thread(proc.popen.wait, 60)
    assert code != 0
    assert "LIVECOMMENTS_GRPC_CA" in proc.log_tail()
    with pytest.raises(GrpcConfigError):
        GrpcSecurity.from_settings(BackendSettings(grpc_ca="/x"))  # half configured


# -- what the RTMS node accepts from an authenticated peer -----------------------------


def test_frames_the_comment_service_builds_pass_and_forgeries_do_not() -> None:
    doc = {"_id": 7, "video_id": "v", "seq": 5, "epoch": 1700000000000, "user_id": 1,
           "author": "a", "text": "hi \u2028 there\nnew line\r"}  # fmt: skip
    good = events.comment_event(doc)
    assert refusal(good, MAX_FRAME) is None
    reactions = events.reactions_event("v", {"7": {"like": 2}})
    assert refusal(reactions, MAX_FRAME) is None

    def forged(frame: bytes, **fields: Any) -> pb.Event:
        event = pb.Event()
        event.CopyFrom(good)
        event.frame = frame
        for name, value in fields.items():
            setattr(event, name, value)
        return event

    head = b"id: 1700000000000-5\n"
    assert refusal(forged(head + b'event: moved\ndata: {"url": "x"}\n\n'), MAX_FRAME) == "kind"
    assert refusal(forged(good.frame, kind=pb.REACTIONS), MAX_FRAME) == "kind"
    assert refusal(forged(good.frame, kind=pb.KIND_UNSPECIFIED), MAX_FRAME) == "kind"
    assert refusal(forged(good.frame, seq=6), MAX_FRAME) == "id"
    assert refusal(forged(good.frame, epoch=1), MAX_FRAME) == "id"
    smuggled = good.frame + b'event: moved\ndata: {"url": "x"}\n\n'
    assert refusal(forged(smuggled), MAX_FRAME) == "shape"
    assert refusal(forged(good.frame.replace(b"data: {", b"data: {\r")), MAX_FRAME) == "shape"
    assert refusal(forged(good.frame[:-2]), MAX_FRAME) == "shape"
    big = head + b"event: comment\ndata: {" + b"x" * MAX_FRAME + b"}\n\n"
    assert refusal(forged(big), MAX_FRAME) == "size"
    assert refusal(forged(b'event: moved\ndata: {"url": "x"}\n\n', seq=0), MAX_FRAME) == "kind"


@pytest.mark.timeout(60)
async def test_forged_events_never_reach_viewers_and_the_video_keeps_flowing(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video, token, viewer, first = await viewer_with(cluster, api, session, "before")
    epoch = first["epoch"]
    before = (await health(cluster, session))["events_refused"]

    def event(frame: bytes, *, seq: int = 2, at: int = epoch, kind: int = pb.COMMENT) -> pb.Event:
        return pb.Event(video_id=video, seq=seq, epoch=at, kind=kind, frame=frame)  # type: ignore[arg-type]

    moved = b'event: moved\ndata: {"url": "https://evil.example/stream"}\n\n'
    huge = 1 << 62
    forgeries = {
        "kind": [
            event(f"id: {epoch}-2\n".encode() + moved),
            event(moved, seq=0, kind=pb.REACTIONS),
        ],
        "id": [event(f'id: {epoch}-999\nevent: comment\ndata: {{"text": "forged"}}\n\n'.encode())],
        "size": [
            event(
                f"id: {epoch}-2\nevent: comment\ndata: {{".encode()
                + b"x" * (MAX_FRAME + 1)
                + b"}\n\n"
            )
        ],
        "shape": [event(f"id: {epoch}-2\nevent: comment\ndata: {{}}\n\n".encode() + moved)],
        "epoch": [
            event(f'id: {huge}-2\nevent: comment\ndata: {{"text": "forged"}}\n\n'.encode(), at=huge)
        ],
        # Far ahead: had it waited for the gap to be skipped, every real event
        # after it would have been dropped as a duplicate.
        "seq": [
            event(
                f'id: {epoch}-{huge}\nevent: comment\ndata: {{"text": "forged"}}\n\n'.encode(),
                seq=huge,
            )
        ],
    }
    async with cluster.grpc_security(DISPATCHER).channel(rtms_grpc(cluster), RTMS) as channel:
        for batch in forgeries.values():
            await deliver(channel, *batch)

    async def counted() -> dict[str, int]:
        while True:
            refused = (await health(cluster, session))["events_refused"]
            if all(refused[k] - before[k] >= len(v) for k, v in forgeries.items()):
                return dict(refused)
            await asyncio.sleep(0.05)

    refused = await asyncio.wait_for(counted(), 10)
    assert {k: refused[k] - before[k] for k in forgeries} == {
        k: len(v) for k, v in forgeries.items()
    }

    # The video was not stopped: the next real comment takes seq 2 and arrives.
    after = await api.post(video, "after", token)
    assert (after["seq"], after["epoch"]) == (2, epoch)
    got = await viewer.wait_for(2)
    assert [(e.id, e.json()["text"]) for e in got] == [
        (f"{epoch}-1", "before"),
        (f"{epoch}-2", "after"),
    ]
    assert {e.event for e in viewer.events} == {"comment"}  # no moved, no reset, no reactions
    assert b"evil" not in viewer.raw and b"forged" not in viewer.raw
    await viewer.close()


@pytest.mark.timeout(60)
async def test_a_genuine_epoch_change_still_resets_viewers(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video, token, viewer, first = await viewer_with(cluster, api, session, "one")
    # Redis loses the video's counter: the sequencer re-seeds it from the store,
    # with a new epoch, and the RTMS node confirms that epoch with Redis.
    keys = Keys(cluster.base_env()["LIVECOMMENTS_REDIS_PREFIX"])
    redis = Redis.from_url(cluster.backends.redis_url)
    try:
        await redis.delete(keys.seq(video), keys.epoch(video))
    finally:
        await redis.aclose()
    second = await api.post(video, "two", token)
    assert second["epoch"] != first["epoch"] and second["seq"] == 2
    got = await viewer.wait_for(2)
    assert got[-1].id == f"{second['epoch']}-2"
    resets = viewer.of("reset")
    assert [r.json() for r in resets] == [{"reason": "epoch_changed", "epoch": second["epoch"]}]
    assert viewer.events.index(resets[0]) < viewer.events.index(got[-1])
    await viewer.close()


# -- ZooKeeper --------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_zookeeper_znodes_are_closed_without_the_credentials(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    paths = Paths(cluster.base_env()["LIVECOMMENTS_ZK_ROOT"])
    video, token, viewer, _ = await viewer_with(cluster, api, session, "hosted")
    hosted = paths.hosted_by(video, "rtms-1")

    def intrude() -> list[str]:
        outsider = KazooClient(hosts=cluster.backends.zk_hosts)
        outsider.start(timeout=10)
        refused = []
        try:
            attempts = {
                "create": lambda: outsider.create(paths.placement_of(video), b'{"nodes":[]}'),
                "set": lambda: outsider.set(paths.rtms_node("rtms-1"), b"{}"),
                "delete": lambda: outsider.delete(hosted),
                "read": lambda: outsider.get(paths.dispatchers),
            }
            for name, attempt in attempts.items():
                try:
                    attempt()
                except NoAuthError:
                    refused.append(name)
        finally:
            outsider.stop()
            outsider.close()
        return refused

    assert await asyncio.to_thread(intrude) == ["create", "set", "delete", "read"]

    # The CLI, with the same settings, reads and writes; what it creates is closed too.
    _, nodes, _ = await cli(cluster, "nodes")
    (node,) = nodes["rtms"]
    assert node["node"] == "rtms-1"
    assert node["grpc"] == rtms_grpc(cluster)  # the gRPC address, not the SSE one
    await cli(cluster, "pin", video, "rtms-1")

    def acls() -> dict[str, list[Any]]:
        member = KazooClient(hosts=cluster.backends.zk_hosts, auth_data=[("digest", ZK_AUTH)])
        member.start(timeout=10)
        try:
            return {
                p: member.get_acls(p)[0]
                for p in (paths.root, paths.rtms_node("rtms-1"), hosted, paths.placement_of(video))
            }
        finally:
            member.stop()
            member.close()

    user, password = ZK_AUTH.split(":", 1)
    identity = make_digest_acl_credential(user, password)
    for path, acl in (await asyncio.to_thread(acls)).items():
        assert [(a.id.scheme, a.id.id, a.perms) for a in acl] == [("digest", identity, 31)], path

    # Without the credentials, the CLI fails and says why.
    env = {k: v for k, v in cluster.base_env().items() if k != "LIVECOMMENTS_ZK_AUTH"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livecomments", "nodes", "--json",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and b"NoAuth" in err, err

    # The RTMS gRPC is on its own address only; the cluster works through it.
    assert not port_open(int(rtms_grpc(cluster).rsplit(":", 1)[1]), "127.0.0.1")
    await api.post(video, "delivered", token)
    assert [e.json()["text"] for e in await viewer.wait_for(2)] == ["hosted", "delivered"]
    await viewer.close()
