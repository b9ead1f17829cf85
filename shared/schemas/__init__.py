"""Messages that cross NATS: one frozen pydantic model each."""
