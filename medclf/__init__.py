"""medclf: medical image classification, from folder-per-class data to a verified edge model.

The work lives in three subpackages, whose folders sit at the top of the repository:
``medclf.runtime`` (serve; never imports TensorFlow), ``medclf.export`` (Keras → verified ONNX) and
``medclf.train`` (Keras training and evaluation).
"""

import os
import sys

__version__ = "0.1.0"

# Images whose header claims more pixels than this are refused before decoding (decompression bombs: a 10 kB
# WebP can declare 16000x16000). medclf checks PNG and JPEG headers itself; OpenCV checks every other format
# against OPENCV_IO_MAX_IMAGE_PIXELS, which it reads once, when it loads — hence here, before any medclf
# module imports cv2. A value the user set wins, for medclf's own checks and messages too.
DEFAULT_MAX_PIXELS = 100_000_000
_UNITS = {"": 1, "KB": 1 << 10, "Kb": 1 << 10, "kb": 1 << 10, "MB": 1 << 20, "Mb": 1 << 20, "mb": 1 << 20}


def pixel_limit(text: str) -> int | None:
    """``text`` read as OpenCV reads a size setting (digits, then nothing or KB/Kb/kb/MB/Mb/mb, in 1024s), or
    None where OpenCV would not read it — which it answers by aborting the process as cv2 loads."""
    digits = text.rstrip("KMBkmb")
    unit = text[len(digits):]
    if not (digits.isascii() and digits.isdigit() and unit in _UNITS) or int(digits) >= 2 ** 64:  # stoull's range
        return None
    return int(digits) * _UNITS[unit]


os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS))
MAX_PIXELS = pixel_limit(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"])
if MAX_PIXELS is None:
    sys.stderr.write(f"medclf: OPENCV_IO_MAX_IMAGE_PIXELS={os.environ['OPENCV_IO_MAX_IMAGE_PIXELS']!r} is no pixel "
                     f"count OpenCV reads (N, NKB or NMB); using {DEFAULT_MAX_PIXELS}\n")
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"], MAX_PIXELS = str(DEFAULT_MAX_PIXELS), DEFAULT_MAX_PIXELS

# onnxruntime 1.32 on Linux sends usage telemetry (1DS: a process event, then session, model and error events)
# and keeps a device identifier and an event cache under ~/.cache/Microsoft/DeveloperTools — from a clinic's
# machines too, where nothing about its models should leave without a decision; with a read-only home it also
# prints a coloured warning on every run. It reads this once, when it loads: hence here, before any medclf module
# imports it. ORT_DISABLE_TELEMETRY=0 set by the user turns it back on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
