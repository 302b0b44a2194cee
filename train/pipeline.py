"""``medclf train`` as a function: data folder in, a run directory out.

RUN_DIR holds ``model.keras`` (best validation weights), ``labels.json``, ``preprocess.json``,
``history.csv``, ``metrics.json`` (validation, and test when given) and ``splits.json`` (the held-out
validation files, which export verifies on). Export reads the same directory.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from medclf.runtime.atomic import write_json, write_text
from medclf.runtime.preprocess import Preprocess

from .architectures import get_architecture
from .data import ImageFolder, default_cache_dir, load_arrays, load_splits, read_folder
from .evaluate import classification_metrics
from .fit import FitConfig, fit, predict


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    metrics: dict
    seconds: float


def train(data: str | os.PathLike[str], out: str | os.PathLike[str], arch: str = "mobilenet_v2",
          image_size: int | tuple[int, int] | None = None, color: str = "rgb", crop: str = "centre",
          crop_fraction: float = 1.0, val_split: float = 0.15,
          test: str | os.PathLike[str] | None = None, pretrained: bool = True, config: FitConfig = FitConfig(),
          cache_dir: str | os.PathLike[str] | None = None, limit_per_class: int | None = None) -> TrainResult:
    """Train one model and write its run directory. ``limit_per_class`` trains on a subset (demos, tests)."""
    start = time.perf_counter()
    architecture = get_architecture(arch)
    size = image_size or architecture.default_size
    height, width = (size, size) if isinstance(size, int) else size
    preprocess = Preprocess(height, width, color=color, crop=crop, crop_fraction=crop_fraction)
    splits = load_splits(data, val_split=val_split, test=test, seed=config.seed)
    train_set = _limit(splits.train, limit_per_class, config.seed)
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    train_x, train_y, _ = load_arrays(train_set, preprocess, cache)
    val_x, val_y, val_set = load_arrays(_limit(splits.val, limit_per_class, config.seed), preprocess, cache)

    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = architecture.build(preprocess.shape, len(train_set.classes), pretrained)
    fit(model, architecture, (train_x, train_y), (val_x, val_y), config, run_dir / "history.csv")

    metrics = {"validation": _evaluate(model, val_x, val_y, train_set.classes)}
    if splits.test is not None:
        test_x, test_y, _ = load_arrays(splits.test, preprocess, cache)
        metrics["test"] = _evaluate(model, test_x, test_y, train_set.classes)
    seconds = time.perf_counter() - start
    metrics["training"] = {"architecture": arch, "image_size": [height, width], "seconds": round(seconds, 1),
                           "train_images": int(len(train_y)), "val_images": int(len(val_y)),
                           "data": str(data), "config": asdict(config)}
    save_model(model, run_dir / "model.keras")
    write_json(run_dir / "labels.json", list(train_set.classes))
    write_text(run_dir / "preprocess.json", preprocess.to_json() + "\n")
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "splits.json", {"val": {"paths": [os.path.abspath(p) for p in val_set.paths],
                                                  "labels": val_set.labels.tolist()}})
    return TrainResult(run_dir, metrics, seconds)


def evaluate_run(model_path: str | os.PathLike[str], data: str | os.PathLike[str],
                 cache_dir: str | os.PathLike[str] | None = None) -> dict:
    """Score a trained model on a folder-per-class dataset with the run's own labels and preprocessing."""
    run_dir = Path(model_path).parent
    classes = tuple(json.loads((run_dir / "labels.json").read_text()))
    preprocess = Preprocess.from_json((run_dir / "preprocess.json").read_text())
    images, labels, _ = load_arrays(read_folder(data, classes), preprocess, cache_dir)
    return _evaluate(keras.models.load_model(model_path, compile=False), images, labels, classes)


def save_model(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # Keras wants the .keras suffix
    model.save(tmp)
    os.replace(tmp, path)


def _evaluate(model: keras.Model, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> dict:
    return classification_metrics(labels, predict(model, images), classes)


def _limit(folder: ImageFolder, per_class: int | None, seed: int) -> ImageFolder:
    """At most ``per_class`` images of each class, drawn at random (reproducibly)."""
    if per_class is None:
        return folder
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(folder.labels == c))[:per_class] for c in range(len(folder.classes))]
    return folder.subset(np.sort(np.concatenate(keep)))
