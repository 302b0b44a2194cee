"""Tiny real models and their exports, shared by the export tests."""

from __future__ import annotations

import pytest

from medclf.export import pipeline
from medclf.train.fit import FitConfig
from medclf.train.pipeline import Recipe, train


@pytest.fixture(scope="session")
def run_dir(blood_cells, tmp_path_factory):
    """MobileNet 0.25 at 64 px, 12 blood-cell images per class, one epoch: real weights, seconds to train."""
    out = tmp_path_factory.mktemp("run")
    recipe = Recipe(arch="mobilenet_025", image_size=64, val_split=0.5,
                    fit=FitConfig(epochs=1, head_epochs=1, augment_views=1))
    train(blood_cells / "TRAIN", out, recipe, limit_per_class=12, cache_dir=None)
    return out


@pytest.fixture(scope="session")
def exported(run_dir, tmp_path_factory):
    """``(OUT_DIR, report, TRITON_REPO)`` of an FP32 + FP16 + INT8 export with a Triton repository."""
    out, repo = tmp_path_factory.mktemp("exported"), tmp_path_factory.mktemp("triton")
    report = pipeline.export_run(run_dir / "model.keras", out, ("fp32", "fp16", "int8"), triton=repo, strict=False)
    return out, report, repo


@pytest.fixture(scope="session")
def binary_export(cataract, tmp_path_factory):
    """``(RUN_DIR, OUT_DIR, report, TRITON_REPO)``: a binary cataract model whose threshold (for sensitivity 1)
    is far from 0.5, exported to FP32 and INT8 with a Triton repository."""
    run, out, repo = (tmp_path_factory.mktemp(name) for name in ("binary_run", "binary_out", "binary_triton"))
    recipe = Recipe(arch="mobilenet_025", image_size=64, val_split=0.5, target_sensitivity=1.0,
                    fit=FitConfig(epochs=1, head_epochs=1, augment_views=0))
    train(cataract, run, recipe)
    report = pipeline.export_run(run / "model.keras", out, ("fp32", "int8"), triton=repo, strict=False)
    return run, out, report, repo
