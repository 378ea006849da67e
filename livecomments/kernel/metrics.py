"""Prometheus metrics: the name of every metric, and the cheap pieces that count.

Every process serves ``/metrics`` in the Prometheus text format from a registry of
its own (:class:`Metrics`, owned by its server object, so several servers in one
process never collide). What is counted lives where it happens, as plain ints
and :class:`Histogram` objects (an int add, a bisect: no lock, no label lookup);
each server registers a function that turns them into metric families when
Prometheus scrapes (:meth:`Metrics.add`). So the RTMS fan-out pays an int add
per event or per write batch, and the gauges (viewers, channels, the outbox) are
read at scrape time.

Every metric is declared here (:data:`SPECS`): its name, type, labels and the
components that export it. The Grafana dashboard and the alert rules in
``deploy/`` use these names, and a test checks that a running cluster exports each
one they query; ``livecomments top`` reads them too.

Label values are bounded: routes are the route templates, reasons and codes are
our error codes, nodes are node ids, and viewers per video is a top-k
(:data:`TOP_VIDEOS` series at most), never one series per video or viewer.
"""

from __future__ import annotations

import bisect
import importlib.metadata
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import Metric as Metric

from livecomments.kernel.readiness import REASONS

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST  # text/plain; version=0.0.4
PREFIX = "livecomments_"

COMMENT_SERVICE = "comment-service"
DISPATCHER = "dispatcher"
RTMS = "rtms"
COMPONENTS = (COMMENT_SERVICE, DISPATCHER, RTMS)

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

# Seconds: from half a millisecond (a Redis call) to 10 s (a gap filled from the store).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
TOP_VIDEOS = 10  # series of livecomments_rtms_video_viewers per node
EXPOSITION_MAX_AGE = 0.25  # seconds one /metrics answer is served again


