"""What the operator commands do: read and write ZooKeeper directly.

The layout is in docs/architecture.md, "The ZooKeeper layout".

A CLI run is one short synchronous session, so this uses a plain
:class:`~kazoo.client.KazooClient` rather than the asyncio bridge the services
share. Every call still has a deadline: without a quorum kazoo would wait
forever, and an operator must get an error, not a hung terminal.

Placement is computed with :func:`coord.placement.place`, from the same znodes
the services mirror, so what the CLI shows is what the comment service and the
RTMS nodes decide. The CLI writes intent only (pins, drains, rebalance
requests); the RTMS nodes move their viewers when they see it.
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from livecomments.coord.client import zk_security
from livecomments.coord.paths import Paths, check_name
from livecomments.coord.placement import Policy, pinned_nodes, place
from livecomments.kernel.errors import (
    Conflict,
    CoordinationTimeout,
    NotFound,
    Unavailable,
    ValidationError,
)
from livecomments.kernel.ids import valid_video_id
from livecomments.kernel.settings import BackendSettings

KEEP_REBALANCE_REQUESTS = 20  # older request znodes are deleted; nodes only react to new ones
REBALANCE_PREFIX = "req-"

# kazoo logs every dropped connection at WARNING; with no logging configured
# Python would print those to stderr next to our one clear error message.
_quiet = logging.getLogger("livecomments.cli.ops.kazoo")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def operator() -> str:
    """``user@host``, recorded with every change so the next operator knows whom to ask."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without /etc/passwd entry)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json(data: bytes | None) -> dict[str, Any]:
    """A znode's JSON object; anything else reads as empty (as the services' mirrors do)."""
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class Snapshot:
    """One read of everything placement depends on, taken at once."""

    rtms: dict[str, dict[str, Any]]  # live RTMS node -> its load report
    dispatchers: dict[str, dict[str, Any]]
    workers: dict[str, str]  # comment-service lease znode -> Snowflake worker id
    hosted: dict[str, list[str]]  # video -> nodes with /hosted/{video}/{node}
    pins: dict[str, dict[str, Any]]
    drains: dict[str, dict[str, Any]]
    rebalances: list[str]  # request znodes, oldest first
    policy: Policy

    @property
    def placeable(self) -> dict[str, dict[str, Any]]:
        # The services only place on nodes that published where viewers reach them.
        return {n: i for n, i in self.rtms.items() if isinstance(i.get("sse_url"), str)}

    def placed(self, video: str) -> list[str]:
        return place(video, self.placeable, self.pins, self.drains, self.policy)

    def viewers_by_node(self, video: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node, info in self.rtms.items():
            per_video = info.get("viewers_by_video")
            if isinstance(per_video, dict) and video in per_video:
                counts[node] = _count(per_video[video])
        return counts

    def videos(self) -> list[str]:
        """Every video someone hosts or an operator pinned."""
        return sorted(set(self.hosted) | set(self.pins))


class Ops:
    """Operator actions on one ZooKeeper session; each returns a JSON-ready dict."""

    def __init__(self, client: KazooClient, settings: BackendSettings) -> None:
        self.client = client
        self.paths = Paths(settings.zk_root)
        self.policy = Policy.from_settings(settings)
        self.timeout = settings.zk_timeout
        self.hosts = settings.zk_hosts

    @classmethod
    @contextmanager
    def connect(cls, settings: BackendSettings) -> Iterator[Ops]:
        """A session for one command; Unavailable when ZooKeeper cannot be reached in time."""
        client = KazooClient(
            hosts=settings.zk_hosts,
            timeout=settings.zk_session_timeout,
            # Try the other ensemble members until start()'s deadline, not forever.
            connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=1.0),
            logger=_quiet,
            **zk_security(settings.zk_auth),  # the services' credentials and ACLs
        )
        try:
            client.start(timeout=settings.zk_timeout)
        except KazooTimeoutError as exc:  # start() has already stopped the client
            raise CoordinationTimeout(
                f"cannot reach ZooKeeper at {settings.zk_hosts} "
                f"within {settings.zk_timeout:g}s (LIVECOMMENTS_ZK_HOSTS)"
            ) from exc
        try:
            yield cls(client, settings)
        finally:
            client.stop()
            client.close()

    # -- calls with a deadline ---------------------------------------------------

    def _wait(self, what: str, result: Any, deadline: float) -> Any:
        try:
            return result.get(timeout=max(0.0, deadline - time.monotonic()))
        except KazooTimeoutError as exc:
            raise CoordinationTimeout(
                f"ZooKeeper {what} timed out after {self.timeout:g}s"
            ) from exc
        except (NoNodeError, NodeExistsError):
            raise  # answers, not failures: the caller decides what they mean
        except KazooException as exc:
            raise Unavailable(f"ZooKeeper {what} failed: {type(exc).__name__}") from exc

    def _call(self, what: str, method: Callable[..., Any], path: str, **kwargs: Any) -> Any:
        """``method`` is one of the client's ``*_async`` calls, waited for with the deadline."""
        return self._many(what, method, [path], **kwargs, missing_ok=False)[path]

    def _many(
        self,
        what: str,
        method: Callable[..., Any],
        paths: Sequence[str],
        *,
        missing_ok: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Send every call, then collect: one round trip's latency for N reads.

        With ``missing_ok`` a path that vanished in between (a node or a viewer
        left) is left out of the answer; without it NoNodeError is raised.
        """
        deadline = time.monotonic() + self.timeout
        try:
            pending = {path: method(path, **kwargs) for path in paths}
        except KazooException as exc:  # e.g. the session is already gone
            raise Unavailable(f"ZooKeeper {what} failed: {type(exc).__name__}") from exc
        answers: dict[str, Any] = {}
        for path, result in pending.items():
            try:
                answers[path] = self._wait(what, result, deadline)
            except NoNodeError:
                if not missing_ok:
                    raise
        return answers

    def _children(self, path: str) -> list[str]:
        try:
            return list(self._call(f"list {path}", self.client.get_children_async, path))
        except NoNodeError:
            return []

    def _data(self, parent: str) -> dict[str, bytes]:
        """Each child of ``parent`` with its data."""
        paths = [f"{parent}/{name}" for name in self._children(parent)]
        answers = self._many(f"read {parent}", self.client.get_async, paths)
        return {_leaf(path): bytes(data or b"") for path, (data, _stat) in answers.items()}

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            data, _stat = self._call(f"read {path}", self.client.get_async, path)
        except NoNodeError:
            return None
        return _json(data)

    def _create(self, path: str, record: dict[str, Any], *, sequence: bool = False) -> str:
        data = json.dumps(record).encode()
        created = self._call(
            f"create {path}",
            self.client.create_async,
            path,
            value=data,
            sequence=sequence,
            makepath=True,
        )
        return str(created)

    def _put(self, path: str, record: dict[str, Any]) -> None:
        try:
            self._create(path, record)
        except NodeExistsError:
            self._call(
                f"write {path}", self.client.set_async, path, value=json.dumps(record).encode()
            )

    def _delete(self, path: str) -> bool:
        """False when it was already gone."""
        try:
            self._call(f"delete {path}", self.client.delete_async, path)
        except NoNodeError:
            return False
        return True

    # -- reading -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        p = self.paths
        videos = self._children(p.hosted)
        hosted = {
            _leaf(path): nodes
            for path, nodes in self._many(
                "list hosted", self.client.get_children_async, [f"{p.hosted}/{v}" for v in videos]
            ).items()
        }
        rebalances = self._children(p.rebalance)
        return Snapshot(
            rtms={n: _json(d) for n, d in self._data(p.rtms_nodes).items()},
            dispatchers={n: _json(d) for n, d in self._data(p.dispatchers).items()},
            workers={
                n: d.decode(errors="replace") for n, d in self._data(p.comment_workers).items()
            },
            hosted={v: sorted(nodes) for v, nodes in hosted.items() if nodes},
            pins={v: _json(d) for v, d in self._data(p.placement).items()},
            drains={n: _json(d) for n, d in self._data(p.drain).items()},
            rebalances=sorted(
                (r for r in rebalances if r.startswith(REBALANCE_PREFIX)), key=_sequence
            ),
            policy=self.policy,
        )

    def nodes(self) -> dict[str, Any]:
        snap = self.snapshot()
        hosting: dict[str, list[str]] = {}
        for video, hosts in snap.hosted.items():
            for node in hosts:
                hosting.setdefault(node, []).append(video)
        rows = []
        # A drain outlives its node (it is persistent): show it, so it is not forgotten.
        for node in sorted(set(snap.rtms) | set(snap.drains)):
            info = snap.rtms.get(node, {})
            per_video = info.get("viewers_by_video")
            rows.append(
                {
                    "node": node,
                    "live": node in snap.rtms,
                    "sse_url": info.get("sse_url"),
                    "grpc": info.get("grpc"),
                    "connections": _count(info.get("connections")),
                    "videos": _count(info.get("videos")),
                    "hosted": sorted(hosting.get(node, [])),
                    "draining": node in snap.drains,  # what the operator asked
                    "draining_reported": info.get("draining") is True,  # what the node says
                    "viewers_by_video": per_video if isinstance(per_video, dict) else {},
                    "viral_videos": [
                        v for v in info.get("viral_videos") or [] if isinstance(v, str)
                    ],
                }
            )
        dispatchers = [
            {"id": d, "grpc": info.get("grpc")} for d, info in sorted(snap.dispatchers.items())
        ]
        workers = [{"lease": w, "worker_id": wid} for w, wid in sorted(snap.workers.items())]
        return {"rtms": rows, "dispatchers": dispatchers, "comment_workers": workers}

    def videos(self) -> dict[str, Any]:
        snap = self.snapshot()
        rows = []
        for video in snap.videos():
            by_node = snap.viewers_by_node(video)
            pin = snap.pins.get(video)
            rows.append(
                {
                    "video": video,
                    "placed": snap.placed(video),
                    "hosted": snap.hosted.get(video, []),
                    "viewers": sum(by_node.values()),
                    "viewers_by_node": by_node,
                    "pinned": pinned_nodes(pin) if pin is not None else None,
                }
            )
        rows.sort(key=_busiest_first)
        return {"videos": rows}

    def status(self) -> dict[str, Any]:
        snap = self.snapshot()
        return {
            "zookeeper": {
                "hosts": self.hosts,
                "root": self.paths.root or "/",
                "reachable": True,
                **self._server(),
                "error": None,
            },
            "rtms_nodes": len(snap.rtms),
            "dispatchers": len(snap.dispatchers),
            "comment_workers": len(snap.workers),
            "hosted_videos": len(snap.hosted),
            # Load reports count every connection; viewers_by_video lists only a node's top videos.
            "viewers": sum(_count(info.get("connections")) for info in snap.rtms.values()),
            "pins": len(snap.pins),
            "drains": len(snap.drains),
            "rebalance_requests": len(snap.rebalances),
        }

    def _server(self) -> dict[str, Any]:
        """Mode and version from ``srvr``; None when the server does not allow four-letter words."""
        found: dict[str, Any] = {"mode": None, "version": None}
        try:
            # Its own socket, bounded by the session timeout; refused unless whitelisted.
            answer = self.client.command(b"srvr")
        except (OSError, KazooException):
            return found
        for line in answer.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Mode":
                found["mode"] = value.strip()
            elif key.strip() == "Zookeeper version":
                found["version"] = value.strip().split(",")[0]
        return found

    # -- changing ----------------------------------------------------------------

    def pin(self, video: str, nodes: Sequence[str]) -> dict[str, Any]:
        """Pin ``video`` to ``nodes``; RTMS nodes not in the pin move their viewers of it."""
        _check_video(video)
        wanted = list(dict.fromkeys(nodes))  # order kept, duplicates dropped
        if not wanted:
            raise ValidationError("name at least one node")
        snap = self.snapshot()
        self._check_placeable(snap, wanted)
        return self._write_pin(snap, video, wanted)

    def move(self, video: str, node: str) -> dict[str, Any]:
        """Pin ``video`` to ``node`` alone; refuses videos nobody hosts or pinned."""
        _check_video(video)
        snap = self.snapshot()
        self._check_placeable(snap, [node])
        if video not in snap.hosted and video not in snap.pins:
            raise NotFound(f"unknown video {video!r}: no RTMS node hosts it and it is not pinned")
        return self._write_pin(snap, video, [node])

    def _write_pin(self, snap: Snapshot, video: str, nodes: list[str]) -> dict[str, Any]:
        previous = snap.pins.get(video)
        record = {"nodes": nodes, "by": operator(), "at": now()}
        self._put(self.paths.placement_of(video), record)
        return {
            "video": video,
            **record,
            "previous": pinned_nodes(previous) if previous is not None else None,
            "moving": _elsewhere(snap.viewers_by_node(video), nodes),
        }

    def unpin(self, video: str) -> dict[str, Any]:
        _check_video(video)
        path = self.paths.placement_of(video)
        pin = self._get(path)
        if pin is None or not self._delete(path):
            raise NotFound(f"video {video!r} is not pinned")
        return {"video": video, "unpinned": pinned_nodes(pin)}

    def drain(self, node: str) -> dict[str, Any]:
        """Ask ``node`` to hand its viewers over and take no new ones (idempotent)."""
        _check_node(node)
        path = self.paths.drain_of(node)
        existing = self._get(path)
        if existing is not None:
            return {"node": node, "already": True, **_who(existing)}
        if self._get(self.paths.rtms_node(node)) is None:
            raise NotFound(f"unknown RTMS node {node!r}: {self._live_list()}")
        record = {"by": operator(), "at": now()}
        try:
            self._create(path, record)
        except NodeExistsError:  # another operator was quicker: theirs stands
            return {"node": node, "already": True, **_who(self._get(path) or {})}
        return {"node": node, "already": False, **record}

    def undrain(self, node: str) -> dict[str, Any]:
        _check_node(node)
        path = self.paths.drain_of(node)
        record = self._get(path)
        if record is None or not self._delete(path):
            raise NotFound(f"node {node!r} is not drained")
        return {"node": node, "drained": _who(record)}

    def connections(self, node: str) -> int | None:
        """The node's reported connections; None once it has left."""
        info = self._get(self.paths.rtms_node(node))
        return None if info is None else _count(info.get("connections"))

    def wait_drained(
        self, node: str, seconds: float, progress: Callable[[int], None], interval: float = 0.5
    ) -> int:
        """Poll until ``node`` reports no connections (or has left); the count left at the end."""
        deadline = time.monotonic() + seconds
        last: int | None = None
        while True:
            left = self.connections(node) or 0
            if left != last:
                progress(left)
                last = left
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def plan(self) -> list[dict[str, Any]]:
        """Viewers a rebalance would move: each hosted (video, node) the node is not placed for."""
        snap = self.snapshot()
        moves = []
        for video, hosts in sorted(snap.hosted.items()):
            placed = snap.placed(video)
            by_node = snap.viewers_by_node(video)
            for node in hosts:
                # A dead node's /hosted entries vanish with its session; nobody would act on them.
                if node in snap.rtms and node not in placed:
                    moves.append(
                        {
                            "video": video,
                            "from": node,
                            "to": placed,
                            "viewers": by_node.get(node, 0),
                        }
                    )
        return moves

    def request_rebalance(self, plan: list[dict[str, Any]]) -> dict[str, Any]:
        """Write one request every RTMS node acts on, and drop all but the newest requests."""
        record = {"at": now(), "by": operator(), "plan": plan}
        created = self._create(f"{self.paths.rebalance}/{REBALANCE_PREFIX}", record, sequence=True)
        requests = sorted(
            (r for r in self._children(self.paths.rebalance) if r.startswith(REBALANCE_PREFIX)),
            key=_sequence,
        )
        stale = requests[:-KEEP_REBALANCE_REQUESTS]
        self._many(
            "delete old rebalance requests",
            self.client.delete_async,
            [f"{self.paths.rebalance}/{r}" for r in stale],
        )
        return {"request": _leaf(created), "at": record["at"], "by": record["by"]}

    # -- checks --------------------------------------------------------------------

    def _live_list(self) -> str:
        live = sorted(self._children(self.paths.rtms_nodes))
        return f"live RTMS nodes: {', '.join(live)}" if live else "no RTMS node is live"

    def _check_placeable(self, snap: Snapshot, nodes: Sequence[str]) -> None:
        for node in nodes:
            if node not in snap.rtms:
                live = ", ".join(sorted(snap.rtms)) or "none"
                raise NotFound(f"unknown RTMS node {node!r} (live RTMS nodes: {live})")
            if node in snap.drains:
                # place() ignores pins to draining nodes: the pin would silently not apply.
                raise Conflict(f"node {node!r} is draining; undrain it first")


def _check_video(video: str) -> None:
    if not valid_video_id(video):
        raise ValidationError(f"not a video id: {video!r} (1-64 of A-Z a-z 0-9 _ -)")


def _check_node(node: str) -> None:
    try:
        check_name(node)
    except ValueError as exc:
        raise ValidationError(f"not a node id: {node!r}") from exc


def _who(record: dict[str, Any]) -> dict[str, Any]:
    return {"by": record.get("by"), "at": record.get("at")}


def _elsewhere(by_node: dict[str, int], targets: Sequence[str]) -> dict[str, int]:
    """Viewers per node that is not a target: those are the ones about to be moved."""
    return {node: n for node, n in sorted(by_node.items()) if node not in targets and n}


def _busiest_first(row: dict[str, Any]) -> tuple[int, str]:
    return -int(row["viewers"]), str(row["video"])


def _leaf(path: str) -> str:
    return path.rsplit("/", 1)[1]


def _sequence(name: str) -> int:
    suffix = name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def unreachable_status(settings: BackendSettings, error: str) -> dict[str, Any]:
    """``status`` when ZooKeeper cannot be asked: the same keys, nothing counted."""
    counts = ("rtms_nodes", "dispatchers", "comment_workers", "hosted_videos", "viewers")
    intent = ("pins", "drains", "rebalance_requests")
    return {
        "zookeeper": {
            "hosts": settings.zk_hosts,
            "root": Paths(settings.zk_root).root or "/",
            "reachable": False,
            "mode": None,
            "version": None,
            "error": error,
        },
        **dict.fromkeys(counts + intent),
    }
