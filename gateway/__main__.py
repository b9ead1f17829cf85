"""``python -m gateway``: serve the API with uvicorn; SIGTERM stops taking requests and drains."""

from __future__ import annotations

import signal

import uvicorn

from gateway.app import create_app
from gateway.server import server_config
from shared.logging import configure_logging
from shared.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    configure_logging("gateway", level=settings.log_level, json=settings.log_json)
    config = server_config(create_app(settings), settings)
    # uvicorn re-raises the signal it stopped on, once the previous handler is back; with this no-op
    # handler a SIGTERM stop (after draining) exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
