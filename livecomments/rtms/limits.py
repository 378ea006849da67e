"""What an RTMS node refuses under load, and the in-memory token buckets that decide it.

The limits of one node are its own (its descriptors, its ZooKeeper writes), so
they live in the process, not in Redis: nothing on the join path waits for a
backend to say no.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from livecomments.kernel.errors import LiveCommentsError
from livecomments.kernel.rates import Rate


class Refused(LiveCommentsError):
    """A request the node will not serve now; the client should retry after ``retry_after``."""

    temporary = True

    def __init__(self, status: int, code: str, message: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            message,
            code=code,
            status=status,
            details={"retry_after": seconds},
            headers={"Retry-After": str(seconds)},
        )


class Bucket:
    """One token bucket. ``take()`` is 0.0 when a token was taken, else seconds until one."""

    __slots__ = ("_at", "_clock", "_per_token", "_rate", "_tokens")

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._per_token = rate.per / rate.capacity
        self._clock = clock
        self._tokens = float(rate.capacity)
        self._at = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(
            float(self._rate.capacity), self._tokens + (now - self._at) / self._per_token
        )
        self._at = now
        return self._tokens

    def take(self) -> float:
        if self._refill() >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) * self._per_token

    def full(self) -> bool:
        return self._refill() >= self._rate.capacity


class Buckets:
    """A token bucket per key (a client address), forgetting the ones that are full again.

    Memory stays bounded: past ``max_keys`` keys the full buckets are dropped (a
    full bucket is what a new key gets anyway), then the oldest ones.
    """

    def __init__(
        self, rate: Rate, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._prune()
            bucket = self._buckets[key] = Bucket(self._rate, self._clock)
        return bucket.take()

    def _prune(self) -> None:
        for key in [key for key, bucket in self._buckets.items() if bucket.full()]:
            del self._buckets[key]
        while len(self._buckets) >= self._max_keys:
            del self._buckets[next(iter(self._buckets))]
