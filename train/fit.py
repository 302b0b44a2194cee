"""Fitting a registry model on uint8 image arrays, with augmentation in the input pipeline only.

Two paths, one outcome (the full Keras model with its best validation weights):
- models with a frozen part (``Architecture.frozen_until``) compute that part once per image — over the
  original and ``augment_views`` augmented copies — and train the rest on the cached features;
- models without one train end to end, augmenting every batch in a ``tf.data`` pipeline.
Augmentation never enters the saved model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from sklearn.utils.class_weight import compute_class_weight

from .architectures import Architecture


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float | None = None  # None: the architecture's own
    patience: int = 6  # epochs without validation improvement before stopping
    augment_views: int = 2  # augmented copies per training image, for the cached-feature path
    augment: bool = True
    balance_classes: bool = True
    seed: int = 0


def make_augmenter(seed: int) -> keras.Sequential:
    """Random flips, rotation, zoom, shift and brightness on 0–255 float images."""
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
        layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
        layers.RandomTranslation(0.05, 0.05, fill_mode="reflect", seed=seed + 3),
        layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 4),
    ], name="augment")


def fit(model: keras.Model, arch: Architecture, train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray], config: FitConfig, log_csv: Path) -> keras.callbacks.History:
    """Train ``model`` in place; it ends with the weights of its best validation epoch."""
    keras.utils.set_random_seed(config.seed)
    callbacks = [
        keras.callbacks.EarlyStopping("val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.3, patience=max(1, config.patience // 2)),
        keras.callbacks.CSVLogger(str(log_csv)),
    ]
    class_weight = _class_weights(train[1], model.output_shape[-1]) if config.balance_classes else None
    if arch.frozen_until is not None:
        trainable, train_data, val_data = _cached_features(model, arch.frozen_until, train, val, config)
    else:
        trainable, train_data, val_data = model, _augmented_dataset(train, config), _dataset(val, config)
    trainable.compile(keras.optimizers.Adam(config.learning_rate or arch.learning_rate), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    return trainable.fit(train_data, validation_data=val_data, epochs=config.epochs, callbacks=callbacks,
                         class_weight=class_weight, verbose=2)


def _cached_features(model: keras.Model, frozen_until: str, train: tuple[np.ndarray, np.ndarray],
                     val: tuple[np.ndarray, np.ndarray], config: FitConfig):
    """Split the model at ``frozen_until``; return the trainable rest and its cached-feature datasets."""
    cut = model.get_layer(frozen_until).output
    frozen = keras.Model(model.input, cut, name="frozen")
    rest = keras.Model(cut, model.output, name="trainable")
    for layer in rest.layers:  # fine-tuning practice: batch-norm statistics stay those of ImageNet
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    images, labels = train
    views = [_predict(frozen, images)]
    if config.augment:
        augmenter = make_augmenter(config.seed)
        views += [_predict(frozen, images, augmenter) for _ in range(config.augment_views)]
    train_x = np.concatenate(views)
    train_y = np.tile(labels, len(views))
    train_data = (tf.data.Dataset.from_tensor_slices((train_x, train_y))
                  .shuffle(len(train_x), seed=config.seed).batch(config.batch_size).prefetch(2))
    val_data = tf.data.Dataset.from_tensor_slices((_predict(frozen, val[0]), val[1])).batch(256)
    return rest, train_data, val_data


def _predict(frozen: keras.Model, images: np.ndarray, augmenter: keras.Sequential | None = None,
             batch: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch):
        x = tf.cast(images[start:start + batch], tf.float32)
        if augmenter is not None:
            x = augmenter(x, training=True)
        out.append(np.asarray(frozen(x, training=False), dtype=np.float16))
    return np.concatenate(out)


def _dataset(data: tuple[np.ndarray, np.ndarray], config: FitConfig) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(data).batch(config.batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(2)


def _augmented_dataset(data: tuple[np.ndarray, np.ndarray], config: FitConfig) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices(data).shuffle(len(data[0]), seed=config.seed)
    dataset = dataset.batch(config.batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    if config.augment:
        augmenter = make_augmenter(config.seed)
        dataset = dataset.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(2)


def _class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)} | {
        c: 1.0 for c in range(num_classes) if c not in present}
