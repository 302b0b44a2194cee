"""NVIDIA's Python libraries, loaded on demand with a message that says how to get them when they are missing.

Kept apart from :mod:`medclf.runtime.tensorrt_engine` so that asking "is TensorRT here?" (what ``--backend
auto`` does first on every run) costs an import attempt, not the engine module.
"""

from __future__ import annotations


class TensorRTUnavailable(RuntimeError):
    """TensorRT or the CUDA runtime cannot be loaded on this machine; the message names the missing piece."""


def tensorrt():
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT is not installed ({exc}); install medclf[gpu] on a machine with an "
                                  f"NVIDIA GPU (TensorRT wheels come from pypi.nvidia.com)") from None
    return trt


def cudart():
    """cuda-python's CUDA runtime bindings (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as exc:
            raise TensorRTUnavailable(f"cuda-python is not installed ({exc}); install medclf[gpu]") from None
    return runtime
