"""What the comment service counts for ``/metrics``: HTTP answers, posts, the write path.

The HTTP middleware (``app.py``) counts every answer by route template, method
and status; the post handler counts each post's outcome (its error code when
refused); ``Comments`` times the stages of the write path. The server registers
the rest (outbox, dispatch, ZooKeeper, Redis, the store) at scrape time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from livecomments.kernel import metrics as m

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # a path no route has (a 404): one label value for all of them


class ServiceMetrics:
    """The counts of one comment-service process, and whether ``/metrics`` is public."""

    def __init__(self, metrics: m.Metrics, *, public: bool) -> None:
        self.registry = metrics
        self.public = public  # False: /metrics is on the admin listener only
        self.http: Counter[tuple[str, str, str]] = Counter()
        self.http_seconds = m.Histograms()
        self.posts: Counter[tuple[str, str]] = Counter()
        self.post_seconds = m.Histogram()
        self.stages = m.Histograms()
        metrics.add(self.collect)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.http[route, method, str(status)] += 1
        self.http_seconds.observe(seconds, route, method)

    def posted(self, held: bool, seconds: float) -> None:
        self.posts["held" if held else "accepted", ""] += 1
        self.post_seconds.observe(seconds)

    def refused(self, status: int, code: str) -> None:
        """A post answered with an error: refused (4xx) or failed (5xx), by error code."""
        self.posts["failed" if status >= 500 else "refused", code] += 1

    def stage(self, name: str, seconds: float) -> None:
        self.stages.observe(seconds, name)

    def collect(self) -> Iterator[m.Metric]:
        yield m.counter(m.HTTP_REQUESTS, self.http)
        yield m.histogram(m.HTTP_DURATION, self.http_seconds)
        yield m.counter(m.POSTS, self.posts)
        yield m.histogram(m.POST_DURATION, self.post_seconds)
        yield m.histogram(m.POST_STAGE, self.stages)
