"""The stream's contract between processes: where a viewer stands, and its URL.

A :class:`Position` is an SSE event id, ``{epoch}-{seq}``: the video's sequence epoch
(a new one starts when Redis loses the counter) and the seq within it. The comment
service hands one out as a history page's ``resume``, RTMS nodes write one on every
sequenced frame and read one back from ``Last-Event-ID``, and every redirect carries
one along in :func:`stream_url`.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import quote

_MAX = 1 << 63  # both parts are int64 on the wire (gRPC) and in the store


class Position(NamedTuple):
    """A point in a video's stream; orders by epoch, then seq."""

    epoch: int
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.seq}"

    @classmethod
    def parse(cls, raw: str | None) -> Position | None:
        """The position an SSE id names, or None for anything malformed (never raises)."""
        if not raw or len(raw) > 64:
            return None
        epoch_s, sep, seq_s = raw.strip().partition("-")
        if not sep or not epoch_s.isdigit() or not seq_s.isdigit():
            return None
        if not epoch_s.isascii() or not seq_s.isascii():
            return None
        epoch, seq = int(epoch_s), int(seq_s)
        if epoch >= _MAX or seq >= _MAX:
            return None
        return cls(epoch, seq)


def stream_url(base: str, video_id: str, resume: Position | None = None) -> str:
    """The URL a viewer opens on the RTMS node at ``base`` (scheme://host:port).

    ``redirected=1`` tells that node not to send the viewer elsewhere again (two views
    of placement that differ for a moment must not bounce it back and forth).
    """
    url = f"{base}/stream/{quote(video_id, safe='')}?redirected=1"
    if resume is not None:
        url += f"&last_event_id={resume}"
    return url
