"""How unlike the training images an image is: a distance on the model's own features, carried in the graph.

A classifier answers whatever it is given. Before this, a chest film given to the blood-cell model was called a
cell and a grey smear given to that colour model MONOCYTE at 0.64, without a word. Each exported file now has a
second output, ``unfamiliarity``, that the runtime turns into a warning.

How (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples"): at several depths
of the network — the image's own channel means, the pooled feature map at the end of each stage from a quarter
of the image's side down, and the features the classifier reads — the Mahalanobis distance to the nearest
class's mean over the training images, with one covariance shared by the classes (Ledoit-Wolf shrinkage: a
thousand images estimate a 1,280-dimensional covariance). Each depth's distance is divided by the 99.5th
percentile of its distances on held-out images, the largest of these ratios is taken, and that is divided by
its own 99.5th percentile on the held-out images: above 1, the image is farther from the training images than
199 in 200 held-out ones are. Shallow depths catch a wrong look (grey for colour, another exposure), deep ones
a wrong subject; the classifier's input alone let through 55% of the chest films given to a blood model whose
features had been fine-tuned, and 83% of its smears made grey.

Measured (share of 600 images beyond 1): the demo's blood model — blood TEST (other cells) 1.5%, the same
smears made grey 94%, chest films 100%, cataract photos 98%; the chest preset — its test hospital's films
0.2%, blood smears and eye photos 100%, films blurred (σ 2 px) 98%.

The arithmetic is the graph's own (:func:`unfamiliarity`): fitting runs it eagerly on the held-out features, so
the threshold and the exported file cannot compute two different things.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from sklearn.covariance import LedoitWolf

from medclf.runtime.modelcard import FAMILIARITY_MIN_IMAGES
from medclf.runtime.modelcard import FAMILIARITY_QUANTILE as QUANTILE

FIT_IMAGES = 1024  # training images the class means and covariances are estimated on, at most
MIN_FIT_IMAGES = 16  # and at least (shrinkage estimates a covariance from few; from one or two, nothing)
MAX_DIRECTIONS = 256  # principal directions of a level's covariance kept apart; the rest share one variance
PIXELS = "pixels"  # the level of the image itself: each channel's mean
HEAD = "probabilities"  # the level of the classifier's input (the layer it feeds)
DESCRIPTION = ("how unlike the training images each image is [batch, 1]: above 1, farther from them (Mahalanobis "
               "distance at several depths of the network) than 99.5% of held-out images")


class FamiliarityUnavailable(ValueError):
    """The model has no dense head whose input the features can be read from, or too few held-out images."""


@dataclass(frozen=True)
class Level:
    """One depth: the layer whose pooled output it reads; the training features' mean, where distances start;
    their shared covariance as its ``MAX_DIRECTIONS`` principal directions, each over its standard deviation
    (``projection``), with the class means projected, and one over the mean variance of the directions left
    out (0 where none are); and the distance held-out images stay under 99.5% of the time. Directions rather
    than the full inverse: the 1,280 features MobileNetV2's classifier reads would take a 6.5 MB matrix, as much
    again as the model."""

    layer: str
    centre: np.ndarray  # [features], float32
    projection: np.ndarray  # [features, kept], float32: orthonormal directions over their standard deviations
    class_centres: np.ndarray  # [classes, kept], float32
    spread: np.ndarray  # [kept], float32: the directions' standard deviations
    residual_weight: float
    scale: float


@dataclass(frozen=True)
class Familiarity:
    """What the graph needs to say how unlike the training images an image is, and how it was set."""

    levels: tuple[Level, ...]
    threshold: float
    record: dict


def level_names(model: keras.Model) -> list[str]:
    """The levels read: the image's channel means (:data:`PIXELS`), then the model's :func:`feature_layers` — for
    an ensemble (``medclf ensemble``: whole models averaged), each member's, named ``<member>/<layer>``."""
    parts = members(model)
    if not parts:
        return [PIXELS, *feature_layers(model)]
    return [PIXELS] + [f"{member.name}/{layer}" for member in parts for layer in feature_layers(member)]


def members(model: keras.Model) -> list[keras.Model]:
    """The models an ensemble nests whole and averages into ``probabilities``; [] for any other model."""
    head = next((layer for layer in model.layers if layer.name == HEAD), None)
    return [layer for layer in model.layers if isinstance(layer, keras.Model)] \
        if isinstance(head, keras.layers.Average) else []


