"""Training runs under a tf.distribute strategy: one device by default, mirrored over several where there are."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from medclf.runtime.preprocess import load_image
from medclf.train.distribute import training_devices, training_strategy
from medclf.train.fit import predict
from tests.conftest import needs_weights

# A run on a machine TensorFlow sees as two CPU devices: what "auto" does with two GPUs, here on CPUs.
TWO_DEVICE_RUN = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from medclf.train.fit import FitConfig
from medclf.train.pipeline import Recipe, train
recipe = Recipe(arch="mobilenet_025", image_size=64, val_split=0.3,
                fit=FitConfig(epochs=2, head_epochs=2, augment_views=1))
train(sys.argv[1], sys.argv[2], recipe)
"""


def test_one_device_is_tensorflows_default_strategy_and_unknown_kinds_are_refused():
    assert training_strategy("off").num_replicas_in_sync == 1
    assert len(training_devices()) == 1  # this machine: one CPU device, no GPU
    assert training_strategy("auto").num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="unknown distribution 'mirror'; choose from auto, off"):
        training_strategy("mirror")


def test_a_cluster_configuration_is_not_silently_taken_for_multi_machine_training(monkeypatch, caplog):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}')
    with caplog.at_level(logging.WARNING, logger="medclf.train.distribute"):
        assert training_strategy("auto").num_replicas_in_sync == 1
    assert "training across several machines is not supported" in caplog.text


@needs_weights
def test_a_model_trained_mirrored_over_two_devices_is_an_ordinary_model_that_scores_as_recorded(cataract, tmp_path):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", TWO_DEVICE_RUN, str(cataract), str(run)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["replicas"] == 2
    # loaded here, on one device, it reproduces the validation score the mirrored run recorded
    import keras
    from medclf.rundir import RunDir

    model = keras.models.load_model(run / "model.keras", compile=False)
    val = json.loads((run / "splits.json").read_text())["val"]
    images = np.stack([load_image(path, RunDir(run).preprocess) for path in val["paths"]])
    accuracy = float(np.mean(predict(model, images).argmax(1) == np.array(val["labels"])))
    assert accuracy == pytest.approx(metrics["validation"]["accuracy_at_argmax"])
