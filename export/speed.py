"""How fast an exported file runs on this machine's CPU, through the runtime that will serve it.

Medians of a few timed runs after a warm-up: latency at batch 1 (one image, as ``medclf-run image.jpg`` sees it)
and throughput at batch 32 (folders). Model maths only — decoding is the runtime benchmarks' business.

Measured in a fresh process that imports the runtime alone, as in serving: in the exporting process TensorFlow
is loaded, and its thread pools slow onnxruntime by up to half.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

BATCH = 32


def cpu_speed(model_path: str | os.PathLike[str], images: np.ndarray, repeats: int = 10) -> dict[str, float]:
    """``{"latency_ms_batch1": ..., "images_per_s_batch32": ...}`` for real preprocessed ``images``."""
    with tempfile.TemporaryDirectory() as tmp:
        batch = Path(tmp) / "images.npy"
        np.save(batch, np.resize(images, (BATCH, *images.shape[1:])))
        done = subprocess.run([sys.executable, "-m", "medclf.export.speed", os.fspath(model_path), str(batch),
                               str(repeats)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"timing {model_path} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def measure(model_path: str, images: np.ndarray, repeats: int) -> dict[str, float]:
    from medclf.runtime.classifier import Classifier

    classifier = Classifier(model_path)
    latency = median_seconds(lambda: classifier.predict(images[:1]), repeats)
    per_batch = median_seconds(lambda: classifier.predict(images), max(3, repeats // 3))
    return {"latency_ms_batch1": round(latency * 1e3, 3), "images_per_s_batch32": round(len(images) / per_batch, 1)}


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: first-run allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return median(times)


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3]))))
