"""The one exception the client raises for an error answer (or a server it could not reach)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx


class KashfError(Exception):
    """``status`` (HTTP, 0 when no answer came), ``error`` (the SPEC's machine code) and ``detail``."""

    def __init__(self, status: int, error: str, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}" if status else f"{error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> KashfError:
        error, detail = _HTTP_CODES.get(response.status_code, "error"), response.reason_phrase or "error"
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            error = body["error"]
            detail = str(body.get("detail", detail))
        elif response.text:
            detail = response.text[:500]  # a proxy's page, not the gateway's JSON
        return cls(response.status_code, error, detail, retry_after=retry_after(response))

    def item_limit(self) -> int | None:
        """The server's list limit when this is a 413 for a list (its detail names KASHF_MAX_ITEMS)."""
        if self.status != 413:
            return None
        found = _ITEM_LIMIT.search(self.detail)
        return int(found.group(1) or found.group(2)) if found else None


# Codes the SPEC pairs with each status, for answers that carry no JSON (a proxy in front of the gateway).
_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
    415: "unsupported_media", 422: "invalid", 429: "rate_limited", 502: "bad_gateway", 503: "unavailable",
    504: "timeout",
}
_ITEM_LIMIT = re.compile(r"limit of (\d+) \(KASHF_MAX_ITEMS\)|more than (\d+) files \(KASHF_MAX_ITEMS\)")


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (the gateway sends whole seconds on 429), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
