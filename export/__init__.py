"""medclf export: Keras model to ONNX files that carry their labels and preprocessing, verified."""
