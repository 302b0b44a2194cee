"""Inference per precision, side by side on the CPU: the packaged FP32 model and its FP16 and INT8 files, at
batch 1 and batch 32, on the same pre-decoded real images. The reduced files are made here from the packaged
model with medclf's own converters (INT8 calibrated on 64 real TRAIN images); whether a precision is accurate
enough to ship is the export's verification, not this file's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from medclf.runtime import Classifier

TRAIN_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "blood-cells" / "TRAIN"
BATCH = 32


@pytest.fixture(scope="session")
def precision_files(classifier, tmp_path_factory) -> dict[str, str]:
    onnx = pytest.importorskip("onnx", reason="making FP16/INT8 files needs medclf[export]")
    from medclf.export.fp16 import to_fp16
    from medclf.export.int8 import ImageCalibrationReader, to_int8

    paths = sorted(str(p) for p in TRAIN_IMAGES.glob("*/*.jpeg"))
    calibration = [paths[i] for i in np.linspace(0, len(paths) - 1, 64).astype(int)]
    fp32 = str(classifier.model_path)
    made = {"fp16": to_fp16(onnx.load(fp32)), "int8": to_int8(fp32, ImageCalibrationReader(calibration,
                                                                                           classifier.card.preprocess))}
    files = {"fp32": fp32}
    for precision, proto in made.items():
        onnx.helper.set_model_props(proto, dataclasses.replace(classifier.card, precision=precision).to_metadata())
        files[precision] = str(tmp_path_factory.mktemp(precision) / f"model.{precision}.onnx")
        onnx.save(proto, files[precision])
    return files


@pytest.mark.parametrize("batch", [1, BATCH])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_inference(benchmark, precision_files, images, precision, batch):
    model = Classifier(precision_files[precision])
    benchmark.group = f"inference, batch {batch}"
    benchmark.pedantic(model.predict, args=(images[:batch],), rounds=100 if batch == 1 else 20, warmup_rounds=3)
