"""What the znodes hold: one typed record per payload, encoded and decoded here only.

Writers build a record and ``encode()`` it; readers ``decode()`` bytes (or, from a
mirror that already parsed the JSON, ``from_json()`` an object). Decoding never
fails: a payload that is not a JSON object reads as an empty one, and a field of
the wrong type reads as its default, so one bad or newer writer cannot stop a
reader (the layout is in docs/architecture.md, "The ZooKeeper layout").

``/hosted/{video}/{node}`` carries nothing: the znode's existence is the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Self, TypedDict, cast

import orjson


def json_object(data: bytes | None) -> dict[str, Any]:
    """A payload's JSON object; anything else (garbage, a list, nothing) reads as ``{}``."""
    try:
        value = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def stamp() -> str:
    """When an operator changed something: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _names(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


class _Record:
    """encode/decode for a dataclass whose JSON object has the field names as keys."""

    __slots__ = ()

    def encode(self) -> bytes:
        return orjson.dumps(self)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def decode(cls, data: bytes | None) -> Self:
        return cls.from_json(json_object(data))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class RtmsNode(_Record):
    """``/nodes/rtms/{node}``: where an RTMS node is reached, and its load in coarse steps.

    Only a node with an ``sse_url`` is placed on: viewers could not reach it otherwise.
    Every RTMS node, dispatcher and comment service watches every node's record, so
    a node rewrites it only when it says something new (:func:`worth_publishing`):
    an address, draining, its viral videos, its busy videos, or a count that moved by
    more than a step. Each video's exact viewers are in Redis (``kernel/viewers.py``).
    """

    sse_url: str | None = None
    grpc: str | None = None  # host:port of its Delivery service
    metrics: str | None = None  # its Prometheus endpoint (`livecomments top` reads it)
    boot: str | None = None  # new at each start: which life of the node a Redis count is from
    connections: int = 0
    videos: int = 0
    draining: bool = False  # what the node says (the operator's ask is /drain/{node})
    # Its busy videos (those placement may spread: see ``busy_floor``), not every video.
    viewers_by_video: dict[str, int] = field(default_factory=dict)
    viral_videos: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        per_video = obj.get("viewers_by_video")
        return cls(
            sse_url=_text(obj.get("sse_url")),
            grpc=_text(obj.get("grpc")),
            metrics=_text(obj.get("metrics")),
            boot=_text(obj.get("boot")),
            connections=_count(obj.get("connections")),
            videos=_count(obj.get("videos")),
            draining=obj.get("draining") is True,
            viewers_by_video=(
                {v: _count(n) for v, n in per_video.items() if isinstance(v, str)}
                if isinstance(per_video, dict)
                else {}
            ),
            viral_videos=_names(obj.get("viral_videos")),
        )

    def viewers_of(self, video_id: str) -> int:
        return self.viewers_by_video.get(video_id, 0)


STEP = 0.1  # a count is published again when it moves by more than this share


def busy_floor(spread_viewers: int) -> int:
    """A node lists a video among its busy ones from this many viewers on it (and
    keeps it there down to half): a tenth of the viewers that spread a video, so
    the videos placement spreads are listed, and the small ones (most) are not."""
    return max(1, spread_viewers // 10)


def busy_videos(
    counts: Mapping[str, int], listed: Mapping[str, int], floor: int, cap: int
) -> dict[str, int]:
    """The busy videos a node lists, busiest first (at most ``cap``), from its viewers
    per video: ``floor`` viewers or more, or half of it for one ``listed`` already, so
    one viewer coming and going at the floor does not rewrite the record each time."""
    busy = sorted(
        (
            (n, video)
            for video, n in counts.items()
            if n >= (max(1, floor // 2) if video in listed else floor)
        ),
        reverse=True,
    )
    return {video: n for n, video in busy[:cap]}


def _moved(old: int, new: int, step: int = 0) -> bool:
    """``new`` is news next to the published ``old``: it crossed zero, moved by more
    than :data:`STEP` of the larger, or (``step``) into another multiple of ``step``."""
    if old == new:
        return False
    if (old == 0) != (new == 0) or abs(new - old) > STEP * max(old, new):
        return True
    return step > 0 and old // step != new // step


def worth_publishing(old: RtmsNode | None, new: RtmsNode, spread_viewers: int) -> bool:
    """Whether a node rewrites its record as ``new`` while ``old`` is published.

    Addresses, the boot id, draining, the viral and busy videos: whenever they
    change. Connections, videos and each busy video's viewers: when they move by
    more than a step (or, for a video, into another multiple of ``spread_viewers``,
    where placement would spread it over one node more or fewer).
    """
    if old is None:
        return True
    fixed = ("sse_url", "grpc", "metrics", "boot", "draining", "viral_videos")
    if any(getattr(old, name) != getattr(new, name) for name in fixed):
        return True
    if _moved(old.connections, new.connections) or _moved(old.videos, new.videos):
        return True
    if old.viewers_by_video.keys() != new.viewers_by_video.keys():
        return True
    return any(
        _moved(old.viewers_by_video[video], count, max(1, spread_viewers))
        for video, count in new.viewers_by_video.items()
    )


@dataclass(frozen=True, slots=True)
class Dispatcher(_Record):
    """``/nodes/dispatcher/{id}``: where a dispatcher replica is reached."""

    grpc: str | None = None
    metrics: str | None = None  # its admin listener's Prometheus endpoint, if it has one

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        return cls(grpc=_text(obj.get("grpc")), metrics=_text(obj.get("metrics")))


@dataclass(frozen=True, slots=True)
class Pin(_Record):
    """``/placement/{video}``: an operator's pin of a video to these nodes."""

    nodes: tuple[str, ...] = ()
    by: str | None = None  # user@host
    at: str | None = None  # ISO 8601, UTC

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        return cls(_names(obj.get("nodes")), _text(obj.get("by")), _text(obj.get("at")))


