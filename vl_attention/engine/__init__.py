"""Export to ONNX, model cards and the inference backends behind one Embedder."""
