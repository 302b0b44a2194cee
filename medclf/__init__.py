"""medclf: medical image classification, from folder-per-class data to a verified edge model.

The work lives in three subpackages, whose folders sit at the top of the repository:
``medclf.runtime`` (serve; never imports TensorFlow), ``medclf.export`` (Keras → verified ONNX) and
``medclf.train`` (Keras training and evaluation).
"""

import os

__version__ = "0.1.0"

# Images whose header claims more pixels than this are refused before decoding (decompression bombs: a 10 kB
# WebP can declare 16000x16000). medclf checks PNG and JPEG headers itself; OpenCV checks every other format
# against OPENCV_IO_MAX_IMAGE_PIXELS, which it reads once, when it loads — hence here, before any medclf
# module imports cv2. A value the user set wins, for medclf's own checks and messages too.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "100000000")
try:
    MAX_PIXELS = int(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"])
except ValueError:  # OpenCV would not read it either: its own default then, ours here
    MAX_PIXELS = 100_000_000
