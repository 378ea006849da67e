"""Logs as JSON lines, and the request id that follows a comment across processes.

``LIVECOMMENTS_LOG_FORMAT=json`` makes every record one JSON object on one line:
``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the process's
``component`` and ``node_id``, then whatever the call passed with ``extra=``
(``video_id``, ``comment_id``, ``request_id``, ...). A traceback is the
``exception`` field, a string: a log shipper never sees a line that is not a
whole record.

A request id comes from the client's ``X-Request-ID`` when it is sane (see
:func:`sane_request_id`), or is made here. It travels with the event
(``Event.request_id``) through the dispatcher to the RTMS nodes, and each
process that handles the comment logs it, so one ``grep`` shows the whole trip.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

REQUEST_ID_HEADER = "X-Request-ID"
# What a client's id may be: 1-128 of a charset safe in a log line, a header and
# a shell (the same as an Idempotency-Key). Anything else is replaced, never
# reflected: a request id is written to every log line and answer about it.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}", re.ASCII)

# The record's fields a JSON line names otherwise (or leaves out: the message
# already has its arguments merged in).
_EXCEPTION_FIELDS = {"exc_info": "exception", "stack_info": "stack"}


def new_request_id() -> str:
    """A fresh request id (32 hex digits).

    It names a request in logs; it is no secret, so it comes from the process's
    pseudo-random generator instead of the kernel's (uuid4 asks the kernel, a
    system call on every request without an X-Request-ID).
    """
    return f"{random.getrandbits(128):032x}"


def sane_request_id(value: str | None) -> str | None:
    """``value`` if it may be used as a request id as it is, else None."""
    if value and REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return None


def request_id_from(header: str | None) -> str:
    """The request id for a request whose ``X-Request-ID`` is ``header`` (or absent)."""
    return sane_request_id(header) or new_request_id()


def about(video_id: str | None = None, comment_id: int | None = None) -> dict[str, str]:
    """The ``extra=`` of a record about one video (and one comment of it): its fields.

    Comment ids are decimal strings, as in the API (a JSON number loses int64 digits).
    """
    fields = {"video_id": video_id} if video_id is not None else {}
    if comment_id is not None:
        fields["comment_id"] = str(comment_id)
    return fields


def utc_iso(created: float) -> str:
    """A record's time as ISO 8601 in UTC, to the millisecond: ``2026-01-02T03:04:05.678Z``."""
    seconds = int(created)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int((created - seconds) * 1000):03d}Z"


class JsonFormatter(OrjsonFormatter):
    """One JSON object per record, on one line (see the module's docstring)."""

    def __init__(self, component: str, node_id: str) -> None:
        super().__init__()
        self._process = {"component": component, "node_id": node_id}

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        log_data["time"] = utc_iso(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        log_data.update(self._process)
        skip = self._skip_fields
        for key, value in record.__dict__.items():  # the call's extra=
            if key not in skip and key not in log_data and not key.startswith("_"):
                log_data[key] = value
        for key, value in message_dict.items():  # the traceback, or a dict logged as is
            log_data[_EXCEPTION_FIELDS.get(key, key)] = value
