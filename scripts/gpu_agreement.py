"""Does each model file call the same on the GPU as on the CPU, and how much faster is it there?

For each ``MODEL=FOLDER`` argument: the folder's images (recursively, each through the model's own
preprocessing) classified by the CPU and by onnxruntime's CUDA EP (medclf's settings: TF32 off), then
the largest |Δp| between them, top-1 agreement, and images/s at batch 64 on each (median of five warm runs).
FP16 and INT8 files are compared with the CPU running the same file, so what is measured is the GPU's own
arithmetic, not the precision's. An FP16 file is also compared with the CPU running its float16-activation
emulation — what ``medclf export`` verifies FP16 on (``medclf.export.fp16.with_float16_activations``) — when
``MEDCLF_FP16_EMULATIONS`` names a folder holding it under the same file name (made where ``onnx`` is installed:
``scripts/gpu_payload.sh``): how faithful the emulation is. Run by ``scripts/gpu_checks.sh``; needs
onnxruntime-gpu and a GPU.

Usage: python scripts/gpu_agreement.py MODEL=FOLDER [MODEL=FOLDER ...]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from medclf.runtime import Classifier, load_image
from medclf.runtime.inputs import list_images

BATCH = 64
# The agreement ``medclf export`` asks of each precision against Keras (export.verify.TOLERANCES), asked here of the
# GPU against the CPU running the same file (this machine may lack TensorFlow, which the export package loads).
MIN_AGREEMENT = {"fp32": 1.0, "fp16": 0.999, "int8": 0.99}


def images_for(classifier: Classifier, folder: Path) -> np.ndarray:
    return np.stack([load_image(p, classifier.card.preprocess) for p in list_images(folder)])


def images_per_second(classifier: Classifier, images: np.ndarray) -> float:
    batch = np.ascontiguousarray(np.resize(images, (BATCH, *images.shape[1:])))
    classifier.predict(batch, BATCH)  # kernels chosen, memory pools filled
    times = []
    for _ in range(5):
        start = time.perf_counter()
        classifier.predict(batch, BATCH)
        times.append(time.perf_counter() - start)
    return BATCH / statistics.median(times)


class Disagrees(Exception):
    """The GPU calls a file's images otherwise than the CPU, beyond its precision's agreement tolerance."""


def compare(model: Path, folder: Path) -> str:
    cpu, cuda = Classifier(model), Classifier(model, backend="cuda")
    images = images_for(cpu, folder)
    want, got = cpu.predict(images, BATCH), cuda.predict(images, BATCH)
    agreement = (want.argmax(1) == got.argmax(1)).mean()
    if agreement < MIN_AGREEMENT[cpu.card.precision]:
        raise Disagrees(f"CUDA vs CPU top-1 agreement {agreement:.2%}, under {cpu.card.precision}'s "
                        f"{MIN_AGREEMENT[cpu.card.precision]:.1%} (max |dp| {np.abs(got - want).max():.1e})")
    return (f"{model.name} ({cpu.card.precision}, {images.shape[1]}x{images.shape[2]}) on {len(images)} images "
            f"of {folder}: CUDA vs CPU max |dp| {np.abs(got - want).max():.1e}, top-1 agreement {agreement:.2%}; "
            f"{emulated(model, images, got)}batch {BATCH}: CUDA {images_per_second(cuda, images):,.0f} images/s, "
            f"CPU {images_per_second(cpu, images):,.0f} images/s")


def emulated(model: Path, images: np.ndarray, cuda: np.ndarray) -> str:
    """CUDA's answers against the CPU running ``model``'s float16-activation emulation, if there is one."""
    folder = os.environ.get("MEDCLF_FP16_EMULATIONS")
    if not folder or not (emulation := Path(folder) / model.name).is_file():
        return ""
    want = Classifier(emulation).predict(images, BATCH)
    return (f"CUDA vs CPU emulating float16 activations (export's verification) max |dp| "
            f"{np.abs(cuda - want).max():.1e}, median {np.median(np.abs(cuda - want).max(1)):.1e}, top-1 agreement "
            f"{(want.argmax(1) == cuda.argmax(1)).mean():.2%}; ")


def main(pairs: list[str]) -> int:
    """0 where every file ran on the GPU and agreed with the CPU, else 1 (after all of them were tried)."""
    failed = 0
    for pair in pairs:
        model, _, folder = pair.partition("=")
        try:
            print(compare(Path(model), Path(folder)), flush=True)
        except Exception as error:  # one model that fails here must not hide the others' results
            print(f"{model}: FAILED {type(error).__name__}: {error}", flush=True)
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
