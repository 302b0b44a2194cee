"""A Keras model as export takes it, whoever trained it: loaded, one output, a probability per class.

Users come from Keras tutorials with models medclf did not train, and such models fail in ways a run's never
do: a ``Lambda`` whose function was not saved, a ``Sequential`` never built, an auxiliary second output, the
tutorials' binary head (one sigmoid unit), a head left as logits (``from_logits=True``). Each is said here in one
line naming the file, or made right where that is unambiguous (a sigmoid unit's ``p`` is the second class's
probability: ``[1 - p, p]``, as Keras' folder datasets number the classes in sorted order).
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
from scipy.optimize import linear_sum_assignment

from medclf.rundir import LABELS, PREPROCESS

# Layers that put pixels on the scale a network was trained at.
SCALING = (keras.layers.Rescaling, keras.layers.Normalization, keras.layers.Lambda)
# A labels.json whose order's balanced accuracy is this far below another order's, on at least MIN_LABELLED
# labelled images, is taken for a misordered one.
MISORDERED, MIN_LABELLED = 0.25, 20
# How far from 1 a row of probabilities may sum (softmax in float32 is exact to ~1e-6; FP16 heads to ~1e-3).
SUM_TOLERANCE = 1e-3


def loaded(path: Path, classes: int, shape: tuple[int, int, int] | None = None) -> keras.Model:
    """The model at ``path``, answering ``classes`` probabilities per image of ``shape`` (HWC, preprocess.json's:
    checked where the model fixes it); ValueError naming the file and the likely fix where it cannot."""
    if path.suffix == ".keras" and _first_bytes(path) == b"\x89HDF":  # Keras reads the name, not the bytes
        raise ValueError(f"{path}: an HDF5 (.h5) file under a .keras name, which Keras will not read: name it "
                         f"{path.with_suffix('.h5').name}, or save the model again as .keras")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 — Keras raises TypeError, ValueError, AttributeError... by layer
        hint = ("; a Lambda layer's function is not saved with the model: scale pixels with a Rescaling layer "
                "instead" if "Lambda" in str(exc) or "Could not locate function" in str(exc) else "")
        raise ValueError(f"{path}: Keras cannot load it ({type(exc).__name__}: {_first_line(exc)}){hint}") from None
    if not getattr(model, "inputs", None):  # a Sequential fitted without an Input: nothing can trace it
        raise ValueError(f"{path}: the model has no defined input (a Sequential model built without "
                         "keras.Input(shape)): rebuild it with an Input layer and load its weights")
    if isinstance(model, keras.Sequential):
        model = _functional(model, path, shape)
    if len(model.outputs) != 1:
        shapes = ", ".join(f"{tensor.name} {list(tensor.shape[1:])}" for tensor in model.outputs)
        raise ValueError(f"{path}: the model has {len(model.outputs)} outputs ({shapes}); medclf serves one, the "
                         "class probabilities: save a model whose output is that one")
    if shape is not None and (problem := _input_problem(model, shape)):
        raise ValueError(f"{path.parent / PREPROCESS}: {problem}")
    if _scales_its_pixels(model) is False:
        print(f"warning: {path}: its pixels (0-255) reach its first layer with weights unscaled; a model trained on "
              "scaled images (x / 255 or preprocess_input in the data pipeline) answers wrong on them — put that "
              "scaling inside the model (a Rescaling layer) before exporting", file=sys.stderr)
    width = model.output_shape[-1]
    if width == 1 and classes == 2:  # the tutorials' binary head: Dense(1, activation="sigmoid")
        ending = _ending(model)
        if ending != "sigmoid":  # a softmax over one unit answers 1 for every image; no activation, a logit
            raise ValueError(f"{path}: its one output unit ends in {ending}, not a sigmoid: medclf serves a sigmoid "
                             "unit's probability (Dense(1, activation='sigmoid'))")
        p = model.outputs[0]  # layers of names of their own: keras.ops' "subtract" met preprocess_input's
        q = keras.layers.Rescaling(-1.0, offset=1.0, name="medclf_one_minus_p")(p)
        return keras.Model(model.inputs, keras.layers.Concatenate(name="medclf_two_classes")([q, p]),
                           name=model.name)
    if width != classes:  # labels.json copied from another run
        raise ValueError(f"{path.parent / LABELS} names {classes} classes and the model answers {width}: it "
                         "is not this model's run folder")
    return model


def check_probabilities(path: Path, probabilities: np.ndarray) -> None:
    """ValueError unless every row is a probability per class (each in [0, 1], summing to 1): a logits head was
    exported, verified 100% against itself and served "LYMPHOCYTE 0.320" from rows summing to 0.53."""
    sums = probabilities.sum(axis=1)
    if len(probabilities) and (probabilities.min() < -1e-6 or probabilities.max() > 1 + 1e-6
                               or np.abs(sums - 1).max() > SUM_TOLERANCE):
        raise ValueError(f"{path}: the model's outputs are not probabilities (from {probabilities.min():.3g} to "
                         f"{probabilities.max():.3g}, rows summing to {sums.min():.3g}-{sums.max():.3g}): end it with "
                         "a softmax (trained with from_logits=True, it gives logits)")


def check_label_order(path: Path, classes: tuple[str, ...], labels: np.ndarray | None, calls: np.ndarray) -> None:
    """ValueError where the model's ``calls`` on labelled images fit another order of ``classes`` far better than
    labels.json's — a hand-written labels.json in the wrong order (["PNEUMONIA", "NORMAL"]) was exported, verified
    100% and served every call inverted. Judged by balanced accuracy (the mean of the classes' recalls), which a
    model calling one class too often cannot move: by plain accuracy, a right order was refused on a set mostly
    of the class the model under-calls."""
    if labels is None or len(labels) < MIN_LABELLED:
        return
    counts = np.zeros((len(classes), len(classes)))
    np.add.at(counts, (labels, calls), 1)
    present = counts.sum(axis=1) > 0
    recalls = counts[present] / counts[present].sum(axis=1, keepdims=True)  # per true class, the share of each call
    truth, called = linear_sum_assignment(recalls, maximize=True)  # the order that makes most recall
    best = recalls[truth, called].mean()
    given = recalls[np.arange(len(recalls)), np.flatnonzero(present)].mean()
    if best - given >= MISORDERED:
        order = list(classes)
        for row, column in zip(np.flatnonzero(present)[truth], called):
            order[column] = classes[row]
        raise ValueError(f"{path.parent / LABELS}: the model's calls on {len(labels)} labelled verification "
                         f"images have a balanced accuracy of {given:.1%} in this order of its classes and "
                         f"{best:.1%} in {order}: list the classes in the order of the model's outputs (for Keras' "
                         "folder datasets, sorted)")


def _ending(model: keras.Model) -> str:
    """The name of what a model's output ends in: its last layer's activation (``Dense(1, activation="sigmoid")``,
    ``Activation("sigmoid")``), an operation (``keras.ops.sigmoid(...)``), or a nested model's ending."""
    last = (getattr(model, "operations", None) or model.layers)[-1]
    if isinstance(last, keras.Model):
        return _ending(last)
    if (activation := getattr(last, "activation", None)) is not None:
        return getattr(activation, "__name__", type(activation).__name__).lower()
    return type(last).__name__.lower()


def _input_problem(model: keras.Model, shape: tuple[int, int, int]) -> str | None:
    """How the model's input differs from the images preprocess.json makes (``shape``, HWC), or None; a side the
    model leaves open (None) takes any size."""
    given = tuple(model.inputs[0].shape[1:])
    if len(given) != 3 or any(side not in (None, want) for side, want in zip(given, shape)):
        fix = ('"color": "grey"' if given[-1:] == (1,) and shape[2] == 3 else
               '"color": "rgb"' if given[-1:] == (3,) and shape[2] == 1 else "its height and width")
        takes = "x".join("any" if side is None else str(side) for side in given)
        return f"the model takes images of {takes} and this file makes {'x'.join(map(str, shape))}: give it {fix}"
    return None


def _functional(model: keras.Sequential, path: Path, shape: tuple[int, int, int] | None = None) -> keras.Model:
    """The same layers and weights as a functional model. A loaded Sequential has ``inputs`` but no ``input``,
    which export reads, and its layers' ``output`` is that of an earlier build, outside the graph it runs (so
    Grad-CAM's gradients were None): each layer is made again from its config, called on a new input, given the
    loaded one's weights and state (an adapted Normalization's mean and variance), and the copy is checked to
    answer as the loaded model does."""
    x = inputs = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name="medclf_input")
    for layer in model.layers:
        again = type(layer).from_config(layer.get_config())
        x = again(x)
        again.set_weights(layer.get_weights())
        if hasattr(again, "finalize_state"):  # Normalization computes its mean and variance tensors here
            again.finalize_state()
    functional = keras.Model(inputs, x, name=model.name)
    sides = [side or (shape[i] if shape else 32) for i, side in enumerate(model.inputs[0].shape[1:])]  # open: any
    probe = np.random.default_rng(0).uniform(0, 255, (2, *sides)).astype("float32")
    if not np.allclose(functional.predict(probe, verbose=0), model.predict(probe, verbose=0), atol=1e-5):
        raise ValueError(f"{path}: this Sequential model could not be rebuilt to answer as it does (a layer keeps "
                         "state its config and weights do not hold): save it as a functional model "
                         "(keras.Model(inputs, outputs))")
    return functional


def _scales_its_pixels(model: keras.Model) -> bool | None:
    """Whether something changes the pixels before the first layer with weights: a Rescaling or Normalization
    layer, an operation on the input (``x / 255``, ``preprocess_input`` inside the model), a Lambda — in this model
    or in a model nested in it (a backbone used as a layer; an augmentation Sequential, which has neither, is
    looked through). None where the model has neither. Every model medclf trains starts with a Rescaling layer;
    a tutorial's that scales in its data pipeline does not, and gets pixels 255 times brighter."""
    for operation in getattr(model, "operations", None) or model.layers:  # a Sequential has no operations
        if isinstance(operation, keras.Model):
            if (nested := _scales_its_pixels(operation)) is not None:
                return nested
            continue
        if not isinstance(operation, keras.layers.Layer) or isinstance(operation, SCALING):
            return True
        if operation.weights:
            return False
    return None


def _first_bytes(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(4)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]
