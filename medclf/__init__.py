"""medclf: medical image classification, from folder-per-class data to a verified edge model.

The work lives in three subpackages, whose folders sit at the top of the repository:
``medclf.runtime`` (serve; never imports TensorFlow), ``medclf.export`` (Keras → verified ONNX) and
``medclf.train`` (Keras training and evaluation).
"""

__version__ = "0.1.0"