def feature_layers(model: keras.Model) -> list[str]:
    """The layers whose pooled outputs are read: the last feature map at each spatial size of the network from
    a quarter of the image's side down (larger maps cost the most to pool and told least apart), except the
    smallest (the classifier reads its pool), then the classifier's own input. Raises
    :class:`FamiliarityUnavailable` without one dense head."""
    head = next((layer for layer in model.layers if layer.name == HEAD), None)
    if not isinstance(head, keras.layers.Dense):
        raise FamiliarityUnavailable(f"model {model.name} has no dense head named {HEAD!r} to read features from")
    if head.units != model.output_shape[-1]:  # a sigmoid unit served as [1 - p, p]: no class means to measure by
        raise FamiliarityUnavailable(f"model {model.name}'s head is one sigmoid unit, served as two classes")
    by_size: dict[int, str] = {}
    for layer in model.layers:
        shape = layer.output.shape
        if len(shape) == 4 and shape[1] and not isinstance(layer, keras.layers.ZeroPadding2D):
            by_size[shape[1]] = layer.name
    sizes = sorted(by_size, reverse=True)
    return [by_size[size] for size in sizes[:-1] if size <= model.input.shape[1] / 4] + [HEAD]


def with_features(model: keras.Model, levels: list[str]) -> keras.Model:
    """``float image → [probabilities, one array per level]``, each network run once. For :data:`PIXELS` the
    channel means, for :data:`HEAD` the classifier's input, for any other layer its pooled feature map; an
    ensemble's members are called as its graph calls them (one smaller than the image on it resized, bilinear)
    and their probabilities averaged, so the file's probabilities are the ensemble's."""
    parts = members(model)
    if not parts:
        return keras.Model(model.input, [model.output, *_feature_tensors(model, levels)])
    image = keras.Input(model.input.shape[1:], name="image")
    probabilities, features = [], {PIXELS: keras.layers.GlobalAveragePooling2D(name="familiarity_pixels")(image)}
    for member in parts:
        own = [name.split("/", 1)[1] for name in levels if name.startswith(f"{member.name}/")]
        size = tuple(member.input.shape[1:3])
        view = image if size == tuple(image.shape[1:3]) else keras.layers.Resizing(*size)(image)
        member_probabilities, *member_features = tf.nest.flatten(with_features(member, own)(view))
        probabilities.append(member_probabilities)
        features |= {f"{member.name}/{name}": tensor for name, tensor in zip(own, member_features)}
    averaged = keras.layers.Average(name=HEAD)(probabilities)
    return keras.Model(image, [averaged, *(features[name] for name in levels)], name=f"{model.name}_features")


def _feature_tensors(model: keras.Model, levels: list[str]) -> list[keras.KerasTensor]:
    outputs = []
    for name in levels:
        if name == PIXELS:
            outputs.append(keras.layers.GlobalAveragePooling2D(name="familiarity_pixels")(model.input))
        elif name == HEAD:
            outputs.append(model.get_layer(name).input)
        else:
            pool = keras.layers.GlobalAveragePooling2D(name=f"familiarity_{name}")
            outputs.append(pool(model.get_layer(name).output))
    return outputs


def unfamiliarity(features: list[tf.Tensor], levels: tuple[Level, ...], threshold: float) -> tf.Tensor:
    """``[batch, 1]``: the largest of the levels' distances, each over its scale, over ``threshold`` (see the
    module docstring). The same function in the exported graph and, eagerly, where it is fitted."""
    ratios = [_nearest_distance(f, level) * np.float32(1 / (level.scale * threshold))
              for f, level in zip(features, levels)]
    return tf.reduce_max(tf.concat(ratios, axis=1), axis=1, keepdims=True)


def _nearest_distance(features: tf.Tensor, level: Level) -> tf.Tensor:
    """Squared Mahalanobis distance ``[batch, 1]`` to the nearest class mean: along the kept directions each
    offset over its standard deviation; what lies outside them (measured from the mean of all the training
    features: the classes differ along the kept directions) over their mean variance. As few graph nodes as
    it takes: at batch 1 each costs about as much as its arithmetic."""
    offsets = tf.cast(features, tf.float32) - tf.constant(level.centre)
    projected = tf.matmul(offsets, tf.constant(level.projection))
    inside = tf.reduce_min(tf.reduce_sum(tf.square(projected[:, None, :] - tf.constant(level.class_centres)), axis=2),
                           axis=1, keepdims=True)
    if not level.residual_weight:
        return inside
    along = tf.reduce_sum(tf.square(projected * tf.constant(level.spread)), axis=1, keepdims=True)
    outside = tf.reduce_sum(tf.square(offsets), axis=1, keepdims=True) - along
    return inside + tf.maximum(outside, 0.0) * np.float32(level.residual_weight)


