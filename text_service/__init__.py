"""Text service: embeds Persian/English texts and tags them with per-dataset heads, over NATS."""
