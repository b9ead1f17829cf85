"""Domain errors: a machine code, an HTTP status and a human sentence.

Logic raises these; the gateway renders them as ``{"error", "detail"}`` and the bus carries
them across NATS in headers, so a service's error reaches the client unchanged.
"""

from __future__ import annotations

from typing import ClassVar


class KashfError(Exception):
    """Base of every error a user may see."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code_override = code

    @property
    def error_code(self) -> str:
        return getattr(self, "code_override", self.code)


class BadRequest(KashfError):
    status = 400
    code = "bad_request"


class Unauthorized(KashfError):
    status = 401
    code = "unauthorized"


class NotFound(KashfError):
    status = 404
    code = "not_found"


class MethodNotAllowed(KashfError):
    status = 405
    code = "method_not_allowed"


class TooLarge(KashfError):
    status = 413
    code = "too_large"


class UnsupportedMedia(KashfError):
    status = 415
    code = "unsupported_media"


class InvalidInput(KashfError):
    status = 422
    code = "invalid"


class RateLimited(KashfError):
    status = 429
    code = "rate_limited"


class Overloaded(KashfError):
    status = 429
    code = "overloaded"


class FetchFailed(KashfError):
    status = 502
    code = "fetch_failed"


class Unavailable(KashfError):
    status = 503
    code = "unavailable"


class Timeout(KashfError):
    status = 504
    code = "timeout"


class Internal(KashfError):
    status = 500
    code = "internal"


_BY_STATUS: dict[int, type[KashfError]] = {
    cls.status: cls
    for cls in (BadRequest, Unauthorized, NotFound, MethodNotAllowed, TooLarge, UnsupportedMedia,
                InvalidInput, RateLimited, FetchFailed, Unavailable, Timeout, Internal)
}


def from_wire(status: int, code: str, detail: str) -> KashfError:
    """Rebuild an error that crossed the bus (status and code from headers)."""
    cls = _BY_STATUS.get(status, Internal)
    return cls(detail, code=code)
