"""Doubles for running an RTMS hub in-process: a transport that models flow control.

Shared by the hub's tests (``tests/unit/test_rtms_hub.py``,
``tests/system/test_rtms_hardening.py``); the hub itself is real.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from livecomments.rtms.channel import Viewer as HubViewer


class FlowTransport:
    """A transport whose buffer fills with writes and drains only when told to.

    Like asyncio's, it calls the viewer's pause_writing above the high-water
    mark and resume_writing once drained below the low one.
    """

    def __init__(self, high: int) -> None:
        self.viewer: HubViewer | None = None
        self.buffer = 0
        self.peak = 0
        self.data = bytearray()
        self.high = high  # the listener sets it to half the bound (Hub.write_budget)
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data
        self.buffer += len(data)
        self.peak = max(self.peak, self.buffer)
        if self.viewer is not None and self.buffer > self.high and not self.viewer.paused:
            self.viewer.pause_writing()

    def drain(self) -> None:
        self.buffer = 0
        if self.viewer is not None and self.viewer.paused:
            self.viewer.resume_writing()

    def get_write_buffer_size(self) -> int:
        return self.buffer

    def abort(self) -> None:
        self.closed = self.aborted = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def seqs(self) -> list[int]:
        return [int(s) for s in re.findall(rb"^id: \d+-(\d+)$", bytes(self.data), re.M)]

    def moved(self) -> dict[str, Any]:
        """The body of the ``moved`` event written to it."""
        found = re.search(rb"^event: moved\ndata: (.*)$", bytes(self.data), re.M)
        assert found is not None, bytes(self.data)
        return dict(orjson.loads(found.group(1)))


def flow_viewer(high: int = 4096) -> tuple[HubViewer, FlowTransport]:
    transport = FlowTransport(high)
    viewer = HubViewer(transport)
    transport.viewer = viewer
    return viewer, transport
