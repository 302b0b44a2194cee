"""Grad-CAM (Selvaraju et al. 2017): where in the image the model looked for a class.

The class score's gradient (its logit, before the softmax) with respect to a convolutional feature map, averaged
per channel, weights that map's channels; the positive part of the sum is the heatmap. A binary model's call
compares its two scores with its threshold, so its score is that margin, and the map is centred so that its mean
is the call's margin: a call made below p = 0.5 shows its evidence rather than nothing, as the runtime draws it
(:func:`medclf.runtime.cam.called_maps`). It is drawn over the image exactly as the model saw it (after the run's
own crop and resize), so a reader judges the model, not a different picture.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf

from medclf.export.keras_model import loaded
from medclf.rundir import RunDir
from medclf.runtime.cam import binary_margin, heatmaps, overlay_name, positive_index, write_overlay
from medclf.runtime.decision import Decision, decide
from medclf.runtime.preprocess import ImageError, Preprocess, load_image

from .ensemble import members, resizing


def last_conv_layer(model: keras.Model) -> str:
    """The last layer with a spatial (4-D) output: Grad-CAM's usual choice, the most semantic feature map that
    still knows where things are — before any pooling of it, which holds the same evidence at half the
    resolution (small_cnn's last pooling is 1x1 at 28 px: a one-colour heatmap, where the map it pools is 3x3)."""
    for layer in reversed(model.layers):
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            continue
        if len(layer.output.shape) == 4:
            return layer.name
    raise ValueError(f"model {model.name} has no convolutional feature map to explain")


def explained_layers(model: keras.Model) -> list[str]:
    """The feature maps Grad-CAM reads: those the model pools into the features its head reads where there are
    several (``two_backbones``: MobileNetV2's and MobileNet 0.25's, side by side — the last map alone is the
    small branch, 256 of the 1,536 features), else the last one."""
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    pooled = [layer.name for layer in model.layers for pool in pools if layer.output is pool.input]
    return pooled if len(pooled) > 1 else [last_conv_layer(model)]


def _most_probable(probabilities: np.ndarray) -> np.ndarray:
    return probabilities.argmax(axis=1)


class GradCam:
    """Heatmaps for one model, with the gradient graph built once.

    An ensemble (``medclf ensemble``) averages its members' probabilities; each member's last feature map is
    weighted by the gradients of its own class score, brought to the largest member map's size and summed —
    Grad-CAM over all the members' feature maps at once. A model whose head reads several branches' pooled maps
    (:func:`explained_layers`) is explained at all of them the same way."""

    def __init__(self, model: keras.Model, layer: str | None = None, labels: Sequence[str] | None = None,
                 decision: Decision | None = None) -> None:
        nested = members(model)
        # a binary model's call compares its classes' scores with its threshold: that margin is explained
        self._binary = (tuple(labels), decision) if labels is not None and len(labels) == 2 else None
        if nested and layer is not None:
            raise ValueError(f"model {model.name} averages {len(nested)} models: it is explained at each one's "
                             "last feature map, not at a named layer")
        if layer is not None and len(shape := model.get_layer(layer).output.shape) != 4:
            raise ValueError(f"layer {layer} has no spatial feature map to explain (its output is "
                             f"{list(shape)}); give a convolutional layer, or none for the last one")
        self.layer = layer or (None if nested else ", ".join(explained_layers(model)))
        if not nested and all(model.get_layer(name).output.shape[1:3] == (1, 1) for name in self.layer.split(", ")):
            raise ValueError(f"{self.layer}'s feature map is 1x1 at this input size: its heatmap would be one colour; "
                             "give --layer an earlier convolutional layer")
        # per model whose probabilities are averaged: its resize of the image (or None),
        # image → [*maps, probabilities, what its head reads], and its softmax head (see _with_maps)
        if nested:
            shape = model.input_shape[1:]
            self._parts = [(resizing(member, shape), *_with_maps(member, explained_layers(member)))
                           for member in nested]
        else:
            self._parts = [(None, *_with_maps(model, [layer] if layer else explained_layers(model)))]

    def __call__(self, images: np.ndarray, classes: Sequence[int] | None = None,
                 choose: Callable[[np.ndarray], np.ndarray] = _most_probable) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps ``[N, H, W]`` in 0..1 at the input size, and probabilities ``[N, classes]``, for uint8 images.
        ``classes`` picks the class explained per image; without it, ``choose`` picks from the probabilities
        of the same forward pass (default: the most probable)."""
        x = tf.cast(images, tf.float32)
        with tf.GradientTape() as tape:
            outputs = [part(x if resize is None else resize(x), training=False) for resize, part, _ in self._parts]
            features = [maps for output in outputs for maps in output[:-2]]
            probabilities = tf.add_n([output[-2] for output in outputs]) / len(outputs)
            chosen = np.asarray(classes if classes is not None else choose(probabilities.numpy()))
            score = tf.add_n([self._score(_class_scores(head, output[-1], output[-2]), head, chosen)
                              for (_, _, head), output in zip(self._parts, outputs)])
        cams = [tf.reduce_sum(tf.reduce_mean(gradients, axis=(1, 2), keepdims=True) * maps, axis=-1).numpy()
                for gradients, maps in zip(tape.gradient(score, features), features)]
        cam = _summed(cams)
        if self._binary is not None:  # centred on the call's margin per location, as the runtime's CAM is
            margin = score.numpy() if len(self._parts) == 1 else self._called_margin(probabilities.numpy(), chosen)
            cam = cam - cam.mean(axis=(1, 2), keepdims=True) + margin[:, None, None] / np.prod(cam.shape[1:])
        return heatmaps(cam, *images.shape[1:3]), probabilities.numpy()

    def _called_margin(self, probabilities: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """An ensemble's margin for the chosen class, from the probabilities it averages (its members' own
        margins can sum below 0 for a call the average makes)."""
        labels, decision = self._binary
        log_p = np.log(np.clip(probabilities.astype(np.float64), 1e-12, 1.0))
        return self._signs(chosen) * binary_margin(log_p, labels, decision)

    def _score(self, scores: tf.Tensor, head: keras.layers.Dense | None, chosen: np.ndarray) -> tf.Tensor:
        """What is differentiated per image: the chosen class's score, or for a binary model how far its scores
        lie on the chosen class's side of the threshold (:func:`~medclf.runtime.cam.binary_margin`; from a head's
        probabilities, their logarithms)."""
        if self._binary is None:
            return tf.gather(scores, chosen, axis=1, batch_dims=1)
        labels, decision = self._binary
        logits = scores if head is not None else tf.math.log(tf.maximum(scores, 1e-12))
        return self._signs(chosen).astype(np.float32) * binary_margin(logits, labels, decision)

    def _signs(self, chosen: np.ndarray) -> np.ndarray:
        """+1 where a binary model's positive class is the one explained, -1 where the other is."""
        labels, decision = self._binary
        return np.where(chosen == positive_index(labels, decision), 1.0, -1.0)


