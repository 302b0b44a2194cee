"""TensorFlow's native start-up notices never reach the user; anything else written meanwhile still does."""

from __future__ import annotations

import os

from medclf.train.quiet_tensorflow import NOTICES, native_stderr_filtered
from tests.conftest import run_python

# Lines TensorFlow 2.21 writes to native stderr as it loads (timestamps and thread ids vary).
TENSORFLOW_NOTICES = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796423606.460952   27921 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders. To turn "
    b"them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
    b"I0000 00:00:1796423606.497737   27921 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    b"available CPU instructions in performance-critical operations.\n"
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild "
    b"TensorFlow with the appropriate compiler flags.\n"
    b"E0000 00:00:1796423653.901498   28191 util.cc:131] oneDNN supports DT_HALF only on platforms with AVX-512. "
    b"Falling back to the default Eigen-based implementation if present.\n")


def test_notices_are_dropped_and_everything_else_is_kept_in_order(capfd):
    with native_stderr_filtered(NOTICES):
        os.write(2, b"first real line\n" + TENSORFLOW_NOTICES + b"F0000 check failed: something real\n")
    assert capfd.readouterr().err == "first real line\nF0000 check failed: something real\n"


def test_stderr_is_restored_after_an_exception(capfd):
    try:
        with native_stderr_filtered(NOTICES):
            raise ImportError("a broken install")
    except ImportError:
        pass
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_importing_and_using_tensorflow_prints_nothing():
    script = ("from medclf.train.quiet_tensorflow import import_tensorflow; import_tensorflow(); "
              "import numpy as np, tensorflow as tf; "
              "tf.data.Dataset.from_tensor_slices(np.zeros((4, 2), np.float16)).map(lambda x: tf.cast(x, tf.float32))")
    assert run_python(script).stderr == ""


def test_predicting_with_several_models_does_not_print_tensorflows_retracing_hint():
    """A run traces one graph per model it predicts with; TensorFlow counts them as one function retracing."""
    script = ("from medclf.train.quiet_tensorflow import import_tensorflow; import_tensorflow()\n"
              "import numpy as np\nfrom medclf.train.architectures import get_architecture\n"
              "from medclf.train.fit import predict\n"
              "images = np.zeros((64, 160, 160, 3), np.uint8)  # large enough to be traced\n"
              "for _ in range(7):\n"
              "    predict(get_architecture('small_cnn').build((160, 160, 3), 2, False), images)\n")
    assert "retracing" not in run_python(script).stderr
