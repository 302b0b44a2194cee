"""``medclf benchmark MODEL.onnx --data DIR``: an exported file on its own, on the machine that will serve it.

No Keras model and no TensorFlow: what a Jetson or a clinic workstation with only the runtime can measure —
size, accuracy on labelled images (folder per class) called as ``medclf-run`` calls them, and latency and
throughput on the chosen backend (``--backend cuda`` and the TensorRT ones on GPU machines).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medclf.runtime.atomic import write_json
from medclf.runtime.classifier import Classifier
from medclf.runtime.decision import decide

from .files import FILE_NAMES
from .labelled_images import folder_images, load_labelled, spread
from .speed import BATCH, speed


def benchmark_onnx(model_path: str | os.PathLike[str], data: str | os.PathLike[str] | None, max_images: int = 256,
                   json_path: str | os.PathLike[str] | None = None, backend: str = "cpu",
                   precisions: tuple[str, ...] = tuple(FILE_NAMES)) -> dict:
    """Rows ``{format, file, size_mb, accuracy, agreement, ms_per_image, images_per_s, passed}`` for the file and,
    when it is an export's ``model.onnx``, the ``precisions`` exported beside it (their agreement is with the
    file's calls), in the result shape of :func:`medclf.export.benchmark.benchmark_model`; written to
    ``json_path`` too."""
    model_path = Path(model_path)
    if unknown := [name for name in precisions if name not in FILE_NAMES]:
        raise ValueError(f"unknown precision {', '.join(unknown)}; choose from {', '.join(FILE_NAMES)}")
    if data is None:
        raise FileNotFoundError(f"{model_path}: an ONNX file carries no validation split; pass --data with "
                                f"labelled images (one folder per class)")
    paths, names = folder_images(data)
    if not paths:
        raise FileNotFoundError(f"no images in {data}")
    pick = spread(len(paths), max_images)
    classifiers = [Classifier(file) for file in _with_siblings(model_path, precisions)]  # the CPU, for the calls
    images, labels = load_labelled([paths[i] for i in pick], [names[i] for i in pick], classifiers[0].card)
    rows, reference = [], None
    for classifier in classifiers:
        row, calls = _row(classifier, images, labels, backend)
        if reference is None:  # the file itself: the others are compared with its calls
            reference = calls
        else:
            row["agreement"] = float((calls == reference).mean())
        rows.append(row)
    result = {"model": str(model_path), "images": len(images), "backend": backend,
              "verified_on": f"{len(images)} images from {data}", "rows": rows}
    if len(rows) > 1:
        result["agreement_with"] = model_path.name
    if json_path is not None:
        write_json(json_path, result)
    return result


def _with_siblings(model_path: Path, precisions: tuple[str, ...]) -> list[Path]:
    """The file, then the other precisions' files exported beside it (an export's ``model.onnx`` only)."""
    if model_path.name != FILE_NAMES["fp32"]:
        return [model_path]
    siblings = [model_path.with_name(FILE_NAMES[p]) for p in precisions if p != "fp32" and p in FILE_NAMES]
    return [model_path, *(path for path in siblings if path.is_file())]


def _row(classifier: Classifier, images: np.ndarray, labels: np.ndarray | None,
         backend: str) -> tuple[dict, np.ndarray]:
    """One file's row, and its calls on ``images`` (made on the CPU, as medclf-run makes them; the timing runs in
    a fresh process on ``backend``)."""
    model_path = classifier.model_path
    called = decide(classifier.predict(images, batch_size=BATCH), classifier.labels, classifier.card.decision)
    timing = speed(model_path, images, backend=backend)
    row = {"format": f"ONNX {classifier.card.precision}" + ("" if backend == "cpu" else f" ({backend})"),
           "file": model_path.name, "size_mb": round(model_path.stat().st_size / 1e6, 2),
           "accuracy": None if labels is None else float((called == labels).mean()), "agreement": None,
           "ms_per_image": timing["latency_ms_batch1"], "images_per_s": timing["images_per_s_batch32"],
           "passed": True}
    return row, called
