"""Vision service: embeds and tags images (URLs, uploads, inline bytes) with per-dataset heads, over NATS."""
