"""medclf's runtime: decode, resize and classify with onnxruntime. Never imports TensorFlow."""

from .classifier import DEFAULT_MODEL, Classifier, Prediction
from .modelcard import INPUT_NAME, OUTPUT_NAME, ModelCard, ModelCardError
from .preprocess import ImageError, Preprocess, decode_image, load_image, resize

__all__ = [
    "DEFAULT_MODEL", "INPUT_NAME", "OUTPUT_NAME", "Classifier", "ImageError", "ModelCard", "ModelCardError",
    "Prediction", "Preprocess", "decode_image", "load_image", "resize",
]
