"""Model runtime for the services: ONNX Runtime sessions, text and image encoders (no torch)."""
