"""In-process machinery behind the requests: caches, single-flight, rate limiter, outbox publisher, counters."""
