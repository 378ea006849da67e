"""The counters of an RTMS node (``/healthz``, ``/metrics``), kept by the hub and its pieces.

One object, handed to each piece when the hub wires them: the hub counts
deliveries and channels, pacing the viral mode, recovery the gaps and resumes.
Plain ints: the fan-out adds to them once per write batch, never per viewer.
"""

from __future__ import annotations


class Stats:
    __slots__ = (
        "accepted",
        "bytes_written",
        "channels_created",
        "channels_failed",
        "channels_refused",
        "deliveries",
        "duplicates",
        "gap_fenced",
        "gap_filled",
        "gap_skipped",
        "moved",
        "reconciled",
        "replay_resets",
        "resumed_epoch",
        "resumed_ring",
        "resumed_store",
        "slow_dropped",
        "unhosted",
        "viral_entered",
        "viral_left",
        "writes",
    )

    def __init__(self) -> None:
        self.accepted = self.duplicates = self.unhosted = 0
        self.gap_filled = self.gap_skipped = self.slow_dropped = self.moved = 0
        self.gap_fenced = self.reconciled = 0
        self.viral_entered = self.viral_left = 0
        self.channels_created = self.channels_failed = self.channels_refused = 0
        self.replay_resets = 0  # resumes answered with `reset` (too_far_behind)
        # Resumes replayed from the ring only, from the store too, or reset (epoch changed).
        self.resumed_ring = self.resumed_store = self.resumed_epoch = 0
        # Fan-out: writes to viewers, events in them (events x viewers), their bytes.
        self.writes = self.deliveries = self.bytes_written = 0
