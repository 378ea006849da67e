"""JSON log lines, request ids, and the settings that choose them."""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
from collections.abc import Iterator

import orjson
import pytest

from livecomments.kernel import events
from livecomments.kernel import settings as cfg
from livecomments.kernel.logs import (
    JsonFormatter,
    about,
    request_id_from,
    sane_request_id,
    utc_iso,
)

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the JSON formatter into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("dispatcher", "dispatcher-7"))
    logger = logging.getLogger("livecomments.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [orjson.loads(line) for line in text.splitlines()]


def test_a_record_is_one_json_object_with_the_process_and_the_call_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    logger.info(
        "dispatched %s to %s",
        "v1",
        "rtms-1",
        extra={**about("v1", 1 << 62), "request_id": "r-1", "nodes": ["rtms-1"]},
    )
    (line,) = lines(out)
    assert line == {
        "time": line["time"],
        "level": "INFO",
        "logger": "livecomments.test_logs",
        "message": "dispatched v1 to rtms-1",
        "component": "dispatcher",
        "node_id": "dispatcher-7",
        "video_id": "v1",
        "comment_id": str(1 << 62),  # a string: a JSON number would lose digits
        "request_id": "r-1",
        "nodes": ["rtms-1"],
    }
    stamp = str(line["time"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 60


def test_an_exception_is_a_field_and_the_record_stays_on_one_line(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    try:
        raise RuntimeError("deep\ndown")
    except RuntimeError:
        logger.exception("it failed\non two lines", extra={"video_id": "v2"})
    assert out.getvalue().count("\n") == 1  # one line, whatever the message holds
    (line,) = lines(out)
    assert line["level"] == "ERROR" and line["message"] == "it failed\non two lines"
    trace = str(line["exception"])
    assert trace.startswith("Traceback") and "RuntimeError: deep\ndown" in trace
    assert line["video_id"] == "v2" and "exc_info" not in line


def test_a_field_cannot_replace_what_every_line_carries(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    logger.warning("hi", extra={"component": "forged", "level": "forged", "seq": 3})
    (line,) = lines(out)
    assert line["component"] == "dispatcher" and line["level"] == "WARNING"
    assert line["seq"] == 3


def test_utc_iso_is_utc_to_the_millisecond() -> None:
    assert utc_iso(0.0) == "1970-01-01T00:00:00.000Z"
    assert utc_iso(1767323045.6789) == "2026-01-02T03:04:05.678Z"


@pytest.mark.parametrize(
    "given",
    ["abc", "0123456789abcdef0123456789abcdef", "req-1.2:3+4/5=6_7", "A" * 128],
)
def test_a_sane_request_id_is_kept(given: str) -> None:
    assert sane_request_id(given) == given
    assert request_id_from(given) == given


@pytest.mark.parametrize(
    "hostile",
    [
        None,
        "",
        "A" * 129,  # too long
        "abc\r\nX-Injected: 1",  # a header or a log line smuggled in
        "abc\n",  # a trailing line feed ($ would have let it through)
        "abc\x00",
        "café",  # not ASCII
        "a b",
        "<script>",
        '"quoted"',
        "٣٤٥",  # digits, but not ASCII ones
    ],
)
def test_any_other_request_id_is_replaced_by_a_fresh_one(hostile: str | None) -> None:
    assert sane_request_id(hostile) is None
    made = request_id_from(hostile)
    assert HEX32.fullmatch(made)
    assert request_id_from(hostile) != made  # fresh each time


def test_the_log_format_is_checked_and_names_its_variable() -> None:
    loaded = cfg.load(cfg.DispatcherSettings, environ={"LIVECOMMENTS_LOG_FORMAT": "json"})
    assert loaded.log_format == "json"
    assert cfg.load(cfg.DispatcherSettings, environ={}).log_format == "text"
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(cfg.RTMSSettings, environ={"LIVECOMMENTS_LOG_FORMAT": "xml"})
    assert "LIVECOMMENTS_LOG_FORMAT" in str(caught.value) and "'xml'" in str(caught.value)


def test_the_access_log_is_off_unless_asked_for() -> None:
    assert cfg.load(cfg.CommentServiceSettings, environ={}).access_log is False
    on = cfg.load(cfg.CommentServiceSettings, environ={"LIVECOMMENTS_ACCESS_LOG": "true"})
    assert on.access_log is True
    with pytest.raises(cfg.ConfigError, match="LIVECOMMENTS_ACCESS_LOG"):
        cfg.load(cfg.CommentServiceSettings, environ={"LIVECOMMENTS_ACCESS_LOG": "sometimes"})


def _stored(**extra: object) -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    return {
        "_id": 42,
        "video_id": "v1",
        "user_id": 7,
        "author": "ann",
        "text": "hi",
        "parent_id": None,
        "status": events.STATUS_VISIBLE,
        "created_at": now,
        "created_at_ms": int(now.timestamp() * 1000),
        "edited_at": None,
        "rev": 0,
        "seq": 3,
        "epoch": 1,
        **extra,
    }


def test_the_request_id_is_stored_with_the_comment_and_sent_again_by_the_outbox() -> None:
    doc = _stored(request_id="r-42")
    assert events.comment_event(doc).request_id == "r-42"
    replayed = events.replay_event(doc)  # what an outbox re-dispatch sends
    assert replayed is not None and replayed.request_id == "r-42"
    assert "request_id" not in events.comment_json(doc)  # never shown to viewers
    assert events.comment_event(_stored()).request_id == ""
