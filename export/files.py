"""The names ``medclf export`` gives its files, one per precision (no TensorFlow here: the ONNX-only benchmark
finds a model's siblings by them)."""

FILE_NAMES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
# INT8's symmetric flavour, which TensorRT engines are built from (TensorRT reads only zero-point-0 QDQ),
# published beside its engine so that the runtime can be given the very file the engine came from
TENSORRT_FLAVOUR = {"int8": "model.int8.tensorrt.onnx"}
