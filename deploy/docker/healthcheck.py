"""Docker HEALTHCHECK for every Kashf process: exit 0 when its /healthz answers 200.

One image runs every service, so it probes the health port and the gateway port; one of them listens.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def _urls() -> list[str]:
    explicit = os.environ.get("KASHF_HEALTHCHECK_URL")
    if explicit:
        return [explicit]
    ports = [os.environ.get("KASHF_HEALTH_PORT", "8080"), os.environ.get("PORT", "8000")]
    return [f"http://127.0.0.1:{port}/healthz" for port in dict.fromkeys(ports)]


def healthy(urls: list[str], timeout_s: float = 2.0) -> bool:
    """True when any of `urls` answers 200 within `timeout_s`."""
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            continue
    return False


def main() -> None:
    sys.exit(0 if healthy(_urls()) else 1)


if __name__ == "__main__":
    main()
