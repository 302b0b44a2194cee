"""The names ``medclf export`` gives its files, one per precision (no TensorFlow here: the ONNX-only benchmark
finds a model's siblings by them)."""

FILE_NAMES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
