"""``python -m gateway``: serve the API with uvicorn; SIGTERM stops taking requests and drains."""

from __future__ import annotations

import signal

import uvicorn

from gateway.app import create_app
from shared.logging import configure_logging
from shared.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    configure_logging("gateway", level=settings.log_level, json=settings.log_json)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        # uvicorn handles SIGTERM: stop accepting, finish in-flight requests, then run the lifespan's exit.
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=True,
    )
    # uvicorn re-raises the signal it stopped on, once the previous handler is back; with this no-op
    # handler a SIGTERM stop (after draining) exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
