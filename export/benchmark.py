"""``medclf benchmark MODEL``: every format of one model side by side — the Keras model it came from and each
exported precision — with size, accuracy, latency and throughput on this machine, like Ultralytics' table.

The ONNX rows come from a real export (verified, timed through the runtime); the Keras row is timed the way
the seed tutorials run it (``predict_on_batch`` for one image, ``predict`` for a batch of 32), on the same
real images.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import keras
import numpy as np

from medclf.runtime.atomic import write_json
from medclf.runtime.classifier import Classifier
from medclf.runtime.decision import decide
from medclf.runtime.modelcard import ModelCard

from .pipeline import PRECISIONS, export_run, model_card
from .verification_images import MAX_VERIFY_IMAGES, verification_set
from .speed import BATCH, median_seconds
from .verify import keras_probabilities


def benchmark_model(model_path: str | os.PathLike[str], data: str | os.PathLike[str] | None = None,
                    precisions: tuple[str, ...] = PRECISIONS, max_images: int = MAX_VERIFY_IMAGES,
                    json_path: str | os.PathLike[str] | None = None,
                    calibration_data: str | os.PathLike[str] | None = None) -> dict:
    """Rows ``{format, file, size_mb, accuracy, agreement, ms_per_image, images_per_s, passed}``, Keras first;
    also written to ``json_path`` when given."""
    model_path = Path(model_path)
    model, card = keras.models.load_model(model_path, compile=False), model_card(model_path)
    with tempfile.TemporaryDirectory() as work:
        report = export_run(model_path, work, precisions, verify_data=data, calibration_data=calibration_data,
                            max_images=max_images, strict=False)
        held_out = _held_out_accuracies(model, card, model_path, report, max_images) if data is None else None
    rows = [_keras_row(model, card, model_path, data, max_images, report)]
    for precision, entry in report["precisions"].items():
        rows.append({"format": f"ONNX {precision}", "file": Path(entry["file"]).name,
                     "size_mb": round(entry["size_bytes"] / 1e6, 2), "accuracy": entry["accuracy"],
                     "agreement": entry["agreement"], "ms_per_image": entry.get("latency_ms_batch1"),
                     "images_per_s": entry.get("images_per_s_batch32"), "passed": entry["passed"]})
    result = {"model": str(model_path), "images": report["images"], "verified_on": report["verified_on"],
              "familiarity": report["familiarity"], "rows": rows}
    if held_out is not None:  # accuracy over what the model never saw; agreement and speed over all the images
        count, accuracies = held_out
        for row in rows:
            row["accuracy"] = accuracies.get(row["format"])
        result["accuracy_on"] = f"the {count} held-out validation images alone"
    if json_path is not None:
        write_json(json_path, result)
    return result


def _keras_row(model: keras.Model, card: ModelCard, model_path: Path, data, max_images: int, report: dict) -> dict:
    images, _ = verification_set(model_path, card, data, min(max_images, BATCH))  # to time
    one, batch = images[:1].astype(np.float32), np.resize(images, (BATCH, *images.shape[1:])).astype(np.float32)
    latency = median_seconds(lambda: model.predict_on_batch(one), 10)
    per_batch = median_seconds(lambda: model.predict(batch, batch_size=BATCH, verbose=0), 3)
    reference = report["precisions"]["fp32"]["reference_accuracy"]
    return {"format": "Keras", "file": model_path.name, "size_mb": round(model_path.stat().st_size / 1e6, 2),
            "accuracy": reference, "agreement": 1.0, "ms_per_image": round(latency * 1e3, 3),
            "images_per_s": round(BATCH / per_batch, 1), "passed": True}


def _held_out_accuracies(model: keras.Model, card: ModelCard, model_path: Path, report: dict,
                         max_images: int) -> tuple[int, dict[str, float]] | None:
    """Each format's accuracy on the run's held-out validation images alone, where export verified on more — a
    small run's split topped up with its training images, which the model knows (a 59-photo cataract run: 94.9%
    over all, 88.9% on the 9 held out) — or None where verification's images were all held out. Files that
    failed verification, not kept, have none."""
    images, labels = verification_set(model_path, card, None, max_images)
    if labels is None or len(images) >= report["images"]:
        return None

    def accuracy(probabilities: np.ndarray) -> float:
        return float(np.mean(decide(probabilities, card.labels, card.decision) == labels))

    accuracies = {"Keras": accuracy(keras_probabilities(model, images))}
    for precision, entry in report["precisions"].items():
        if Path(entry["file"]).is_file():
            accuracies[f"ONNX {precision}"] = accuracy(Classifier(entry["file"]).predict(images))
    return len(images), accuracies
