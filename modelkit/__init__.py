"""Inference toolkit the model services share: ONNX models, batcher, heads, safe fetching, process harness."""
