"""``pip install medclf`` is the runtime alone, what a Jetson or a clinic workstation installs: it classifies
with the packages pyproject.toml names for it and nothing of training's or export's. The development install
(every extra, editable) would hide a runtime module that needs one of those; a fresh environment does not.
JetPack 6 ships Python 3.10, one release older than the one the rest of medclf is tested on: where this machine
has a 3.10 too, the runtime is installed and run on it as well."""

from __future__ import annotations

import glob
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

NOT_FOR_THE_RUNTIME = {"tensorflow", "tensorflow-cpu", "keras", "onnx", "tf2onnx", "onnxslim", "scikit-learn",
                       "matplotlib", "typer", "scipy"}
PYTHON_310 = sorted(glob.glob("/usr/bin/python3.10") + glob.glob(
    os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv")) + "/versions/3.10*/bin/python3.10"))


CONSTRAINTS = REPO / "scripts" / "constraints.txt"


def frozen_on_this_python() -> bool:
    """Whether scripts/constraints.txt was frozen on this Python and CPU (its ``# frozen on:`` line)."""
    tag = f"python{sys.version_info[0]}.{sys.version_info[1]}-{platform.machine()}"
    return f"# frozen on: {tag}" in CONSTRAINTS.read_text().splitlines()


def python_310() -> str:
    if not PYTHON_310:
        pytest.skip("no Python 3.10 on this machine (JetPack 6's): looked in /usr/bin and pyenv's versions")
    return PYTHON_310[-1]


@pytest.mark.parametrize("interpreter", ["this one", "3.10"])
def test_the_runtime_alone_installs_and_classifies_a_real_image(interpreter, tmp_path, blood_cell_images):
    python = sys.executable if interpreter == "this one" else python_310()
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    # the tested versions where they apply, as scripts/install.sh decides: on the Python and CPU they were frozen on
    pinned = ["-c", str(CONSTRAINTS)] if python == sys.executable and frozen_on_this_python() else []
    installed = subprocess.run([*pip, "install", "-q", *pinned, str(REPO)], capture_output=True, text=True,
                               timeout=900)
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
    training = subprocess.run([str(venv / "bin" / "medclf"), "--help"], capture_output=True, text=True, timeout=60)
    assert training.returncode == 2 and training.stderr.startswith("error: medclf's commands (train, evaluate, ")
