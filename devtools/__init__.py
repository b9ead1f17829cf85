"""Developer tools: `make up` and the embedded Postgres and NATS servers it and the tests start (the `dev` extra)."""
