"""On a GPU: onnxruntime's CUDA EP vs the CPU at batch 1 and 64, with the host-to-device copy of a uint8 batch
and decoding timed alone (on the edge, decoding dominates). ``MEDCLF_FP16_MODEL`` names an FP16 export of the
packaged model: the CUDA EP runs it too, and TensorRT FP16 where TensorRT is installed. Skipped, with the reason,
on CPU machines.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import onnxruntime as ort
import pytest

from medclf.runtime import Classifier
from medclf.runtime.backends import gpu_ready

pytestmark = pytest.mark.skipif(not gpu_ready("cuda"), reason="onnxruntime-gpu with CUDA's libraries is not "
                                                                "installed here (GPU machines only)")
BIG = 64


@pytest.fixture(scope="module")
def cuda() -> Classifier:
    return Classifier(backend="cuda")


def batch_of(images: np.ndarray, size: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(images, (size, *images.shape[1:])))


def time_warm(benchmark, model: Classifier, images: np.ndarray, size: int) -> None:
    """One untimed call first: kernels chosen, memory pools filled."""
    batch = batch_of(images, size)
    model.predict(batch)
    benchmark(model.predict, batch)


@pytest.mark.parametrize("size", [1, BIG])
def test_cuda_inference(benchmark, cuda, images, size):
    time_warm(benchmark, cuda, images, size)


@pytest.mark.skipif("MEDCLF_FP16_MODEL" not in os.environ, reason="needs MEDCLF_FP16_MODEL (an FP16 export)")
@pytest.mark.parametrize("size", [1, BIG])
def test_cuda_fp16_inference(benchmark, images, size):
    time_warm(benchmark, Classifier(os.environ["MEDCLF_FP16_MODEL"], backend="cuda"), images, size)


@pytest.mark.parametrize("size", [1, BIG])
def test_cpu_inference(benchmark, classifier, images, size):
    benchmark(classifier.predict, batch_of(images, size))


def test_host_to_device_copy_of_a_uint8_batch(benchmark, images):
    batch = batch_of(images, BIG)
    benchmark(lambda: ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None or "MEDCLF_FP16_MODEL" not in os.environ,
                    reason="needs TensorRT and MEDCLF_FP16_MODEL (an FP16 export of the packaged model)")
@pytest.mark.parametrize("size", [1, BIG])
def test_tensorrt_fp16_inference(benchmark, images, size):
    time_warm(benchmark, Classifier(os.environ["MEDCLF_FP16_MODEL"], backend="tensorrt"), images, size)
