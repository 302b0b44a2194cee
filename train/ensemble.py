"""Several trained runs averaged into one model (``medclf ensemble``): one file, one threshold, one card.

Models of different kinds err on different images. On the chest X-rays the preset (frozen ImageNet features at
352 px, test AUC 0.969) and a default run (MobileNetV2 fine-tuned at 224 px, 0.938 on the same patient split)
average to test AUC 0.972: the frozen model keeps what transfers to another hospital, the fine-tuned one what
it learned of the films. The members are nested whole inside one Keras model whose input is the largest
member's; a smaller member sees the image resized inside the graph, so the runtime still decodes and resizes
once. Members must hold out the same validation images (train them with the same ``--seed`` and
``--group-pattern``), or the threshold and the scores chosen on them would include images one member trained on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import keras

from medclf import rundir
from medclf.rundir import RunDir
from medclf.runtime.preprocess import Preprocess

from .data import ImageFolder, Labeller, load_arrays, predict_folder
from .evaluate import choose_threshold
from .fit import predict, save_model
from .groups import split_groups
from .pipeline import (Recipe, TrainResult, report, set_aside_earlier_run, test_extras, train, write_run,
                       writing_run)
from .splits import read_labelled, recorded_split

ENSEMBLE = "ensemble"  # the name averaged models carry, by which explain knows one
ENSEMBLING_MINUTES = 2.0  # of a time budget, kept for averaging and scoring the members (the chest pair: 56-61 s)
MIN_MEMBER_MINUTES = 1.0  # a member that starts with less still trains this long (its budget cuts the rest)


def train_ensemble(data: str | os.PathLike[str], out: str | os.PathLike[str], recipes: Sequence[Recipe],
                   test: str | os.PathLike[str] | None = None, naming: Labeller | None = None,
                   limit_per_class: int | None = None) -> TrainResult:
    """Train each recipe into ``OUT/members/<i>-<arch>`` and average them into ``OUT`` (:func:`ensemble_runs`;
    an ensemble preset's way, ``medclf train --preset chest-xray-pair``). The first recipe's time budget is the
    whole run's: each member trains on what is left of it, less ``ENSEMBLING_MINUTES`` for the averaging. OUT is
    held for the whole run (:func:`~.pipeline.writing_run`)."""
    with writing_run(Path(out)):
        return _train_ensemble(data, out, recipes, test, naming, limit_per_class)


def _train_ensemble(data: str | os.PathLike[str], out: str | os.PathLike[str], recipes: Sequence[Recipe],
                    test: str | os.PathLike[str] | None, naming: Labeller | None,
                    limit_per_class: int | None) -> TrainResult:
    started, total = time.monotonic(), recipes[0].fit.time_budget
    runs = []
    for i, recipe in enumerate(recipes):
        if total is not None:
            left = max(MIN_MEMBER_MINUTES, total - (time.monotonic() - started) / 60 - ENSEMBLING_MINUTES)
            recipe = replace(recipe, fit=replace(recipe.fit, time_budget=min(recipe.fit.time_budget or left, left)))
        member = Path(out) / "members" / f"{i}-{recipe.arch}"
        runs.append(train(data, member, recipe, test=test, naming=naming, limit_per_class=limit_per_class).run_dir)
    metrics = ensemble_runs(runs, out, test, recipes[0].target_sensitivity, naming=naming)
    return TrainResult(Path(out), metrics, time.monotonic() - started)


def ensemble_runs(runs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                  test: str | os.PathLike[str] | None = None, target_sensitivity: float | None = None,
                  cache_dir: str | os.PathLike[str] | None = None, naming: Labeller | None = None) -> dict:
    """Average the ``runs``' models into ``out`` (a run directory ``medclf export`` takes; an earlier run there
    is set aside as training does, but for the folder holding runs that lie inside it), choose a binary
    ensemble's threshold on the members' common validation images, and score it there and on ``test`` (labelled
    by ``naming``, else as the members' images were) — without ``test``, on the test images the members
    recorded (a dataset's own ``test/`` folder, which each member found)."""
    with writing_run(Path(out)):
        return _ensemble_runs(runs, out, test, target_sensitivity, cache_dir, naming)


def _ensemble_runs(runs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                   test: str | os.PathLike[str] | None, target_sensitivity: float | None,
                   cache_dir: str | os.PathLike[str] | None, naming: Labeller | None) -> dict:
    members = [RunDir(Path(run)) for run in runs]
    if any(Path(run).resolve() == Path(out).resolve() for run in runs):
        raise ValueError(f"{out}: one of the members; the ensemble needs a folder of its own (it would replace the "
                         "member's model)")
    preprocess = _common_preprocess(members)
    val = _common_validation(members)
    model = averaged([keras.models.load_model(m.path / rundir.MODEL, compile=False) for m in members],
                     preprocess.shape)
    classes = members[0].labels
    out = Path(out)
    val_x, val_y, _ = load_arrays(val, preprocess, cache_dir)
    test_folder = read_labelled(test, classes, naming, members[0]) if test is not None else _recorded_test(members)
    inside = {Path(run).resolve().relative_to(out.resolve()).parts[0] for run in runs
              if out.resolve() in Path(run).resolve().parents}  # a preset's OUT/members: they stay
    val_p = predict(model, val_x)
    decision = choose_threshold(val_y, val_p, classes, target_sensitivity) if len(classes) == 2 else None
    set_aside_earlier_run(out, keep=inside)  # only now, the data checked: a refused run changes nothing
    out.mkdir(parents=True, exist_ok=True)
    shared = {name: members[0].recipe.get(name) for name in ("group_pattern", "group_copies")}  # one split
    metrics = {"validation": report(out, val_y, val_p, classes, decision, "validation"),
               "training": {"architecture": "ensemble", "members": [str(m.path.resolve()) for m in members],
                            "recipe": shared, "labelled_by": members[0].metrics.get("training", {}).get(
                                "labelled_by")}}
    if test_folder is not None:
        labels, probabilities, test_folder = predict_folder(test_folder, preprocess, lambda x: predict(model, x),
                                                            cache_dir)
        groups = split_groups(test_folder, shared["group_pattern"], shared["group_copies"], naming)
        extras = test_extras(labels, probabilities, groups, classes, decision)
        metrics["test"] = report(out, labels, probabilities, classes, decision, "test", extras) | extras
    save_model(model, out / rundir.MODEL)
    splits = {"train": recorded_split(members[0], "train"), "val": val, "test": test_folder}
    write_run(out, classes, preprocess, decision, metrics, splits)
    return metrics


def averaged(models: Sequence[keras.Model], shape: tuple[int, int, int]) -> keras.Model:
    """One model whose ``probabilities`` are the mean of ``models``' for an image of ``shape``; a member whose
    input is smaller sees the image resized (bilinear) inside the graph. Members are renamed ``member<i>_<name>``
    (in place)."""
    image = keras.Input(shape, name="image")
    outputs = []
    for i, member in enumerate(models):
        member.name = f"member{i}_{member.name}"  # two runs of one architecture share its name; a model may not
        resize = resizing(member, shape, name=f"member{i}_resize")
        outputs.append(member(image if resize is None else resize(image)))
    return keras.Model(image, keras.layers.Average(name="probabilities")(outputs), name=ENSEMBLE)


def members(model: keras.Model) -> list[keras.Model]:
    """The models an :func:`averaged` model nests whole; empty for any other model."""
    return [layer for layer in model.layers if isinstance(layer, keras.Model)] if model.name == ENSEMBLE else []


def resizing(member: keras.Model, shape: tuple[int, ...], name: str | None = None) -> keras.layers.Layer | None:
    """The resize (bilinear) through which ``member`` sees an image of ``shape``, or None at its own size."""
    size = tuple(member.input_shape[1:3])
    return None if size == tuple(shape[:2]) else keras.layers.Resizing(*size, name=name)


def _common_preprocess(members: Sequence[RunDir]) -> Preprocess:
    """The members' preprocessing at the largest input size; they must agree on everything else and on labels."""
    first = members[0]
    for member in members[1:]:
        if member.labels != first.labels:
            raise ValueError(f"{member.path}: labels {member.labels} differ from {first.path}'s {first.labels}")
        unsized = replace(member.preprocess, height=first.preprocess.height, width=first.preprocess.width)
        if unsized != first.preprocess:  # which field, with both values: a run trained before shrink_all existed
            differ = [f"{name} {getattr(unsized, name)!r} vs {getattr(first.preprocess, name)!r}"
                      for name in vars(unsized) if getattr(unsized, name) != getattr(first.preprocess, name)]
            raise ValueError(f"{member.path}: its preprocessing differs from {first.path}'s ({'; '.join(differ)}): "
                             "members must see the images alike — train them with the same options and medclf")
        (h, w), (first_h, first_w) = ((p.height, p.width) for p in (member.preprocess, first.preprocess))
        if abs(h * first_w - w * first_h) > 0.01 * w * first_w:  # one input resized to the other's shape
            raise ValueError(f"{member.path}: its images are {h}x{w} (height x width), {first.path}'s "
                             f"{first_h}x{first_w}: averaged, one would see the images squeezed")
    return max((m.preprocess for m in members), key=lambda p: p.height * p.width)


def _recorded_test(members: Sequence[RunDir]) -> ImageFolder | None:
    """The test images the first member recorded, or None where it was given none."""
    try:
        return recorded_split(members[0], "test")
    except FileNotFoundError:
        return None


def _common_validation(members: Sequence[RunDir]) -> ImageFolder:
    """The validation images every member held out; refused unless they are the same for all."""
    val = recorded_split(members[0], "val")
    for member in members[1:]:
        if member.split("val")[0] != list(val.paths):
            raise ValueError(f"{member.path} held out other validation images than {members[0].path}: train the "
                             "members with the same --seed, --val-split and --group-pattern")
    return val
