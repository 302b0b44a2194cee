"""Where training runs: on one device, or mirrored over several with ``tf.distribute`` (DESIGN.md: "training
scales with tf.distribute strategies").

``MirroredStrategy`` keeps a copy of every variable on each device, splits each batch among them and sums the
gradients, so ``batch_size`` stays the global batch and the recipe means the same on one GPU or eight. Every
model training builds — the network, the head on cached features, the fine-tuned top — must be made inside
the strategy's scope (Keras binds a model to the strategy it was created under), hence one scope around
building and fitting.
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

log = logging.getLogger(__name__)

DISTRIBUTE = ("auto", "off")


def training_strategy(kind: str = "auto") -> tf.distribute.Strategy:
    """``auto``: mirrored over the machine's GPUs when it has two or more — or, with no GPU, over CPU devices
    where TensorFlow was configured with several (``tf.config.set_logical_device_configuration``) — else one
    device. ``off``: one device, always. One device is TensorFlow's default strategy, which adds nothing."""
    if kind not in DISTRIBUTE:
        raise ValueError(f"unknown distribution {kind!r}; choose from {', '.join(DISTRIBUTE)}")
    if os.environ.get("TF_CONFIG"):  # workers would each decide their own time-budget cuts: they must agree
        log.warning("TF_CONFIG is set, but training across several machines is not supported: this machine "
                    "trains alone")
    devices = training_devices() if kind == "auto" else []
    if len(devices) < 2:
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy(devices)


def training_devices() -> list[str]:
    """The devices ``auto`` would mirror over: every GPU, or every CPU device where there is no GPU."""
    gpus = tf.config.list_logical_devices("GPU")
    return [device.name for device in gpus or tf.config.list_logical_devices("CPU")]
