"""Rates written ``"N/S"``: bursts of N, refilled at N per S seconds.

The comment service keeps its buckets in Redis (shared by every replica), an RTMS
node in memory (its limits are its own); both read their settings with this.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """A bucket of ``capacity`` tokens refilled at ``capacity`` per ``per`` seconds."""

    capacity: int
    per: float

    @classmethod
    @functools.cache  # limits are parsed on every rate-limited request: parse each once
    def parse(cls, spec: str) -> Rate:
        count, sep, seconds = spec.partition("/")
        try:
            rate = cls(int(count), float(seconds))
        except ValueError:
            rate = cls(0, 0.0)
        if not sep or rate.capacity < 1 or rate.per <= 0:
            raise ValueError(f"a rate is 'N/SECONDS' with N >= 1, got {spec!r}")
        return rate

    @property
    def per_ms(self) -> float:
        """Tokens per millisecond (the Redis buckets count in ms)."""
        return self.capacity / (self.per * 1000.0)
