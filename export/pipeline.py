"""``medclf export`` as a function: a run directory's Keras model → verified ``model.onnx`` + report.

The ONNX file is first written under a temporary name, verified against Keras on real held-out images, and
only then renamed to ``model.onnx``. ``export_report.json`` is written either way and says what was compared.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import onnx

from medclf.rundir import RunDir
from medclf.runtime.atomic import write_json
from medclf.runtime.inputs import list_images
from medclf.runtime.modelcard import ModelCard
from medclf.runtime.preprocess import ImageError, Preprocess, load_image

from .onnx_export import OPSET, convert, provenance
from .verify import TOLERANCES, VerificationError, compare, keras_probabilities, onnx_probabilities

MAX_VERIFY_IMAGES = 256


def export_run(model_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
               verify_data: str | os.PathLike[str] | None = None, max_images: int = MAX_VERIFY_IMAGES) -> dict:
    """Export, verify, and publish ``OUT_DIR/model.onnx``; raise :class:`VerificationError` if it disagrees."""
    model_path = Path(model_path)
    run_dir = model_path.parent
    card = _model_card(model_path)
    model = keras.models.load_model(model_path, compile=False)
    paths, labels = _verification_images(run_dir, verify_data, max_images)
    images, labels = _load(paths, labels, card.preprocess)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "model.onnx"
    candidate = out / f".model.onnx.{os.getpid()}.candidate"
    try:
        onnx.save(convert(model, card), str(candidate))
        comparison = compare(keras_probabilities(model, images), onnx_probabilities(str(candidate), images),
                             TOLERANCES["fp32"], labels)
        report = {"model": str(model_path), "onnx": str(final), "precision": "fp32", "opset": OPSET,
                  "verified_on": f"{len(images)} real images ({_describe(run_dir, verify_data)})",
                  "size_bytes": candidate.stat().st_size, **comparison.to_dict()}
        if comparison.passed:
            os.replace(candidate, final)
    finally:
        candidate.unlink(missing_ok=True)
    write_json(out / "export_report.json", report)
    if not comparison.passed:
        raise VerificationError(f"{final} not written: {'; '.join(comparison.failures)}")
    return report


def _model_card(model_path: Path) -> ModelCard:
    """Labels, preprocessing, operating threshold and metrics from the run directory ``medclf train`` wrote."""
    run = RunDir.of_model(model_path)
    metrics = run.metrics
    return ModelCard(labels=run.labels, preprocess=run.preprocess, precision="fp32", source=provenance(model_path),
                     metrics={k: metrics[k] for k in ("test", "validation", "training") if k in metrics},
                     decision=run.decision)


def _verification_images(run_dir: Path, data: str | os.PathLike[str] | None,
                         max_images: int) -> tuple[list[str], list[int] | None]:
    """The run's held-out validation images, or the images under ``data``; evenly spread, at most ``max_images``."""
    if data is not None:
        paths, labels = [str(p) for p in list_images(data)], None
    else:
        try:
            paths, labels = RunDir(run_dir).validation_split()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}; pass --verify-data with real images to verify on") from None
    if not paths:
        raise FileNotFoundError(f"no images to verify on in {data or run_dir / 'splits.json'}")
    pick = np.unique(np.linspace(0, len(paths) - 1, min(max_images, len(paths))).astype(int))
    return [paths[i] for i in pick], [labels[i] for i in pick] if labels is not None else None


def _load(paths: list[str], labels: list[int] | None, preprocess: Preprocess) -> tuple[np.ndarray, np.ndarray | None]:
    images, kept = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path, preprocess))
            kept.append(i)
        except ImageError:
            continue
    if not images:
        raise FileNotFoundError("none of the verification images could be read")
    return np.stack(images), (np.asarray(labels)[kept] if labels is not None else None)


def _describe(run_dir: Path, data: str | os.PathLike[str] | None) -> str:
    return f"from {data}" if data is not None else f"held-out validation split of {run_dir}"
