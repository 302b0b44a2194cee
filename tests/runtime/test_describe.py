"""``medclf-run --describe``: what a model file is, from the file alone; ``--version``: what answers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import pytest

from medclf.runtime import DEFAULT_MODEL, Classifier, Preprocess
from medclf.runtime.decision import Decision
from medclf.runtime.describe import describe, described_lines
from medclf.runtime.modelcard import ModelCard

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the packaged default model is missing")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medclf.runtime.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_the_packaged_model_is_described_by_its_hash_classes_input_scores_and_export():
    done = run("--describe")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    sha256 = hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert lines[0] == f"{DEFAULT_MODEL}: {DEFAULT_MODEL.stat().st_size / 1e6:.1f} MB, sha256 {sha256}"
    assert lines[1] == "calls: EOSINOPHIL, LYMPHOCYTE, MONOCYTE, NEUTROPHIL (the most probable)"
    assert lines[2] == ("input: 128x128 RGB uint8: a JPEG decoded at 1/8, 1/4 or 1/2 scale, the least that leaves "
                        "the window's side at least the input's; a square 0.4 of the shorter side, centred on the "
                        "stained nucleus (the median row and column of the pixels whose blue exceeds green by more "
                        "than 50 and whose red is under 200; the image's centre where fewer than 20 are), linear "
                        "resize")
    assert "precision: fp32" in lines and "outputs: probabilities, unfamiliarity" in lines
    assert any(line.startswith("trained: mobilenet_v2 on 8,581 images of") for line in lines)
    assert "test: accuracy 0.848, ROC AUC 0.967 on 2,487 images" in lines
    assert lines[-1].startswith("exported: 2026-") and "medclf 0.1.0" in lines[-1]


def test_json_gives_the_whole_card_and_the_identity_a_log_records_beside_results():
    done = run("--describe", "--json", "--model", str(DEFAULT_MODEL.with_name("model.int8.onnx")))
    assert done.returncode == 0, done.stderr
    about = json.loads(done.stdout)
    assert about["sha256"] == hashlib.sha256(DEFAULT_MODEL.with_name("model.int8.onnx").read_bytes()).hexdigest()
    assert about["precision"] == "int8" and about["labels"] == list(Classifier().labels)
    assert about["preprocess"]["height"] == 128 and about["metrics"]["int8_verified_on"]["int8_dot_product"]


def test_a_binary_model_says_how_it_calls_its_finding_and_where_its_int8_file_was_verified():
    card = ModelCard(labels=("NORMAL", "PNEUMONIA"), preprocess=Preprocess(224, 224, color="grey", clahe=True),
                     precision="int8", decision=Decision("PNEUMONIA", 0.203),
                     metrics={"int8_verified_on": {"name": "AVX2 CPU", "int8_dot_product": False}})
    lines = described_lines(describe(DEFAULT_MODEL, card))
    assert lines[1] == "calls: NORMAL, PNEUMONIA: PNEUMONIA when its probability is at least 0.203 (youden)"
    assert lines[2] == "input: 224x224 grey uint8: the whole image, linear resize, contrast equalised (CLAHE)"
    shrinking = dataclasses.replace(card, preprocess=Preprocess(224, 224, shrink_jpeg=True, shrink_all=True))
    assert described_lines(describe(DEFAULT_MODEL, shrinking))[2] == (  # a third party's JPEG scale got 181 of 200
        "input: 224x224 RGB uint8: shrunk 8, 4 or 2 times, the most that leaves the window's side at least the "
        "input's (a JPEG decoded at that scale, other images averaged over blocks); the whole image, linear resize")
    assert lines[3] == "precision: int8 (verified on AVX2 CPU, without int8 dot products)"
    assert len(lines) == 5  # no training record, scores or export in this card: nothing made up


def test_an_ensemble_is_described_by_its_members_not_as_a_run_of_nothing():
    """Its training record names members, no images or data: it read 'ensemble on 0 images of ? in 0 s'."""
    card = ModelCard(labels=("a", "b"), preprocess=Preprocess(64, 64),
                     metrics={"training": {"architecture": "ensemble", "members": ["/runs/a", "/runs/b"]}})
    assert "trained: an average of 2 runs (/runs/a, /runs/b)" in described_lines(describe(DEFAULT_MODEL, card))


def test_version_names_medclf_and_the_libraries_that_answer_and_inputs_are_required_otherwise():
    done = run("--version")
    assert done.returncode == 0 and done.stdout.startswith("medclf-run 0.1.0 (onnxruntime ")
    assert "OpenCV" in done.stdout and "numpy" in done.stdout and "\n" == done.stdout[-1]
    bare = run()
    assert bare.returncode == 2 and "the following arguments are required: INPUTS" in bare.stderr
    missing = run("--describe", "--model", "nowhere.onnx")
    assert missing.returncode == 2 and "nowhere.onnx: model file not found" in missing.stderr


def test_a_calibrated_copy_says_its_scores_are_the_training_sites_and_what_the_site_fitted():
    """It printed the training site's test accuracy (0.848), then only "calibrated at a site: blood": none of the
    temperature, bias or the site's estimate (0.825 → 0.910) that now describe the file."""
    site = {"data": "blood", "images": 280, "temperature": 0.8, "bias": {"a": 0.0, "b": -1.25},
            "before": {"accuracy": 0.825}, "estimate": {"accuracy": {"mean": 0.91, "std": 0.02}, "splits": 10}}
    card = ModelCard(labels=("a", "b"), preprocess=Preprocess(64, 64),
                     metrics={"test": {"accuracy": 0.848, "images": 2487}, "site": site})
    lines = described_lines(describe(DEFAULT_MODEL, card))
    assert "test (at the training site, before the site's calibration): accuracy 0.848 on 2,487 images" in lines
    assert "calibrated at a site: blood, 280 images: temperature 0.8, bias a +0.00 b -1.25; estimated accuracy " \
           "there 0.910 (as the model stood 0.825)" in lines
