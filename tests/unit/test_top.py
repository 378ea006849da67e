"""``livecomments top``'s arithmetic: rates and quantiles between two scrapes, a process down."""

from __future__ import annotations

from livecomments.cli.top import Scrape, Target, quantile, rate, summarize
from livecomments.kernel import metrics as m

RTMS = Target("rtms", "rtms-1", "http://127.0.0.1:1/metrics")
COMMENT = Target("comment-service", "worker-3", "http://127.0.0.1:2/metrics")
GONE = Target("dispatcher", "dispatcher-9", "http://127.0.0.1:3/metrics")


def rtms_text(deliveries: int, latency_counts: tuple[int, int, int]) -> str:
    fast, slow, total = latency_counts
    name = m.RTMS_LATENCY.name
    return (
        f"# TYPE {m.RTMS_VIEWERS.name} gauge\n{m.RTMS_VIEWERS.name} 7\n"
        f"# TYPE {m.RTMS_CHANNELS.name} gauge\n{m.RTMS_CHANNELS.name} 2\n"
        f"# TYPE {m.RTMS_DELIVERIES.name.removesuffix('_total')} counter\n"
        f"{m.RTMS_DELIVERIES.name} {deliveries}\n"
        f"# TYPE {name} histogram\n"
        f'{name}_bucket{{le="0.01"}} {fast}\n{name}_bucket{{le="0.1"}} {slow}\n'
        f'{name}_bucket{{le="+Inf"}} {total}\n{name}_count {total}\n{name}_sum 1.0\n'
    )


def comment_text(accepted: int, refused: int) -> str:
    family = m.POSTS.name.removesuffix("_total")
    return (
        f"# TYPE {family} counter\n"
        f'{m.POSTS.name}{{outcome="accepted",reason=""}} {accepted}\n'
        f'{m.POSTS.name}{{outcome="refused",reason="rate_limited"}} {refused}\n'
        f'{m.POSTS.name}{{outcome="refused",reason="content_refused"}} {refused}\n'
        f"# TYPE {m.OUTBOX_DEPTH.name} gauge\n{m.OUTBOX_DEPTH.name} 4\n"
    )


def test_rates_are_per_second_between_two_scrapes_and_never_negative() -> None:
    before = Scrape.parse(comment_text(100, 1), at=10.0)
    now = Scrape.parse(comment_text(150, 6), at=12.0)
    assert rate(now, before, m.POSTS.name, outcome="accepted") == 25.0
    assert rate(now, before, m.POSTS.name, outcome="refused") == 5.0  # both reasons
    assert rate(now, None, m.POSTS.name) == 0.0
    restarted = Scrape.parse(comment_text(3, 0), at=13.0)  # counters start again
    assert rate(restarted, now, m.POSTS.name, outcome="accepted") == 0.0


def test_the_quantile_is_the_bucket_bound_of_what_happened_in_between() -> None:
    before = Scrape.parse(rtms_text(0, (100, 100, 100)), at=0.0)  # 100 fast ones, earlier
    now = Scrape.parse(rtms_text(0, (190, 200, 200)), at=1.0)  # then 90 fast, 10 slow
    assert quantile(now, before, m.RTMS_LATENCY.name, 0.5) == 0.01
    assert quantile(now, before, m.RTMS_LATENCY.name, 0.99) == 0.1
    assert quantile(before, before, m.RTMS_LATENCY.name, 0.99) is None  # nothing new


def test_a_summary_counts_the_live_and_names_the_down() -> None:
    before = {RTMS: Scrape.parse(rtms_text(1000, (0, 0, 0)), 0.0),
              COMMENT: Scrape.parse(comment_text(10, 0), 0.0)}  # fmt: skip
    now = {
        RTMS: Scrape.parse(rtms_text(3000, (5, 5, 5)), 2.0),
        COMMENT: Scrape.parse(comment_text(30, 0), 2.0),
        GONE: Scrape(2.0, error="Cannot connect to host 127.0.0.1:3"),
    }
    doc = summarize([RTMS, COMMENT, GONE], now, before)
    totals = doc["totals"]
    assert (totals["rtms_nodes"], totals["dispatchers"], totals["comment_services"]) == (1, 0, 1)
    assert totals["down"] == 1
    assert doc["dispatcher"] == [
        {"name": "dispatcher-9", "metrics": GONE.url, "up": False,
         "error": "Cannot connect to host 127.0.0.1:3"}
    ]  # fmt: skip
    assert totals["viewers"] == 7 and totals["videos"] == 2
    assert totals["deliveries_per_s"] == 1000.0 and totals["posts_per_s"] == 10.0
    assert totals["outbox_depth"] == 4
    assert doc["rtms"][0]["fanout_p99_ms"] == 10.0


def test_a_flood_of_scrapes_makes_the_exposition_once_per_quarter_second() -> None:
    import time

    made = []

    def collect() -> list[m.Metric]:
        made.append(1)
        return [m.counter(m.RTMS_DELIVERIES, len(made))]

    metrics = m.Metrics(m.RTMS, "rtms-x")
    metrics.add(collect)
    first = metrics.exposition()
    assert all(metrics.exposition() == first for _ in range(1000))
    assert len(made) == 1
    time.sleep(m.EXPOSITION_MAX_AGE + 0.05)
    assert metrics.exposition() != first and len(made) == 2
