"""How fast an exported file runs on this machine — its CPU, or a GPU backend — through the runtime that will
serve it.

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
from collections.abc import Sequence
from pathlib import Path
from statistics import median

import numpy as np

BATCH = 32
BACKEND_UNAVAILABLE = 3  # the timing process's exit status when the backend cannot start here


def speed(model_path: str | os.PathLike[str], images: np.ndarray, backend: str = "cpu",
          repeats: int = 10) -> dict[str, float]:
    """``{"latency_ms_batch1": ..., "images_per_s_batch32": ...}`` for real preprocessed ``images`` on
    ``backend`` (one of :data:`medclf.runtime.BACKENDS`); a backend that cannot start here raises
    :class:`~medclf.runtime.BackendUnavailable` saying why."""
    return speeds([model_path], images, backend, repeats)[0]


def speeds(model_paths: Sequence[str | os.PathLike[str]], images: np.ndarray, backend: str = "cpu",
           repeats: int = 10) -> list[dict[str, float]]:
    """:func:`speed` of several files, timed one after another in one process (one start-up for all)."""
    with tempfile.TemporaryDirectory() as tmp:
        batch = Path(tmp) / "images.npy"
        np.save(batch, np.resize(images, (BATCH, *images.shape[1:])))
        done = subprocess.run([sys.executable, "-m", "medclf.export.speed", str(batch), str(repeats), backend,
                               *map(os.fspath, model_paths)], capture_output=True, text=True, timeout=600)
    last_line = " ".join(done.stderr.strip().splitlines()[-1:])
    if done.returncode == BACKEND_UNAVAILABLE:
        from medclf.runtime.backends import BackendUnavailable

        raise BackendUnavailable(last_line)
    if done.returncode != 0:
        raise RuntimeError(f"timing {', '.join(map(os.fspath, model_paths))} failed: {last_line}")
    return json.loads(done.stdout)


def measure(model_path: str, images: np.ndarray, repeats: int, backend: str = "cpu") -> dict[str, float]:
    from medclf.runtime.classifier import Classifier

    classifier = Classifier(model_path, backend=backend)
    latency = median_seconds(lambda: classifier.predict(images[:1]), repeats)
    per_batch = median_seconds(lambda: classifier.predict(images, batch_size=len(images)), max(3, repeats // 3))
    return {"latency_ms_batch1": round(latency * 1e3, 3), "images_per_s_batch32": round(len(images) / per_batch, 1)}


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: first-run allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return median(times)


if __name__ == "__main__":  # python -m medclf.export.speed IMAGES.npy REPEATS BACKEND MODEL [MODEL ...]
    from medclf.runtime.backends import BackendUnavailable

    batch, repeat_count, backend_name = np.load(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    try:
        print(json.dumps([measure(path, batch, repeat_count, backend_name) for path in sys.argv[4:]]))
    except BackendUnavailable as exc:
        print(exc, file=sys.stderr)
        sys.exit(BACKEND_UNAVAILABLE)
