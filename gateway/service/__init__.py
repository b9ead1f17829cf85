"""The gateway's logic: no FastAPI, no NATS client calls of its own (it is handed the Bus)."""