def _with_maps(model: keras.Model, layers: list[str]) -> tuple[keras.Model, keras.layers.Dense | None]:
    """``model`` answering ``[*maps, probabilities, what its softmax head reads]``, and that head (None where the
    model ends otherwise: its probabilities are then the class scores)."""
    head = model.layers[-1]
    softmax = isinstance(head, keras.layers.Dense) and head.activation is keras.activations.softmax
    read = head.input if softmax else model.output
    return keras.Model(model.input, [*(_output_in(model, layer) for layer in layers), model.output, read]), \
        head if softmax else None


def _output_in(model: keras.Model, name: str) -> keras.KerasTensor:
    """Layer ``name``'s output in ``model``'s graph. A backbone used as a layer (a tutorial's
    ``Sequential([base, GlobalAveragePooling2D(), Dense(...)])``) answers ``.output`` with its own graph's output,
    which the outer model's input does not reach ("Output with path 0 is not connected"): its call in the outer
    graph, its last inbound node, is taken instead."""
    layer = model.get_layer(name)
    if isinstance(layer, keras.Model) and layer._inbound_nodes:  # noqa: SLF001 — Keras keeps the calls there
        return layer._inbound_nodes[-1].output_tensors[0]  # noqa: SLF001
    return layer.output


def _class_scores(head: keras.layers.Dense | None, read: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """The class scores Grad-CAM differentiates: the logits before the softmax, as in the paper — a probability
    that rounds to 1 in float32 has no gradient left, and its heatmap came out blank."""
    return probabilities if head is None else tf.matmul(read, head.kernel) + head.bias


def _summed(cams: list[np.ndarray]) -> np.ndarray:
    """Coarse maps ``[N, h, w]`` of several sizes summed at the largest's size (one map: itself)."""
    if len(cams) == 1:
        return cams[0]
    height, width = max((c.shape[1:] for c in cams), key=lambda shape: shape[0] * shape[1])
    return sum(np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in c]) for c in cams)


@dataclass(frozen=True)
class Explanation:
    path: str
    label: str | None = None  # the class the heatmap explains
    probability: float | None = None
    heatmap: Path | None = None
    error: str | None = None


def explain_files(model_path: str | os.PathLike[str], paths: Sequence[str], out: str | os.PathLike[str],
                  target: str | None = None, layer: str | None = None) -> Iterator[Explanation]:
    """Write ``OUT/<name>-<path hash>.<class>.gradcam.png`` (``.gradcam-<layer>.png`` at a ``layer`` asked for, so
    the two stand side by side) per image for the called class (the run's own
    decision) or ``target``; a file that cannot be read yields an error and the rest go on."""
    if Path(model_path).suffix.lower() == ".onnx":
        raise ValueError(f"{model_path}: an exported file; medclf explain takes RUN_DIR/model.keras (an exported "
                         "file draws its heatmaps itself: medclf export --cam, then medclf-run --cam DIR)")
    run = RunDir.of_model(model_path)
    labels, preprocess, decision = run.labels, run.preprocess, run.decision
    if target is not None and target not in labels:
        raise ValueError(f"class {target!r} is not one of the model's labels {list(labels)}")
    cam = GradCam(loaded(Path(model_path), len(labels), preprocess.shape), layer, labels, decision)
    kind = "gradcam" if layer is None else f"gradcam-{layer.replace('/', '_')}"  # beside the default's, not over it
    return _explain(cam, paths, Path(out), labels, preprocess, decision, target, kind)


def _explain(cam: GradCam, paths: Sequence[str], out: Path, labels: tuple[str, ...], preprocess: Preprocess,
             decision: Decision | None, target: str | None, kind: str = "gradcam") -> Iterator[Explanation]:
    classes = [labels.index(target)] if target is not None else None

    def call(probabilities: np.ndarray) -> np.ndarray:  # the call the runtime would make
        return decide(probabilities, labels, decision)

    for path in paths:
        try:
            image = load_image(path, preprocess)
        except ImageError as exc:
            yield Explanation(path=path, error=exc.reason)
            continue
        maps, probabilities = cam(image[None], classes, call)
        chosen = classes[0] if classes is not None else int(call(probabilities)[0])
        destination = out / overlay_name(path, labels[chosen], kind)
        if (refused := write_overlay(destination, image, maps[0])) is not None:
            yield Explanation(path=path, error=refused)
            continue
        yield Explanation(path, labels[chosen], float(probabilities[0, chosen]), destination)
