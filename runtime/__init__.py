"""medclf's runtime: decode, resize and classify with onnxruntime (or TensorRT). Never imports TensorFlow."""

from .backends import BACKENDS, BackendUnavailable
from .classifier import DEFAULT_MODEL, Classifier, Prediction
from .modelcard import INPUT_NAME, OUTPUT_NAME, ModelCard, ModelCardError
from .preprocess import ImageError, Preprocess, decode_image, image_from_bytes, load_image, resize

__all__ = [
    "BACKENDS", "BackendUnavailable", "DEFAULT_MODEL", "INPUT_NAME", "OUTPUT_NAME", "Classifier", "ImageError",
    "ModelCard", "ModelCardError", "Prediction", "Preprocess", "decode_image", "image_from_bytes", "load_image",
    "resize",
]
