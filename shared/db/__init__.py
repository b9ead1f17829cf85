"""Postgres schema, engine factory and migrations (``python -m shared.db upgrade``)."""
