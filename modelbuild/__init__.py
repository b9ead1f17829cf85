"""Build-time model conversion: offline weights to ONNX folders with a manifest (needs torch)."""
