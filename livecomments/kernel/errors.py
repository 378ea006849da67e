"""One exception hierarchy for every component.

An error that crosses the wire (HTTP JSON body, gRPC status details) carries a
stable ``code`` and whether it is ``temporary`` (worth retrying).
"""

from __future__ import annotations

from typing import Any


class LiveCommentsError(Exception):
    """Base of every error we raise on purpose."""

    code = "internal"
    status = 500
    temporary = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details or {}
        self.headers = headers or {}

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(LiveCommentsError):
    code = "bad_request"
    status = 400


class ValidationError(BadRequest):
    code = "validation_error"


class Unauthorized(LiveCommentsError):
    code = "unauthorized"
    status = 401


class Forbidden(LiveCommentsError):
    code = "forbidden"
    status = 403


class NotFound(LiveCommentsError):
    code = "not_found"
    status = 404


class Conflict(LiveCommentsError):
    code = "conflict"
    status = 409


class PayloadTooLarge(LiveCommentsError):
    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(LiveCommentsError):
    code = "unsupported_media_type"
    status = 415


class Unavailable(LiveCommentsError):
    """A backend (ZooKeeper, Redis, the store, every dispatcher) cannot be reached."""

    code = "unavailable"
    status = 503
    temporary = True


class CoordinationTimeout(Unavailable):
    code = "coordination_timeout"
