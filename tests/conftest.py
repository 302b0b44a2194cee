"""Shared fixtures: the real data in ../shared (tests skip with a reason where it is absent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDCLF_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
BLOOD = DATA / "blood-cells"

if "KERAS_HOME" not in os.environ and (SHARED / "keras").is_dir():
    os.environ["KERAS_HOME"] = str(SHARED / "keras")

# For tests that build pretrained models: ``from tests.conftest import needs_weights``.
needs_weights = pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.environ.get("KERAS_HOME", ""), "models")),
    reason="ImageNet weights not available: KERAS_HOME/models is absent (../shared/keras)")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Decoded-image caches go to a temporary folder, not the user's ~/.cache (subprocesses inherit it)."""
    os.environ["MEDCLF_CACHE"] = str(tmp_path_factory.mktemp("medclf-cache"))


def run_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``code`` run by this interpreter in a fresh process (what a test of start-up, memory or stderr needs),
    its output captured; a failure is the test's, with the end of its stderr."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (../shared is not beside the repo)")
    return path


@pytest.fixture(scope="session")
def blood_cells() -> Path:
    """The white-blood-cell dataset: TRAIN/ and TEST/, four class folders each."""
    return require(BLOOD)


@pytest.fixture(scope="session")
def blood_cell_images(blood_cells: Path) -> list[Path]:
    """Two real test images per class, in class order."""
    return [path for cls in sorted(p for p in (blood_cells / "TEST").iterdir() if p.is_dir())
            for path in sorted(cls.iterdir())[:2]]


@pytest.fixture(scope="session")
def chest_xray() -> Path:
    return require(DATA / "chest-xray")


@pytest.fixture(scope="session")
def cataract() -> Path:
    return require(DATA / "cataract")