@dataclass(frozen=True, slots=True)
class Spec:
    """One metric: its full name as PromQL sees it (counters end in ``_total``)."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    components: tuple[str, ...] = COMPONENTS

    @property
    def family(self) -> str:
        """The name of its family (what the text format's ``# TYPE`` line says)."""
        return self.name.removesuffix("_total") if self.kind == COUNTER else self.name

    def samples(self) -> tuple[str, ...]:
        """The names of the samples it exports."""
        if self.kind == HISTOGRAM:
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


SPECS: dict[str, Spec] = {}


def _spec(
    name: str,
    kind: str,
    help: str,
    labels: tuple[str, ...] = (),
    components: tuple[str, ...] = COMPONENTS,
) -> Spec:
    spec = Spec(PREFIX + name, kind, help, labels, components)
    assert spec.name not in SPECS, spec.name
    assert (kind == COUNTER) == spec.name.endswith("_total"), spec.name
    SPECS[spec.name] = spec
    return spec


_CS, _D, _R = (COMMENT_SERVICE,), (DISPATCHER,), (RTMS,)

# -- every process ------------------------------------------------------------------
BUILD_INFO = _spec(
    "build_info", GAUGE, "Always 1: this process's component, node id and version.",
    ("component", "node_id", "version"),
)  # fmt: skip
ZK_CONNECTED = _spec(
    "zookeeper_connected", GAUGE, "1 while the ZooKeeper session is connected, else 0."
)
ZK_STATE = _spec(
    "zookeeper_session_state", GAUGE,
    "1 for the ZooKeeper session's state now (CONNECTED, SUSPENDED or LOST), 0 for the others.",
    ("state",),
)  # fmt: skip
ZK_RECONNECTS = _spec(
    "zookeeper_reconnects_total", COUNTER, "Times the ZooKeeper session came back to CONNECTED."
)
ZK_LOSSES = _spec(
    "zookeeper_session_losses_total", COUNTER,
    "Times the ZooKeeper session was LOST (expired: its ephemeral znodes are gone until"
    " it reconnects).",
)  # fmt: skip
READY = _spec(
    "ready", GAUGE,
    "1 while this process is ready (/readyz 200, gRPC health SERVING), else 0.",
)  # fmt: skip
NOT_READY = _spec(
    "not_ready", GAUGE,
    "1 for each reason this process is not ready now (/readyz's reasons), 0 for the others.",
    ("reason",),
)  # fmt: skip

# -- backends and gRPC streams ---------------------------------------------------------
STORE_CALLS = _spec(
    "store_call_duration_seconds", HISTOGRAM,
    "Commands sent to the store (MongoDB), by command name.", ("operation",), _CS + _R,
)  # fmt: skip
REDIS_CALLS = _spec(
    "redis_call_duration_seconds", HISTOGRAM,
    "Redis commands, by command (Lua scripts as script:<name>); pipelines are not counted.",
    ("operation",), _CS + _R,
)  # fmt: skip
STREAMS_OPENED = _spec(
    "grpc_streams_opened_total", COUNTER,
    "Long-lived gRPC streams opened to peers of a role (dispatcher, rtms).", ("peer",), _CS + _D,
)  # fmt: skip
STREAMS_REOPENED = _spec(
    "grpc_streams_reopened_total", COUNTER,
    "Of those, streams opened again after the previous one to the same peer failed or ended.",
    ("peer",), _CS + _D,
)  # fmt: skip
CLUSTER_NODES = _spec(
    "cluster_nodes", GAUGE,
    "Live members of a kind (dispatcher, rtms) this process sees in ZooKeeper.", ("kind",),
    _CS + _D,
)  # fmt: skip

# -- comment service -------------------------------------------------------------------
HTTP_REQUESTS = _spec(
    "http_requests_total", COUNTER,
    "HTTP requests answered, by route template, method and status.",
    ("route", "method", "status"), _CS,
)  # fmt: skip
HTTP_DURATION = _spec(
    "http_request_duration_seconds", HISTOGRAM,
    "Time to answer HTTP requests, by route template and method.", ("route", "method"), _CS,
)  # fmt: skip
POSTS = _spec(
    "posts_total", COUNTER,
    "Comment posts by outcome (accepted 201, held 202, refused 4xx, failed 5xx) and reason"
    " (the error code; empty when accepted or held).",
    ("outcome", "reason"), _CS,
)  # fmt: skip
POST_DURATION = _spec(
    "post_duration_seconds", HISTOGRAM, "Whole posts answered 201 or 202, handler start to answer.",
    components=_CS,
)  # fmt: skip
POST_STAGE = _spec(
    "post_stage_duration_seconds", HISTOGRAM,
    "Stages of the write path: admission (one Redis call for the batch), insert (seq and"
    " store write), dispatch (until the dispatcher answered).",
    ("stage",), _CS,
)  # fmt: skip
DISPATCH_FAILURES = _spec(
    "dispatch_failures_total", COUNTER,
    "Events stored but not dispatched (no dispatcher answered): the outbox sends them.",
    components=_CS,
)  # fmt: skip
DISPATCH_UNDELIVERED = _spec(
    "dispatch_undelivered_total", COUNTER,
    "Events dispatched that some hosting RTMS node did not take: left in the outbox.",
    components=_CS,
)  # fmt: skip
OUTBOX_DEPTH = _spec(
    "outbox_depth", GAUGE,
    "Entries in the outbox (shared by every replica: take the max, not the sum), as of the"
    " last sweep.",
    components=_CS,
)  # fmt: skip
OUTBOX_AGE = _spec(
    "outbox_oldest_age_seconds", GAUGE,
    "Age of the outbox's oldest entry (since it was made or last leased by a sweep), as of"
    " the last sweep.",
    components=_CS,
)  # fmt: skip
OUTBOX_REDISPATCHED = _spec(
    "outbox_redispatched_total", COUNTER, "Overdue events this replica's sweep sent again.",
    components=_CS,
)  # fmt: skip
OUTBOX_FENCED = _spec(
    "outbox_fenced_total", COUNTER,
    "Seqs this replica's sweep fenced (never reached the store).", components=_CS,
)  # fmt: skip
HISTORY_PAGES = _spec(
    "history_pages_total", COUNTER,
    "History pages answered, by source (cache: Redis recent-comments cache; store).",
    ("source",), _CS,
)  # fmt: skip

# -- dispatcher --------------------------------------------------------------------------
DISPATCHER_EVENTS = _spec(
    "dispatcher_events_total", COUNTER, "Events comment services gave this replica to route.",
    components=_D,
)  # fmt: skip
DISPATCHER_DURATION = _spec(
    "dispatcher_dispatch_duration_seconds", HISTOGRAM,
    "Dispatch requests, from routing until every hosting node answered.", components=_D,
)  # fmt: skip
DISPATCHER_DELIVERED = _spec(
    "dispatcher_delivered_total", COUNTER,
    "Events an RTMS node acknowledged, by destination node id.", ("node",), _D,
)  # fmt: skip
DISPATCHER_DROPPED = _spec(
    "dispatcher_dropped_total", COUNTER,
    "Events a hosting node did not get, by node id and reason (suspect: it refused a"
    " delivery moments ago; not_member: hosted but gone from ZooKeeper; failed: the delivery"
    " failed). The comment service's outbox sends them again.",
    ("node", "reason"), _D,
)  # fmt: skip
DISPATCHER_UNDELIVERED = _spec(
    "dispatcher_undelivered_total", COUNTER,
    "Events some hosting node did not take (answered as undelivered).", components=_D,
)  # fmt: skip
DISPATCHER_VIDEOS = _spec(
    "dispatcher_routed_videos", GAUGE, "Videos in this replica's routing table.", components=_D
)
DISPATCHER_SUSPECTS = _spec(
    "dispatcher_suspect_nodes", GAUGE, "RTMS nodes skipped now after a failed delivery.",
    components=_D,
)  # fmt: skip

# -- RTMS ---------------------------------------------------------------------------------
RTMS_CONNECTIONS = _spec(
    "rtms_connections", GAUGE, "Open connections of the SSE listener.", components=_R
)
RTMS_UNATTACHED = _spec(
    "rtms_unattached_connections", GAUGE,
    "Connections not streaming yet (request head pending, or joining).", components=_R,
)  # fmt: skip
RTMS_VIEWERS = _spec("rtms_viewers", GAUGE, "Viewers streaming from this node.", components=_R)
RTMS_CHANNELS = _spec("rtms_channels", GAUGE, "Videos this node hosts.", components=_R)
RTMS_VIDEO_VIEWERS = _spec(
    "rtms_video_viewers", GAUGE,
    f"Viewers of this node's {TOP_VIDEOS} most watched videos (a top-k, not every video).",
    ("video_id",), _R,
)  # fmt: skip
RTMS_DRAINING = _spec(
    "rtms_draining", GAUGE, "1 while an operator drains this node.", components=_R
)
RTMS_VIRAL_VIDEOS = _spec(
    "rtms_viral_videos", GAUGE, "Videos in viral mode (batched every viral window).",
    components=_R,
)  # fmt: skip
RTMS_ACCEPTED = _spec(
    "rtms_events_accepted_total", COUNTER, "Events from dispatchers new for this node.",
    components=_R,
)  # fmt: skip
RTMS_DUPLICATES = _spec(
    "rtms_events_duplicate_total", COUNTER, "Events this node had seen already (by seq).",
    components=_R,
)  # fmt: skip
RTMS_UNHOSTED = _spec(
    "rtms_events_unhosted_total", COUNTER, "Events for videos this node does not host.",
    components=_R,
)  # fmt: skip
RTMS_REFUSED = _spec(
    "rtms_events_refused_total", COUNTER,
    "Events refused from the wire, never delivered, by reason (kind, id, size, shape, epoch,"
    " seq): a misbehaving peer.",
    ("reason",), _R,
)  # fmt: skip
RTMS_DELIVERIES = _spec(
    "rtms_deliveries_total", COUNTER, "Events written to viewers (events x viewers) by fan-out.",
    components=_R,
)  # fmt: skip
RTMS_WRITES = _spec(
    "rtms_writes_total", COUNTER,
    "Fan-out writes to viewers (coalesced: one write may carry several events).", components=_R,
)  # fmt: skip
RTMS_BYTES = _spec(
    "rtms_written_bytes_total", COUNTER, "Bytes written to viewers by fan-out.", components=_R
)
RTMS_LATENCY = _spec(
    "rtms_delivery_latency_seconds", HISTOGRAM,
    "Per event and node: from the comment service's accept time to the write to this node's"
    " viewers (events in seq order that had viewers; clocks of different hosts must agree).",
    components=_R,
)  # fmt: skip
RTMS_SLOW_DROPS = _spec(
    "rtms_slow_viewer_drops_total", COUNTER,
    "Viewers dropped for not reading (buffer full); they resume with their last event id.",
    components=_R,
)  # fmt: skip
RTMS_MOVED = _spec(
    "rtms_viewers_moved_total", COUNTER,
    "Viewers sent elsewhere with a moved event (pin, drain, rebalance, shutdown).",
    components=_R,
)  # fmt: skip
RTMS_RESUMES = _spec(
    "rtms_resumes_total", COUNTER,
    "Viewers resuming with a last event id, by source: ring, store, or a reset"
    " (too_far_behind, epoch_changed).",
    ("source",), _R,
)  # fmt: skip
RTMS_GAP_FILLED = _spec(
    "rtms_gap_filled_total", COUNTER, "Events filled from the store into a gap.", components=_R
)
RTMS_GAP_SKIPPED = _spec(
    "rtms_gap_skipped_total", COUNTER, "Voids (fenced seqs) stepped over.", components=_R
)
RTMS_GAP_FENCED = _spec(
    "rtms_gap_fenced_total", COUNTER, "Seqs this node fenced after the gap deadline.",
    components=_R,
)  # fmt: skip
RTMS_RECONCILED = _spec(
    "rtms_reconciled_total", COUNTER, "Events filled by the periodic head reconcile.",
    components=_R,
)  # fmt: skip
RTMS_REPLAY_READS = _spec(
    "rtms_replay_reads_total", COUNTER, "Store pages read for resuming viewers.", components=_R
)
RTMS_VIRAL_ENTERED = _spec(
    "rtms_viral_entered_total", COUNTER, "Times a video entered viral mode.", components=_R
)
RTMS_REQUESTS_REFUSED = _spec(
    "rtms_requests_refused_total", COUNTER,
    "Stream requests refused by the listener's limits, by error code.", ("code",), _R,
)  # fmt: skip
RTMS_HEAD_TIMEOUTS = _spec(
    "rtms_head_timeouts_total", COUNTER, "Connections cut for a late request head (408).",
    components=_R,
)  # fmt: skip
RTMS_CHANNEL_CHANGES = _spec(
    "rtms_channel_creations_total", COUNTER,
    "Channel creations by result (created, failed, refused: node busy).", ("result",), _R,
)  # fmt: skip


def specs_of(component: str) -> list[Spec]:
    """The metrics ``component`` exports (besides the process collector's ``process_*``)."""
    return [spec for spec in SPECS.values() if component in spec.components]


# -- what is counted ------------------------------------------------------------------------


class Histogram:
    """A histogram kept as plain numbers: ``observe`` is a bisect and two adds.

    No lock: every observer runs on the event loop's thread (so does the scrape).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le is "<=").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative, as the text format wants them, ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            out.append((repr(float(bound)), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class Histograms:
    """One :class:`Histogram` per label value (operations, stages: names from the code)."""

    __slots__ = ("bounds", "by")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.by: dict[tuple[str, ...], Histogram] = {}

    def get(self, *labels: str) -> Histogram:
        hist = self.by.get(labels)
        if hist is None:
            hist = self.by[labels] = Histogram(self.bounds)
        return hist

    def observe(self, seconds: float, *labels: str) -> None:
        self.get(*labels).observe(seconds)


# -- metric families, at scrape time -----------------------------------------------------

Value = float | int
Labelled = Mapping[Any, Value]  # label values (a tuple of str, one per label) -> value


def _check(spec: Spec, kind: str) -> None:
    if spec.kind != kind:
        raise TypeError(f"{spec.name} is a {spec.kind}, not a {kind}")


def counter(spec: Spec, values: Value | Labelled) -> Metric:
    """A counter family: one value, or one per tuple of label values."""
    _check(spec, COUNTER)
    family = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    for labels, value in _pairs(values):
        family.add_metric(labels, value)
    return family


def gauge(spec: Spec, values: Value | Labelled) -> Metric:
    _check(spec, GAUGE)
    family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
    for labels, value in _pairs(values):
        family.add_metric(labels, value)
    return family


def histogram(spec: Spec, values: Histogram | Histograms) -> Metric:
    _check(spec, HISTOGRAM)
    family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    items = values.by.items() if isinstance(values, Histograms) else [((), values)]
    for labels, hist in sorted(items):
        family.add_metric(list(labels), hist.buckets(), hist.sum)
    return family


def _pairs(values: Value | Labelled) -> list[tuple[list[str], Value]]:
    if isinstance(values, Mapping):
        return [(list(labels), value) for labels, value in sorted(values.items())]
    return [([], values)]


def zookeeper(state: str, reconnects: int, losses: int) -> Iterator[Metric]:
    """The ZooKeeper session's families, from :class:`livecomments.coord.ZK`'s counts."""
    yield gauge(ZK_CONNECTED, int(state == "CONNECTED"))
    states = ("CONNECTED", "SUSPENDED", "LOST")
    yield gauge(ZK_STATE, {(s,): int(state == s) for s in states})
    yield counter(ZK_RECONNECTS, reconnects)
    yield counter(ZK_LOSSES, losses)


def readiness(state: tuple[bool, tuple[str, ...]]) -> Iterator[Metric]:
    """Readiness's families, from :meth:`livecomments.kernel.readiness.Readiness.state`."""
    ready, reasons = state
    yield gauge(READY, int(ready))
    yield gauge(NOT_READY, {(reason,): int(reason in reasons) for reason in REASONS})


Collect = Callable[[], Iterable[Metric]]


class _Collector:
    """A function called at every scrape (prometheus_client's Collector protocol)."""

    __slots__ = ("_collect",)

    def __init__(self, collect: Collect) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self._collect())
        except Exception:
            # One broken collector must not blank the whole scrape (and its alerts).
            log.exception("collecting metrics failed")
            return []


def version() -> str:
    try:
        return importlib.metadata.version("livecomments")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """One process's registry: what its server registers, plus CPU, memory, fds and GC."""

    def __init__(self, component: str, node_id: str = "") -> None:
        self.component = component
        self.registry = CollectorRegistry()
        self._exposed: bytes | None = None
        self._exposed_at = 0.0
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        info = {(component, node_id, version()): 1}
        self.add(lambda: [gauge(BUILD_INFO, info)])

    def add(self, collect: Collect) -> None:
        """Call ``collect`` at every scrape (on the event loop: it may read loop state)."""
        self.registry.register(_Collector(collect))

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (:data:`CONTENT_TYPE`).

        Made at most once every :data:`EXPOSITION_MAX_AGE` seconds: ``/metrics``
        may be on a public listener, and a flood of scrapes must cost a copy of
        bytes, not a walk of every channel each time.
        """
        now = time.monotonic()
        if self._exposed is None or now - self._exposed_at >= EXPOSITION_MAX_AGE:
            self._exposed, self._exposed_at = generate_latest(self.registry), now
        return self._exposed