def probabilities_and_levels(model: keras.Model, images: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    """``[probabilities, one array per level of level_names(model)]`` for uint8 ``images``, from one Keras pass
    (export takes its reference probabilities from the pass that gives the held-out images' features).
    Raises :class:`FamiliarityUnavailable` without one dense head."""
    return _features(with_features(model, level_names(model)), images, batch)


def fit(model: keras.Model, training: np.ndarray, labels: np.ndarray | None, held_out: np.ndarray,
        batch: int = 32, held_out_features: list[np.ndarray] | None = None) -> Familiarity:
    """Class means and shared covariances on ``training`` uint8 images (one mean where ``labels`` are unknown),
    scales and threshold on ``held_out`` ones (:data:`FAMILIARITY_MIN_IMAGES` at least), whose
    :func:`probabilities_and_levels` are computed unless given."""
    if len(held_out) < FAMILIARITY_MIN_IMAGES:
        raise FamiliarityUnavailable(f"{len(held_out)} images to set its threshold on place no 99.5th percentile "
                                     f"(at least {FAMILIARITY_MIN_IMAGES})")
    if len(training) < MIN_FIT_IMAGES:  # one image left no level with a spread: a TensorFlow traceback
        raise FamiliarityUnavailable(f"{len(training)} training images to measure it from estimate no spread of "
                                     f"their features (at least {MIN_FIT_IMAGES})")
    names = level_names(model)
    extract = with_features(model, names)
    fitted = _features(extract, training, batch)[1:]
    held = (held_out_features or _features(extract, held_out, batch))[1:]
    classes = np.zeros(len(training), int) if labels is None else labels
    levels = []
    kept_features = []
    for name, train_f, held_f in zip(names, fitted, held):
        level = _level(name, train_f.astype(np.float64), classes)
        scale = float(np.quantile(_nearest_distance(held_f, level).numpy()[:, 0], QUANTILE))
        if scale > 0:  # a level whose features never vary (a dead layer) tells nothing apart
            levels.append(dataclasses.replace(level, scale=scale))
            kept_features.append(held_f)
    levels = tuple(levels)
    threshold = float(np.quantile(unfamiliarity(kept_features, levels, 1.0).numpy()[:, 0], QUANTILE))
    return Familiarity(levels, threshold, {
        "method": "Mahalanobis distance to the nearest class mean, shared Ledoit-Wolf covariance, at each level "
                  "over its 99.5th percentile on held-out images; the largest, over its own 99.5th percentile",
        "levels": [level.layer for level in levels], "fitted_on_images": len(training),
        "threshold_on_images": len(held_out),
        "quantile": QUANTILE})


def _features(extract: keras.Model, images: np.ndarray, batch: int) -> list[np.ndarray]:
    parts = [extract.predict_on_batch(images[i:i + batch].astype(np.float32)) for i in range(0, len(images), batch)]
    return [np.concatenate([np.asarray(part[k]) for part in parts]) for k in range(len(parts[0]))]


def _level(layer: str, features: np.ndarray, classes: np.ndarray) -> Level:
    """The mean of ``features`` and their classes' shared covariance — Ledoit-Wolf's, shrunk towards a multiple of
    the identity as far as the images leave it uncertain, so that it can be inverted — as its principal
    directions (scale still to be set)."""
    present = np.unique(classes)
    means = np.stack([features[classes == c].mean(axis=0) for c in present])
    covariance = LedoitWolf(assume_centered=True).fit(features - means[np.searchsorted(present, classes)]).covariance_
    variances, directions = np.linalg.eigh(covariance)  # ascending
    kept = min(MAX_DIRECTIONS, len(variances))
    spread = np.sqrt(variances[::-1][:kept])
    projection = directions[:, ::-1][:, :kept] / spread
    centre = features.mean(axis=0)
    left_out = variances[:len(variances) - kept]
    return Level(layer, centre.astype(np.float32), projection.astype(np.float32),
                 ((means - centre) @ projection).astype(np.float32), spread.astype(np.float32),
                 float(1 / left_out.mean()) if len(left_out) else 0.0, scale=1.0)
