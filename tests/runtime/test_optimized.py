"""The optimized-graph cache ``medclf-run`` starts from: same answers, one entry per model file, never in the way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from medclf.runtime import DEFAULT_MODEL, Classifier
from medclf.runtime.modelcard import ModelCard
from medclf.runtime.preprocess import Preprocess, load_image
from tests.onnx_graphs import brightness_model

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the packaged default model is missing")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCLF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ort-optimized"


@pytest.fixture
def model(tmp_path):
    copy = tmp_path / "model.onnx"
    shutil.copy(DEFAULT_MODEL, copy)
    return copy


def batch(classifier, images) -> np.ndarray:
    return np.stack([load_image(path, classifier.card.preprocess) for path in images])


def test_the_cached_graph_gives_the_probabilities_of_the_model_itself(cache, model, blood_cell_images):
    plain = Classifier(model)
    first = Classifier(model, reuse_optimized=True)  # optimizes, and saves the graph
    [entry] = cache.iterdir()
    saved = entry.stat().st_ino
    again = Classifier(model, reuse_optimized=True)  # starts from the saved graph
    assert [path.name for path in cache.iterdir()] == [entry.name] and entry.stat().st_ino == saved  # not rewritten
    images = batch(plain, blood_cell_images)
    expected = plain.predict(images)
    for classifier in (first, again):
        np.testing.assert_allclose(classifier.predict(images), expected, rtol=0, atol=1e-6)
        assert classifier.card == plain.card


def test_a_rewritten_model_gets_a_new_entry_that_replaces_the_old(cache, model):
    Classifier(model, reuse_optimized=True)
    [old] = cache.iterdir()
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))  # re-exported in place
    Classifier(model, reuse_optimized=True)
    [new] = cache.iterdir()
    assert new.name != old.name and new.name.split("-")[0] == old.name.split("-")[0]


def test_a_cache_shared_by_two_machines_keeps_each_ones_graph(cache, model, monkeypatch):
    """One MEDCLF_CACHE on an NFS home or a shared volume, two CPUs (or two onnxruntimes): each start evicted the
    other's entry, so every start re-optimized and rewrote 11 MB."""
    from medclf.runtime import optimized

    Classifier(model, reuse_optimized=True)
    [here] = cache.iterdir()
    monkeypatch.setattr(optimized, "cpu_signature", lambda: "another CPU avx2")
    Classifier(model, reuse_optimized=True)
    assert len(list(cache.iterdir())) == 2 and here.is_file()


def test_another_model_copied_over_with_the_same_size_and_time_is_not_served_from_the_old_ones_graph(cache,
                                                                                                      tmp_path):
    """``cp -p``, ``rsync -a`` and tar keep a file's modification time; two exports can have the same size."""
    deployed = tmp_path / "deploy" / "model.onnx"
    deployed.parent.mkdir()
    first, second = (brightness_model(tmp_path / f"{i}.onnx", ModelCard(labels, Preprocess(8, 8, "grey")))
                     for i, labels in enumerate((("dark", "bright"), ("bright", "dark"))))
    assert os.path.getsize(first) == os.path.getsize(second)
    for served in (first, second):
        shutil.copy2(served, deployed)
        os.utime(deployed, ns=(0, 10**18))  # the same time for both
        assert Classifier(deployed, reuse_optimized=True).labels == Classifier(served).labels


def test_entries_of_models_unused_for_a_month_go_when_another_is_written(cache, model, tmp_path):
    """A deleted or moved model leaves its entry; the cache keeps about one graph per model in use."""
    import time

    from medclf.runtime.optimized import UNUSED_DAYS

    Classifier(model, reuse_optimized=True)
    [old] = cache.iterdir()
    month_ago = time.time() - (UNUSED_DAYS + 1) * 86400
    os.utime(old, (month_ago, month_ago))
    Classifier(model, reuse_optimized=True)  # starting from it marks it used
    assert old.stat().st_mtime > month_ago
    os.utime(old, (month_ago, month_ago))
    other = tmp_path / "other.onnx"
    shutil.copy(model, other)
    Classifier(other, reuse_optimized=True)  # a new entry is written: the unused one goes
    assert old not in list(cache.iterdir()) and len(list(cache.iterdir())) == 1


def test_a_damaged_entry_is_made_again(cache, model, blood_cell_images):
    Classifier(model, reuse_optimized=True)
    [entry] = cache.iterdir()
    entry.write_bytes(b"half a graph")
    classifier = Classifier(model, reuse_optimized=True)
    images = batch(classifier, blood_cell_images)
    np.testing.assert_allclose(classifier.predict(images), Classifier(model).predict(images), rtol=0, atol=1e-6)
    assert entry.stat().st_size > 1_000_000


def test_without_a_usable_cache_folder_the_model_still_starts(tmp_path, monkeypatch, model):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be made here")
    monkeypatch.setenv("MEDCLF_CACHE", str(blocker))
    assert Classifier(model, reuse_optimized=True).labels == Classifier(model).labels


def test_without_a_home_directory_the_model_starts_and_an_empty_medclf_cache_is_unset(tmp_path, model,
                                                                                      blood_cell_images):
    """HOME unset and a user id the system does not know (a container run as an arbitrary user): every
    medclf-run failed, blaming the model ("not a loadable ONNX model (Could not determine home directory.)"),
    and MEDCLF_CACHE did not help; an empty MEDCLF_CACHE (``docker run -e MEDCLF_CACHE=``) wrote the cache into
    the working folder."""
    environment = {key: value for key, value in os.environ.items() if key not in ("HOME", "MEDCLF_CACHE")}
    command = ["unshare", "--user", "--map-user=12345", sys.executable, "-m", "medclf.runtime.cli", "--model",
               str(model), str(blood_cell_images[0])]
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--user", "--map-user=12345", "true"],
                                                         capture_output=True).returncode != 0:
        pytest.skip("needs unshare with user namespaces to run as a user with no home directory")
    homeless = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment, cwd=tmp_path)
    assert homeless.returncode == 0, homeless.stderr
    empty = subprocess.run(command[3:], capture_output=True, text=True, timeout=120,
                           env=environment | {"MEDCLF_CACHE": ""}, cwd=tmp_path)
    assert empty.returncode == 0 and not (tmp_path / "ort-optimized").exists()


def test_medclf_run_saves_the_graph_silently_and_answers_the_same_from_it(cache, blood_cell_images):
    """onnxruntime warns that a saved optimized graph suits only this machine; the cache key sees to that, so
    the user does not see the warning."""
    runs = [subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--json", str(blood_cell_images[0])],
                           capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0]
    assert runs[0].stderr == "" and runs[0].stdout == runs[1].stdout
    assert len(list(cache.iterdir())) == 1


def test_a_graph_that_cannot_be_saved_still_starts_the_model(cache, model):
    """Writing the graph fails (here a folder stands where the file would go, as a full disk would fail it)."""
    from medclf.runtime.optimized import _entry

    entry = _entry(model)
    entry.with_name(f"{entry.name}.{os.getpid()}.tmp").mkdir(parents=True)
    assert Classifier(model, reuse_optimized=True).labels == Classifier(model).labels
    assert not entry.exists()
