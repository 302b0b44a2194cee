"""``pip install medclf`` is the runtime alone, what a Jetson or a clinic workstation installs: it classifies
with the packages pyproject.toml names for it and nothing of training's or export's. The development install
(every extra, editable) would hide a runtime module that needs one of those; a fresh environment does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

NOT_FOR_THE_RUNTIME = {"tensorflow", "tensorflow-cpu", "keras", "onnx", "tf2onnx", "onnxslim", "scikit-learn",
                       "matplotlib", "typer", "scipy"}


def test_the_runtime_alone_installs_and_classifies_a_real_image(tmp_path, blood_cell_images):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    installed = subprocess.run([*pip, "install", "-q", "-c", str(REPO / "scripts" / "constraints.txt"), str(REPO)],
                               capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    listed = subprocess.run([*pip, "list", "--format", "json"], capture_output=True, text=True, check=True)
    names = {package["name"].lower().replace("_", "-") for package in json.loads(listed.stdout)}
    assert {"medclf", "onnxruntime", "numpy", "opencv-python-headless"} <= names
    assert not names & NOT_FOR_THE_RUNTIME
    answered = subprocess.run([str(venv / "bin" / "medclf-run"), str(blood_cell_images[0]), "--json"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert answered.returncode == 0, answered.stderr
    answer = json.loads(answered.stdout.splitlines()[0])
    assert Path(answer["path"]) == blood_cell_images[0]
    assert answer["label"] in {"EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"}
