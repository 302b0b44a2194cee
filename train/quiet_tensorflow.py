"""Import TensorFlow without its native start-up notices reaching the user's terminal.

TensorFlow 2.21 writes them through absl before any of its settings apply: ``TF_CPP_MIN_LOG_LEVEL`` hides the
CPU-feature notice but not "oneDNN custom operations are on" (printed twice, once per native library, each after
an absl preamble), and the first float16 tensor of a run adds an *error*-level line ("oneDNN supports DT_HALF
only on platforms with AVX-512") in the middle of training, which reads like a failure. None of them is
actionable. So while TensorFlow loads, and its first float16 tensor is made, the process's native stderr (file
descriptor 2) goes to a temporary file; afterwards every line of it that is not one of those notices is
written to stderr, so a real problem during the import is still seen. Its Python logger's "retracing" hint,
which medclf's one graph per model sets off, is dropped too.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

NOTICES = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|\] oneDNN custom operations are on\."
    rb"|\] oneDNN supports DT_HALF only on platforms"
    rb"|\] This TensorFlow binary is optimized to use available CPU instructions"
    rb"|^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags")


def import_tensorflow() -> None:
    """Import TensorFlow (once per process) with its start-up notices dropped, and its retracing hint."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # its INFO and WARNING lines, here and later
        with native_stderr_filtered(NOTICES):
            import tensorflow as tf

            tf.zeros([1], tf.float16)  # the one-time DT_HALF notice, now rather than mid-training
    import tensorflow as tf

    tf.get_logger().addFilter(_not_a_retracing_hint)  # a no-op the second time: a filter is added once


def _not_a_retracing_hint(record: logging.LogRecord) -> bool:
    """False for TensorFlow's "N out of the last M calls to <function step> triggered tf.function retracing":
    a run traces one graph per model it predicts with (the backbone's frozen part, the part above it, the
    whole model: ``fit._traced_step``), and TensorFlow counts them as one function retracing."""
    return "triggered tf.function retracing" not in record.getMessage()


@contextmanager
def native_stderr_filtered(drop: re.Pattern[bytes]) -> Iterator[None]:
    """Inside: whatever anything writes to file descriptor 2 is held back. After: its lines not matching
    ``drop`` are written to file descriptor 2, in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(line for line in held if not drop.search(line))
            with os.fdopen(os.dup(2), "wb") as stderr:
                stderr.write(kept)
