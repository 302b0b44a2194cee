"""How fast an exported file runs on this machine's CPU, through the runtime that will serve it.

Medians of a few timed runs after a warm-up: latency at batch 1 (one image, as ``medclf-run image.jpg`` sees it)
and throughput at batch 32 (folders). Model maths only — decoding is the runtime benchmarks' business.
"""

from __future__ import annotations

import os
import time
from statistics import median

import numpy as np

from medclf.runtime.classifier import Classifier

BATCH = 32


def cpu_speed(model_path: str | os.PathLike[str], images: np.ndarray, repeats: int = 10) -> dict[str, float]:
    """``{"latency_ms_batch1": ..., "images_per_s_batch32": ...}`` for real preprocessed ``images``."""
    classifier = Classifier(model_path)
    one, batch = images[:1], np.resize(images, (BATCH, *images.shape[1:]))
    latency = _median_seconds(lambda: classifier.predict(one), repeats)
    per_batch = _median_seconds(lambda: classifier.predict(batch), max(3, repeats // 3))
    return {"latency_ms_batch1": round(latency * 1e3, 3), "images_per_s_batch32": round(BATCH / per_batch, 1)}


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up: first-run allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return median(times)
