"""The runtime never imports TensorFlow, Keras or tf2onnx — not directly, not through a helper."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medclf.runtime import DEFAULT_MODEL

HEAVY = ("tensorflow", "keras", "tf2onnx")


def modules_loaded_by(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return {name.split(".")[0] for name in done.stdout.splitlines()}


def test_importing_the_runtime_loads_no_tensorflow():
    loaded = modules_loaded_by("import medclf.runtime, medclf.runtime.cli")
    assert "onnxruntime" in loaded
    assert not loaded & set(HEAVY)


def test_medclf_run_starts_without_typer_pydantic_or_multiprocessing():
    """A one-image run is mostly start-up; typer and the pydantic it validates through cost 0.11 s of it, and
    multiprocessing (for decoding processes, which only long runs use) 0.03 s."""
    loaded = modules_loaded_by("import medclf.runtime.cli")
    assert not loaded & {"typer", "pydantic", "click", "rich", "multiprocessing"}


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the packaged default model is missing")
@pytest.mark.parametrize("output", [[], ["--json"]], ids=["table", "json"])
def test_a_one_image_medclf_run_loads_no_tensorflow_nor_what_long_runs_need(blood_cell_images, output):
    """Neither multiprocessing nor rich (0.04 s; it draws the progress bar of long runs, the table is plain)."""
    code = ("from medclf.runtime.cli import main\n"
            f"try:\n    main([{str(blood_cell_images[0])!r}, *{output!r}])\nexcept SystemExit:\n    pass")
    loaded = modules_loaded_by(code)
    assert "cv2" in loaded
    assert not loaded & set(HEAVY)
    assert not loaded & {"rich", "multiprocessing"}
