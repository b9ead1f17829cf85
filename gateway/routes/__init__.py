"""HTTP transport: one module per area of the API."""
