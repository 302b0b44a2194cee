"""The model registry: every architecture medclf can train, built the same way.

Each model takes images as float32 pixel values 0–255 (the runtime's uint8, cast) and carries its own
normalisation as its first layer, so the exported graph needs nothing but uint8 pixels.

Transfer-learning models name a ``frozen_until`` layer: everything up to it keeps its ImageNet weights and is
computed once per image (a feature cache), everything after it is trained. On a CPU that is what makes
fine-tuning affordable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

MOBILENET_V2_WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
MOBILENET_025_WEIGHTS = "mobilenet_2_5_224_tf_no_top.h5"


class WeightsNotFoundError(FileNotFoundError):
    """ImageNet weights needed offline are missing; the message names the file and KERAS_HOME."""


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[tuple[int, int, int], int, bool], keras.Model]
    default_size: int
    frozen_until: str | None  # last layer kept frozen (and cached) during training; None = train everything
    learning_rate: float  # Adam's rate: low when fine-tuning ImageNet layers, higher from scratch
    summary: str


def weights_path(filename: str) -> Path:
    """Where Keras keeps ImageNet weights offline: ``$KERAS_HOME/models/<official file name>``."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    path = home / "models" / filename
    if not path.is_file():
        raise WeightsNotFoundError(
            f"ImageNet weights {filename} not found in {path.parent}: set KERAS_HOME to the folder whose "
            f"models/ holds it (e.g. ../shared/keras), or train with --no-pretrained; nothing is downloaded")
    return path


def _head(features: keras.KerasTensor, num_classes: int, dropout: float) -> keras.KerasTensor:
    x = layers.GlobalAveragePooling2D(name="pool")(features)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)


def _backbone_model(application: Callable[..., keras.Model], weights_file: str, scale: float, offset: float,
                    **kwargs: object) -> Callable[[tuple[int, int, int], int, bool], keras.Model]:
    """Normalise → ImageNet backbone (its layers inlined, so they can be split at any layer) → pooled head."""

    def build(shape: tuple[int, int, int], num_classes: int, pretrained: bool) -> keras.Model:
        if shape[2] != 3:
            raise ValueError("ImageNet backbones take RGB images; use color='rgb'")
        inputs = keras.Input(shape, name="image")
        x = layers.Rescaling(scale, offset, name="normalize")(inputs)
        backbone = application(include_top=False, weights=None, input_tensor=x, **kwargs)
        if pretrained:
            # Any input size loads the 224 file's weights: convolutions do not depend on the image size.
            backbone.load_weights(weights_path(weights_file))
        return keras.Model(inputs, _head(backbone.output, num_classes, 0.2), name=backbone.name)

    return build


def _small_cnn(shape: tuple[int, int, int], num_classes: int, pretrained: bool = False) -> keras.Model:
    """The seed tutorials' conv-pool stack, with batch norm and global pooling so any input size works."""
    inputs = keras.Input(shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="normalize")(inputs)
    for i, filters in enumerate((32, 64, 128, 256)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    return keras.Model(inputs, _head(x, num_classes, 0.3), name="small_cnn")


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture("mobilenet_v2", _backbone_model(keras.applications.MobileNetV2, MOBILENET_V2_WEIGHTS,
                                                     1 / 127.5, -1.0, alpha=1.0),
                     160, "block_12_add", 1e-4, "MobileNetV2 (ImageNet), blocks 13-16 fine-tuned"),
        Architecture("mobilenet_025", _backbone_model(keras.applications.MobileNet, MOBILENET_025_WEIGHTS,
                                                      1 / 127.5, -1.0, alpha=0.25),
                     128, "conv_pw_11_relu", 3e-4, "MobileNet alpha 0.25 (ImageNet), last block fine-tuned; tiny"),
        Architecture("small_cnn", _small_cnn, 128, None, 1e-3, "four conv-BN-pool blocks from scratch"),
    )
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}") from None
