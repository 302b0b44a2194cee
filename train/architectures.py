"""The model registry: every architecture medclf can train, built the same way.

Each model takes images as float32 pixel values 0–255 (the runtime's uint8, cast) and carries its own
normalisation as its first layer, so the exported graph needs nothing but uint8 pixels.

Transfer-learning models name a ``frozen_until`` layer: everything up to it keeps its ImageNet weights and is
computed once per image (a feature cache), everything after it is trained. On a CPU that is what makes
fine-tuning affordable. ``frozen_until="pool"`` freezes the whole backbone: only the dense head is trained.
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
    summary: str  # what it is, in a few words, for the line a run opens with (:func:`training_plan`)
    full_size: int | None = None  # the input size for images that have this much detail: ImageNet's own 224
    # The smallest side it learns at. ImageNet backbones' features are all but zero below 48 px (MobileNetV2's
    # pooled features on real images: 0.2% non-zero at 28 and 32 px, 21% at 48, 52% at 96; MobileNet 0.25's 2.8%
    # at 32, which it needs at least to build), and a model of them gave every image one probability.
    min_size: int = 8

    def input_size(self, shorter_side: float) -> int:
        """The size images are resized to when no size is given: ``full_size`` for images whose shorter side
        reaches it, else ``default_size``. Measured with MobileNetV2 and no flags, 224 against 160 px: chest
        films (224 px) test AUC 0.966 vs 0.956, blood smears (320x240) TEST 85.2% vs 84.0% (macro AUC 0.952 vs
        0.947); but the same films at 28 px, enlarged, 0.922 vs 0.950 — enlarging past the detail there is costs
        twice the compute and helped nothing."""
        if self.full_size is not None and shorter_side >= self.full_size:
            return self.full_size
        return self.default_size


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


def _as_rgb(x: keras.KerasTensor) -> keras.KerasTensor:
    """ImageNet backbones see three channels: a grey model (``--grey``: one channel in, decoded and fed as such
    by the runtime) repeats its one channel inside the model, as a grey image shown in colour would be."""
    if x.shape[-1] == 3:
        return x
    if x.shape[-1] != 1:
        raise ValueError(f"ImageNet backbones take RGB or grey images, not {x.shape[-1]} channels")
    return layers.Concatenate(name="grey_as_rgb")([x, x, x])


def _backbone_model(application: Callable[..., keras.Model], weights_file: str, scale: float, offset: float,
                    **kwargs: object) -> Callable[[tuple[int, int, int], int, bool], keras.Model]:
    """Normalise → ImageNet backbone (its layers inlined, so they can be split at any layer) → pooled head."""

    def build(shape: tuple[int, int, int], num_classes: int, pretrained: bool) -> keras.Model:
        inputs = keras.Input(shape, name="image")
        x = _as_rgb(layers.Rescaling(scale, offset, name="normalize")(inputs))
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


def _fire(x: keras.KerasTensor, squeeze: int, expand: int, name: str) -> keras.KerasTensor:
    """SqueezeNet's fire module: a 1x1 squeeze, then 1x1 and 3x3 expansions side by side."""
    x = layers.Conv2D(squeeze, 1, use_bias=False, name=f"{name}_squeeze")(x)
    x = layers.ReLU(name=f"{name}_squeeze_relu")(layers.BatchNormalization(name=f"{name}_squeeze_bn")(x))
    wide = layers.Conv2D(expand, 1, activation="relu", name=f"{name}_expand1x1")(x)
    deep = layers.Conv2D(expand, 3, padding="same", activation="relu", name=f"{name}_expand3x3")(x)
    return layers.Concatenate(name=f"{name}_concat")([wide, deep])


def _squeezenet(shape: tuple[int, int, int], num_classes: int, pretrained: bool = False) -> keras.Model:
    """SqueezeNet 1.1's layout (fire modules between three poolings), with batch norm for training from
    scratch on small data; about 0.7 M parameters."""
    inputs = keras.Input(shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="normalize")(inputs)
    x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv1")(x)
    for stage, (squeeze, expand) in enumerate(((16, 64), (32, 128), (48, 192))):
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"maxpool{stage + 1}")(x)
        x = _fire(x, squeeze, expand, f"fire{2 * stage + 2}")
        x = _fire(x, squeeze, expand, f"fire{2 * stage + 3}")
    x = _fire(x, 64, 256, "fire8")
    return keras.Model(inputs, _head(x, num_classes, 0.5), name="squeezenet")


def _two_backbones(shape: tuple[int, int, int], num_classes: int, pretrained: bool) -> keras.Model:
    """The seeds' stacked model: MobileNetV2 and MobileNet (alpha 0.25) side by side on the same image, their
    pooled features concatenated, one dense head. Both backbones stay frozen; only the head is trained."""
    inputs = keras.Input(shape, name="image")
    x = _as_rgb(layers.Rescaling(1 / 127.5, -1.0, name="normalize")(inputs))
    big = keras.applications.MobileNetV2(include_top=False, weights=None, input_tensor=x, alpha=1.0)
    small = keras.applications.MobileNet(include_top=False, weights=None, input_tensor=x, alpha=0.25)
    if pretrained:
        big.load_weights(weights_path(MOBILENET_V2_WEIGHTS))
        small.load_weights(weights_path(MOBILENET_025_WEIGHTS))
    pooled = [layers.GlobalAveragePooling2D(name=f"{b.name}_pool")(b.output) for b in (big, small)]
    x = layers.Concatenate(name="pool")(pooled)
    x = layers.Dropout(0.3, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="two_backbones")


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture("mobilenet_v2", _backbone_model(keras.applications.MobileNetV2, MOBILENET_V2_WEIGHTS,
                                                     1 / 127.5, -1.0, alpha=1.0),
                     160, "block_12_add", 1e-4, "MobileNetV2", full_size=224, min_size=48),
        Architecture("mobilenet_025", _backbone_model(keras.applications.MobileNet, MOBILENET_025_WEIGHTS,
                                                      1 / 127.5, -1.0, alpha=0.25),
                     128, "conv_pw_11_relu", 3e-4, "MobileNet alpha 0.25 (tiny)", min_size=48),
        Architecture("two_backbones", _two_backbones, 160, "pool", 1e-3,
                     "MobileNetV2 and MobileNet 0.25 side by side", min_size=48),
        Architecture("small_cnn", _small_cnn, 128, None, 1e-3, "a small CNN (four conv-BN-pool blocks)"),
        Architecture("squeezenet", _squeezenet, 128, None, 1e-3, "a SqueezeNet-style network (fire modules)"),
    )
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}") from None
