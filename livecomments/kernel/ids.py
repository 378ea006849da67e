"""Snowflake ids: 41 bits of milliseconds, 10 bits of worker id, 12 bits of sequence.

Ids sort by creation time, are unique across comment-service processes as long
as every process holds a distinct worker id (leased from ZooKeeper), and fit an
int64. They travel as decimal strings in JSON.
"""

from __future__ import annotations

import time

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WORKER_BITS = 10
SEQUENCE_BITS = 12
MAX_WORKER = (1 << WORKER_BITS) - 1
_SEQ_MASK = (1 << SEQUENCE_BITS) - 1


class Snowflake:
    """Generates ids for one worker; not thread-safe (one per event loop)."""

    __slots__ = ("_last_ms", "_seq", "worker_id")

    def __init__(self, worker_id: int) -> None:
        if not 0 <= worker_id <= MAX_WORKER:
            raise ValueError(f"worker id {worker_id} outside 0..{MAX_WORKER}")
        self.worker_id = worker_id
        self._last_ms = -1
        self._seq = 0

    def next_id(self) -> int:
        now = int(time.time() * 1000) - EPOCH_MS
        if now < self._last_ms:
            # Clock went backwards: keep issuing from the last timestamp rather
            # than risk a duplicate.
            now = self._last_ms
        if now == self._last_ms:
            self._seq = (self._seq + 1) & _SEQ_MASK
            if self._seq == 0:
                now = self._last_ms + 1  # borrow the next millisecond
        else:
            self._seq = 0
        self._last_ms = now
        return (
            (now << (WORKER_BITS + SEQUENCE_BITS)) | (self.worker_id << SEQUENCE_BITS) | self._seq
        )


def timestamp_ms(snowflake: int) -> int:
    """Unix milliseconds at which a Snowflake id was issued."""
    return (snowflake >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS


def parse_id(value: object) -> int | None:
    """A positive int64 from a decimal string, or None when it is not one."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 19:
        return None
    number = int(value)
    return number if 0 < number < (1 << 63) else None


_VIDEO_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
MAX_VIDEO_ID = 64


def valid_video_id(value: object) -> bool:
    """Video ids are 1-64 characters of ``[A-Za-z0-9_-]`` (safe in URLs, znodes and keys)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_VIDEO_ID
        and all(ch in _VIDEO_CHARS for ch in value)
    )
