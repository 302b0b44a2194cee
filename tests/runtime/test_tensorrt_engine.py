"""TensorRT engines: cached by everything that invalidates them; a stale or foreign plan is never loaded.

Building and running engines needs TensorRT and an NVIDIA GPU; those tests skip elsewhere, with the reason.
The cache's bookkeeping is plain Python and is checked everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest

from medclf.runtime.atomic import write_json
from medclf.runtime.tensorrt_engine import BatchProfile, EngineCache, EngineKey

KEY = EngineKey(onnx_sha256="ab" * 32, tensorrt_version="10.13.0", gpu_name="NVIDIA H100 80GB HBM3",
                compute_capability="9.0", precision="fp16", profile=BatchProfile(1, 16, 64))


def cached(tmp_path, key: EngineKey, plan: bytes = b"plan bytes"):
    import hashlib

    plan_file, record = tmp_path / f"{key.digest}.plan", tmp_path / f"{key.digest}.json"
    plan_file.write_bytes(plan)
    write_json(record, {**dataclasses.asdict(key), "plan_sha256": hashlib.sha256(plan).hexdigest()})
    return plan_file, record


def test_every_field_of_the_key_changes_the_engines_name():
    changes = {"onnx_sha256": "cd" * 32, "tensorrt_version": "10.14.1", "gpu_name": "Orin",
               "compute_capability": "8.7", "precision": "int8", "profile": BatchProfile(1, 8, 32)}
    digests = {dataclasses.replace(KEY, **{field: value}).digest for field, value in changes.items()}
    assert KEY.digest not in digests and len(digests) == len(changes)


def test_a_plan_recorded_for_this_key_is_reused(tmp_path):
    plan, record = cached(tmp_path, KEY)
    assert EngineCache._valid(plan, record, KEY)


def test_a_stale_foreign_or_damaged_plan_is_not_loaded(tmp_path):
    plan, record = cached(tmp_path, KEY)
    other_gpu = dataclasses.replace(KEY, gpu_name="Orin", compute_capability="8.7")
    assert not EngineCache._valid(plan, record, other_gpu)  # copied from another machine under the same name
    plan.write_bytes(b"plan bytes, changed")
    assert not EngineCache._valid(plan, record, KEY)  # bytes differ from the ones recorded
    record.write_text("{not json")
    assert not EngineCache._valid(plan, record, KEY)
    record.unlink()
    assert not EngineCache._valid(plan, record, KEY)


def test_a_batch_profile_must_be_ordered():
    with pytest.raises(ValueError, match="min <= opt <= max"):
        BatchProfile(8, 4, 64)


needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                                    reason="TensorRT is not installed (NVIDIA GPU machines only: medclf[gpu])")


@needs_tensorrt
def test_an_engine_is_built_once_matches_onnxruntime_and_is_reused(tmp_path, blood_cell_images):
    from medclf.runtime import Classifier, load_image
    from medclf.runtime.classifier import DEFAULT_MODEL
    from medclf.runtime.tensorrt_engine import TensorRTEngine

    cache = EngineCache(tmp_path)
    plan = cache.engine_for(DEFAULT_MODEL, "fp32", BatchProfile(1, 4, 8))
    built = plan.stat().st_mtime_ns
    assert cache.engine_for(DEFAULT_MODEL, "fp32", BatchProfile(1, 4, 8)) == plan
    assert plan.stat().st_mtime_ns == built
    classifier = Classifier(DEFAULT_MODEL)
    images = np.stack([load_image(p, classifier.card.preprocess) for p in blood_cell_images])
    np.testing.assert_allclose(TensorRTEngine(plan).predict(images), classifier.predict(images), atol=1e-3)
    json.loads(plan.with_suffix(".json").read_text())["plan_sha256"]


@needs_tensorrt
def test_the_runtime_serves_the_engine_export_built_for_its_profile_and_pads_a_short_last_batch(tmp_path,
                                                                                              blood_cell_images):
    """`medclf export --engine --batch-profile 2,4,8` verifies one engine; `medclf-run --backend tensorrt` asks for
    the file's engine without a profile and must get that one, not build and serve an unverified other."""
    from medclf.runtime import Classifier, load_image
    from medclf.runtime.classifier import DEFAULT_MODEL
    from medclf.runtime.tensorrt_engine import TensorRTEngine

    cache = EngineCache(tmp_path)
    verified = cache.engine_for(DEFAULT_MODEL, "fp32", BatchProfile(2, 4, 8))
    assert cache.engine_for(DEFAULT_MODEL, "fp32") == verified and len(list(tmp_path.glob("*.plan"))) == 1
    classifier = Classifier(DEFAULT_MODEL)
    images = np.stack([load_image(p, classifier.card.preprocess) for p in [*blood_cell_images, blood_cell_images[0]]])
    assert len(images) == 9  # runs as 8, then 1 under the profile's smallest batch of 2
    np.testing.assert_allclose(TensorRTEngine(verified).predict(images), classifier.predict(images), atol=1e-3)
