"""``medclf benchmark MODEL.onnx --data DIR``: an exported file on its own, on the machine that will serve it.

No Keras model and no TensorFlow: what a Jetson or a clinic workstation with only the runtime can measure —
size, accuracy on labelled images (folder per class) called as ``medclf-run`` calls them, and latency and
throughput on the chosen backend (``--backend cuda`` and the TensorRT ones on GPU machines).
"""

from __future__ import annotations

import os
from pathlib import Path

from medclf.runtime.atomic import write_json
from medclf.runtime.classifier import Classifier
from medclf.runtime.decision import decide

from .labelled_images import folder_images, load_labelled, spread
from .speed import BATCH, speed


def benchmark_onnx(model_path: str | os.PathLike[str], data: str | os.PathLike[str] | None, max_images: int = 256,
                   json_path: str | os.PathLike[str] | None = None, backend: str = "cpu") -> dict:
    """One row ``{format, file, size_mb, accuracy, agreement: None, ms_per_image, images_per_s, passed}``, in
    the same result shape as :func:`medclf.export.benchmark.benchmark_model`; written to ``json_path`` too."""
    model_path = Path(model_path)
    if data is None:
        raise FileNotFoundError(f"{model_path}: an ONNX file carries no validation split; pass --data with "
                                f"labelled images (one folder per class)")
    classifier = Classifier(model_path)  # the CPU, for the calls; timing runs in a fresh process on `backend`
    paths, names = folder_images(data)
    if not paths:
        raise FileNotFoundError(f"no images in {data}")
    pick = spread(len(paths), max_images)
    images, labels = load_labelled([paths[i] for i in pick], [names[i] for i in pick], classifier.card)
    called = decide(classifier.predict(images, batch_size=BATCH), classifier.labels, classifier.card.decision)
    timing = speed(model_path, images, backend=backend)
    row = {"format": f"ONNX {classifier.card.precision}" + ("" if backend == "cpu" else f" ({backend})"),
           "file": model_path.name, "size_mb": round(model_path.stat().st_size / 1e6, 2),
           "accuracy": None if labels is None else float((called == labels).mean()), "agreement": None,
           "ms_per_image": timing["latency_ms_batch1"], "images_per_s": timing["images_per_s_batch32"],
           "passed": True}
    result = {"model": str(model_path), "images": len(images), "backend": backend,
              "verified_on": f"{len(images)} images from {data}", "rows": [row]}
    if json_path is not None:
        write_json(json_path, result)
    return result
