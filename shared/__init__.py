"""Code every Kashf process shares: settings, messages, bus, database, errors."""