@dataclass(frozen=True, slots=True)
class Drain(_Record):
    """``/drain/{node}``: an operator asked this node to empty itself; outlives the node."""

    by: str | None = None
    at: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        return cls(_text(obj.get("by")), _text(obj.get("at")))


# One viewer move of a rebalance plan; "from" is a keyword, hence the functional form.
Move = TypedDict("Move", {"video": str, "from": str, "to": list[str], "viewers": int})


@dataclass(frozen=True, slots=True)
class RebalanceRequest(_Record):
    """``/rebalance/req-{seq}``: move viewers off nodes not placed for their video.

    RTMS nodes act on a new request's name; the plan is there for the next operator.
    """

    at: str | None = None
    by: str | None = None
    plan: tuple[Move, ...] = ()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        plan = obj.get("plan")
        moves = [m for m in plan if isinstance(m, dict)] if isinstance(plan, list) else []
        return cls(_text(obj.get("at")), _text(obj.get("by")), tuple(cast(list[Move], moves)))


@dataclass(frozen=True, slots=True)
class CommentWorker(_Record):
    """``/nodes/comment/w-{seq}``: the Snowflake worker id a comment service leased,
    and where it is reached.

    Earlier versions wrote the worker id alone, as decimal text; that still reads.
    A lease being taken is still empty (``worker_id`` None).
    """

    worker_id: int | None = None
    url: str | None = None
    metrics: str | None = None

    @classmethod
    def decode(cls, data: bytes | None) -> Self:
        text = (data or b"").strip()
        if text.isdigit():
            return cls(worker_id=int(text))
        return cls.from_json(json_object(data))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        worker = obj.get("worker_id")
        return cls(
            worker_id=worker if isinstance(worker, int) and not isinstance(worker, bool) else None,
            url=_text(obj.get("url")),
            metrics=_text(obj.get("metrics")),
        )
