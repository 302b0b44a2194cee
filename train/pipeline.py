"""``medclf train`` and ``medclf evaluate`` as functions: data folder in, a run directory out, and its scores.

RUN_DIR holds ``model.keras``, ``labels.json``, ``preprocess.json``, ``decision.json`` (binary tasks: the
threshold chosen on validation data), ``history.csv``, ``metrics.json`` (validation, and test when given),
``splits.json`` (the training, held-out validation and test files: export calibrates and verifies on them)
and the pictures ``curves.png``, ``confusion_matrix.png``, ``roc.png`` and ``calibration.png`` (of the test
set when given, else of validation). See ``medclf.rundir``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import medclf
from medclf import rundir
from medclf.export.files import FILE_NAMES, card_of_file
from medclf.export.keras_model import loaded
from medclf.export.verify import TOLERANCES
from medclf.rundir import RunDir
from medclf.runtime.atomic import lock_at_once, write_json, write_text, written_together
from medclf.runtime.cache import default_cache_dir
from medclf.runtime.classifier import Classifier
from medclf.runtime.decision import Decision, decide
from medclf.runtime.describe import file_sha256
from medclf.runtime.modelcard import familiarity_site, unlike
from medclf.runtime.preprocess import Preprocess
from medclf.runtime.tta import averaged

from .architectures import Architecture, get_architecture
from .bars import stderr_console
from .budget import TimeBudget
from .data import DatasetError, ImageFolder, Labeller, load_arrays, predict_folder, shorter_side
from .distribute import training_strategy
from .evaluate import (at_prevalence, choose_threshold, classification_metrics, per_source_metrics,
                       positive_class, stated_shares)
from .fit import FitConfig, fit, predict, save_model
from .groups import group_kind, split_groups
from .identical import identical_files, seen_in_training
from .intervals import bootstrap_intervals, resampled
from .labellers import recorded
from .layout import check_class_names
from .plots import plot_confusion, plot_curves, plot_reliability, plot_roc
from .printed import training_plan
from .sizing import fit_to_budget
from .splits import (Splits, load_splits, read_labelled, recorded_split, warn_formats_by_class,
                     warn_missing_classes, warn_scarce_classes)
from .temperature import fit_temperature, fold_temperature, scaled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the model besides the data: architecture, preprocessing, fitting, threshold.

    The defaults are the recipe for a dataset nobody has seen (chosen for robustness, not tuned to one
    dataset); ``medclf.train.presets`` holds the measured recipes for the datasets in ../shared/data.
    """

    arch: str = "mobilenet_v2"
    image_size: int | tuple[int, int] | None = None  # None: the architecture's own
    color: str = "rgb"
    crop: str = "centre"
    crop_fraction: float = 1.0
    clahe: bool = False
    pretrained: bool = True
    val_split: float = 0.15  # held out of training when the data has no val/ folder
    group_pattern: str | None = None  # regex naming a file's patient/source: groups never straddle a split
    group_copies: bool | None = None  # near-identical colour histograms = augmented copies of one source: one
    # group. None: on when the data looks shipped pre-augmented (train/copies.py says how it decides)
    target_sensitivity: float | None = None  # binary: threshold for this sensitivity, else Youden's J
    freeze_until: str | None = None  # transfer models: last frozen layer (None: the architecture's own cut)
    fit: FitConfig = field(default_factory=FitConfig)

    def architecture(self) -> Architecture:
        architecture = get_architecture(self.arch)
        if self.freeze_until is None:
            return architecture
        if architecture.frozen_until is None:
            raise ValueError(f"{self.arch} trains from scratch: it has no frozen part to move")
        return replace(architecture, frozen_until=self.freeze_until)

    def preprocess(self) -> Preprocess:
        size = self.image_size or get_architecture(self.arch).default_size
        height, width = (size, size) if isinstance(size, int) else size
        return Preprocess(height, width, color=self.color, crop=self.crop, crop_fraction=self.crop_fraction,
                          clahe=self.clahe, shrink_jpeg=True, shrink_all=True)


@dataclass(frozen=True)
class TestScores:
    """A test set's labels, probabilities and calls (at the run's threshold), and the groups its files were
    scored by (None: each file alone) — what cross-validation pools over its folds."""

    labels: np.ndarray
    probabilities: np.ndarray
    calls: np.ndarray
    groups: np.ndarray | None


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    metrics: dict
    seconds: float
    test: TestScores | None = None


def train(data: str | os.PathLike[str], out: str | os.PathLike[str], recipe: Recipe = Recipe(),
          test: str | os.PathLike[str] | None = None, naming: Labeller | None = None,
          cache_dir: str | os.PathLike[str] | None = None, limit_per_class: int | None = None) -> TrainResult:
    """Train one model on a dataset folder and write its run directory. ``naming`` takes labels from file
    names or a labels file; ``limit_per_class`` trains on a subset (demos, tests)."""
    started = time.monotonic()  # the time budget counts looking for copies and decoding too
    splits = load_splits(data, val_split=recipe.val_split, test=test, seed=recipe.fit.seed, naming=naming,
                         group_pattern=recipe.group_pattern, group_copies=recipe.group_copies)
    seed = recipe.fit.seed
    if limit_per_class is not None:
        splits = replace(splits, train=_limit(splits.train, limit_per_class, seed),
                         val=_limit(splits.val, limit_per_class, seed),
                         held_out=f"{splits.held_out}, then at most {limit_per_class} of each class: "
                                  "--limit-per-class")
    return train_splits(splits, out, recipe, cache_dir, source=str(data), started=started, naming=naming)


def train_splits(splits: Splits, out: str | os.PathLike[str], recipe: Recipe = Recipe(),
                 cache_dir: str | os.PathLike[str] | None = None, source: str = "",
                 started: float | None = None, naming: Labeller | None = None,
                 test_groups: dict[str, str] | None = None,
                 before_writing: Callable[[], None] | None = None) -> TrainResult:
    """Train on given train/validation(/test) file lists: fit; on validation, scale the probabilities'
    temperature and choose the threshold; score, write.
    ``started`` (a ``time.monotonic()`` reading, default now) is when the run's time budget began; ``naming``,
    where a labels file names patients, says which test images are one patient's; ``test_groups`` (path →
    group), which test images belong together where the caller knows already (a cross-validation fold: the
    groups its folds were drawn by), else they are looked for as in a split. ``before_writing`` is called once
    every check has passed, just before the first file is written (a caller's own records go aside then)."""
    with writing_run(Path(out)):
        return _train_splits(splits, out, recipe, cache_dir, source, started, naming, test_groups, before_writing)


class RunDirBusy(ValueError):
    """Another process is training into the same run directory."""


@contextlib.contextmanager
def writing_run(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this run alone: a second run into it is refused at once. Two runs into one folder
    both said "wrote" while one model was lost and their histories interleaved. The lock is the folder's own
    (``flock``, released by the system when the process ends, however it ends); a folder made for it and left
    empty by a refused run is removed."""
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _HELD:  # this process holds it already (an ensemble's run, then its averaging into the same folder)
        yield
        return
    held = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            free = lock_at_once(held)  # None on Windows: runs into one folder are not kept apart
        except OSError as exc:  # a file system without locks (some network shares): runs there are not kept apart
            free = None
            log.warning("%s cannot be locked (%s): a second run into it at the same time would not be refused",
                        run_dir, exc.strerror or exc)
        if free is False:
            raise RunDirBusy(f"{run_dir}: another medclf run is writing this folder; wait for it to end, or "
                             "give another --out")
        _HELD.add(key)
        yield
    finally:
        _HELD.discard(key)
        os.close(held)  # releases the lock
        if made and not any(run_dir.iterdir()):
            run_dir.rmdir()


_HELD: set[Path] = set()  # the run folders this process holds


def _train_splits(splits: Splits, out: str | os.PathLike[str], recipe: Recipe,
                  cache_dir: str | os.PathLike[str] | None, source: str, started: float | None,
                  naming: Labeller | None, test_groups: dict[str, str] | None,
                  before_writing: Callable[[], None] | None) -> TrainResult:
    budget = TimeBudget(recipe.fit.time_budget, started)
    recipe = _sized(recipe, splits.train.paths)
    architecture, preprocess, config = recipe.architecture(), recipe.preprocess(), recipe.fit
    classes = splits.train.classes
    check_class_names(classes)
    if recipe.target_sensitivity is not None and len(classes) != 2:  # else recorded in the recipe, and ignored
        raise ValueError(f"--target-sensitivity sets a binary task's threshold; these images are of {len(classes)} "
                         "classes")
    keras.utils.set_random_seed(config.seed)  # before building: the new layers' initial weights come from it
    strategy = training_strategy(config.distribute)
    with strategy.scope():  # the model, and every model fit builds from it, are bound to it (see distribute.py)
        model = architecture.build(preprocess.shape, len(classes), recipe.pretrained)
    splits = fit_to_budget(splits, preprocess, model, budget, config.seed)
    stderr_console().print(splits.summary(), highlight=False, soft_wrap=True)
    warn_scarce_classes(splits.train)
    warn_formats_by_class(splits.train)
    stderr_console().print(training_plan(architecture, preprocess, config, recipe.pretrained), highlight=False,
                           soft_wrap=True)
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    train_x, train_y, train_set = load_arrays(splits.train, preprocess, cache)
    given = splits.train.class_counts()
    unlearnable = [f"{name} ({given[name]})" for i, name in enumerate(classes) if not (train_y == i).any()]
    if unlearnable:  # else a model that never answers them would be trained, scored and written
        raise DatasetError(f"no training image of {', '.join(unlearnable)} could be read (each is named above)")
    val_x, val_y, val_set = load_arrays(splits.val, preprocess, cache)
    missing = warn_missing_classes(val_y, classes, "validation")
    if missing and len(classes) == 2 and recipe.target_sensitivity is not None:  # said now, not after training
        raise ValueError(f"validation holds no readable image of {missing[0]}: a threshold for sensitivity "
                         f"{recipe.target_sensitivity:g} cannot be chosen on it")

    run_dir = Path(out)
    if before_writing is not None:
        before_writing()
    set_aside_earlier_run(run_dir)  # run_dir exists: writing_run holds it
    write_readable(run_dir, classes, preprocess, {"train": train_set, "val": val_set})
    with strategy.scope():
        decided = fit(model, architecture, (train_x, train_y), (val_x, val_y), config, run_dir / rundir.HISTORY,
                      budget)

    fitted = time.monotonic()
    val_p, temperature = _calibrated(model, val_x, val_y, strategy)  # before the threshold is chosen on them
    binary = len(classes) == 2
    decision = choose_threshold(val_y, val_p, classes, recipe.target_sensitivity) if binary else None
    metrics = {"validation": report(run_dir, val_y, val_p, classes, decision, "validation")}
    if len(val_p) > 1 and float(np.ptp(val_p, axis=0).max()) < 1e-6:  # ROC AUC 0.500, and no word of why
        log.warning("the model gives every validation image the same probabilities (%s): it learned nothing it "
                    "can use; try another --arch or --image-size, or more epochs", np.round(val_p[0], 3).tolist())
    test_set = scores = None
    if splits.test is not None:  # decoded only now, a chunk at a time: it needs no memory while fitting
        test_y, test_p, test_set = predict_folder(splits.test, preprocess, lambda x: predict(model, x), cache)
        groups = (np.asarray([test_groups.get(path, f"file:{path}") for path in test_set.paths]) if test_groups
                  else split_groups(test_set, recipe.group_pattern, recipe.group_copies, naming))
        extras = test_extras(test_y, test_p, groups, classes, decision)
        metrics["test"] = report(run_dir, test_y, test_p, classes, decision, "test", extras) | extras
        scores = TestScores(test_y, test_p, decide(test_p, classes, decision), groups)
    identical = identical_files(Splits(train_set, val_set, test_set))
    plot_curves(run_dir / rundir.HISTORY, run_dir / "curves.png")
    save_model(model, run_dir / rundir.MODEL)
    seconds = time.monotonic() - budget.started
    metrics["training"] = {"architecture": recipe.arch, "image_size": [preprocess.height, preprocess.width],
                           "seconds": round(seconds, 1), "train_images": int(len(train_y)),
                           "val_images": int(len(val_y)), "validation_held_out": splits.held_out,
                           "data": source, "labelled_by": recorded(naming), "recipe": asdict(recipe),
                           "replicas": strategy.num_replicas_in_sync, "temperature": temperature,
                           "time_budget_cuts": budget.cuts, **decided,
                           "identical_files": identical,
                           "unreadable": _unreadable(splits, train_set, val_set, test_set),
                           "scoring_seconds": {"reserved": round(budget.reserved, 1),
                                               "used": round(time.monotonic() - fitted, 1)}}
    write_run(run_dir, classes, preprocess, decision, metrics,
              {"train": train_set, "val": val_set, "test": test_set})
    return TrainResult(run_dir, metrics, seconds, scores)


def _unreadable(splits: Splits, train: ImageFolder, val: ImageFolder, test: ImageFolder | None) -> dict[str, int]:
    """How many files of each split could not be read and were left out (each was named as it was met)."""
    read = {"train": (splits.train, train), "val": (splits.val, val), "test": (splits.test, test)}
    return {name: len(given) - len(kept) for name, (given, kept) in read.items() if kept is not None}


def _calibrated(model: keras.Model, val_x: np.ndarray, val_y: np.ndarray,
                strategy: tf.distribute.Strategy) -> tuple[np.ndarray, float | None]:
    """The validation images' probabilities once the temperature fitted on them (if any) is folded into
    ``model``, and that temperature."""
    val_p = predict(model, val_x)
    temperature = fit_temperature(val_y, val_p)
    if temperature is None:
        return val_p, None
    with strategy.scope():
        fold_temperature(model, temperature)
    return scaled(val_p, temperature), temperature


def write_run(run_dir: Path, classes: tuple[str, ...], preprocess: Preprocess, decision: Decision | None,
              metrics: dict, parts: dict[str, ImageFolder | None]) -> None:
    """Everything of the run beside ``model.keras``: labels, preprocessing, threshold, metrics and splits."""
    write_readable(run_dir, classes, preprocess, parts)
    _clear_replaced(run_dir, len(classes) == 2)
    if decision is not None:
        write_text(run_dir / rundir.DECISION, decision.to_json() + "\n")
    write_json(run_dir / rundir.METRICS, metrics)


def write_readable(run_dir: Path, classes: tuple[str, ...], preprocess: Preprocess,
                   parts: dict[str, ImageFolder | None]) -> None:
    """What any model in ``run_dir`` needs to be evaluated or exported (:class:`medclf.rundir.RunDir`): its
    labels, preprocessing and splits; written before fitting too, for the checkpoint a crash or Ctrl-C leaves."""
    write_json(run_dir / rundir.LABELS, list(classes))
    write_text(run_dir / rundir.PREPROCESS, preprocess.to_json() + "\n")
    write_json(run_dir / rundir.SPLITS, {name: {"paths": [os.path.abspath(p) for p in part.paths],
                                                 "labels": part.labels.tolist()}
                                          for name, part in parts.items() if part is not None})


def _sized(recipe: Recipe, paths: tuple[str, ...]) -> Recipe:
    """The recipe with its input size settled: as given, or what the architecture takes for images with the
    training images' detail (:meth:`Architecture.input_size`; their median shorter side)."""
    if recipe.image_size is not None:
        return recipe
    side = shorter_side(paths)
    architecture = recipe.architecture()
    return replace(recipe, image_size=architecture.input_size(side) if side else architecture.default_size)


# What a run (or an ensemble, or medclf evaluate/export pointed into a run) writes in its folder; an export
# with --out RUN_DIR writes its files beside the model (an INT8 file's TensorRT flavour and engines too).
RUN_FILES = (rundir.MODEL, rundir.LABELS, rundir.PREPROCESS, rundir.DECISION, rundir.METRICS, rundir.SPLITS,
             rundir.HISTORY, rundir.CHECKPOINT, "curves.png", "confusion_matrix.png", "roc.png", "calibration.png",
             "members", "exported", rundir.EVALUATION.format(data="*"), *FILE_NAMES.values(), "model.*.onnx",
             "model*.plan", "export_report.json")
PREVIOUS, UNFINISHED = "previous", "unfinished"  # where a run sets aside a finished run, and a run's leftovers


def set_aside_earlier_run(run_dir: Path, keep: Collection[str] = ()) -> None:
    """Move what an earlier run left in ``run_dir`` aside before this run writes anything: a finished run (it
    wrote its metrics) into ``run_dir/previous``, the leftovers of one that did not finish (its history and
    checkpoint) into ``run_dir/unfinished``, each replacing the one there. A run that fails midway would
    otherwise leave its history and pictures beside the earlier run's model and metrics; and the last finished
    model is never lost to runs that never finished. Entries named in ``keep`` stay (an ensemble's members)."""
    found = sorted({path for pattern in RUN_FILES for path in run_dir.glob(pattern) if path.name not in keep})
    if not found:
        return
    names = {path.name for path in found}
    aside = run_dir / (PREVIOUS if rundir.METRICS in names else UNFINISHED)  # metrics.json: written as a run ends
    if aside.is_symlink() or aside.is_file():  # not one medclf made: a folder is wanted there
        aside.unlink()
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for path in found:
        os.replace(path, aside / path.name)
    print(f"moved what an earlier run left in {run_dir} to {aside}: this run replaces it", file=sys.stderr)


def _clear_replaced(run_dir: Path, binary: bool) -> None:
    """What an earlier run in this folder left that would be taken for this run's: its threshold (read back
    with a multi-class model, and exported in its card) and ``medclf evaluate``'s scores of the old model."""
    if not binary:
        (run_dir / rundir.DECISION).unlink(missing_ok=True)
    for scores in sorted(run_dir.glob(f"{rundir.EVALUATION.format(data='*')}/{rundir.METRICS}")):
        shutil.rmtree(scores.parent)
        print(f"removed {scores.parent}: the evaluation of the model this run replaced", file=sys.stderr)


def evaluate_run(model_path: str | os.PathLike[str], data: str | os.PathLike[str],
                 out: str | os.PathLike[str] | None = None, target_sensitivity: float | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, naming: Labeller | None = None,
                 group_pattern: str | None = None, group_copies: bool | None = None,
                 prevalence: dict[str, float] | None = None, tta: str | None = None) -> dict:
    """Score a model on a folder-per-class dataset with its own labels, preprocessing and threshold: a run's
    ``model.keras``, or an exported ``.onnx`` file through the runtime (so the deployed artifact is scored by
    the same code). With ``target_sensitivity`` a new threshold is chosen on the run's validation split first.
    Files that belong together (``split_groups``: ``group_pattern``, patient sub-folders, or ``group_copies`` —
    None looks for them; neither given: as the model's run was trained with) add ``per_source`` metrics:
    one vote per patient or source image. A ``prevalence``
    stated for some classes (see :func:`stated_shares`) adds ``at_prevalence``: the calls' worth where cases
    come in those proportions rather than the data's. ``tta`` (``flip``, ``dihedral``) scores the probabilities
    averaged over those views of each image (:mod:`medclf.runtime.tta`), as ``medclf-run --tta`` serves them.
    With ``out``, writes ``metrics.json``, ``confusion_matrix.png``, ``roc.png`` and ``calibration.png`` there."""
    if out is not None and (held := [name for name in (rundir.MODEL, rundir.LABELS) if (Path(out) / name).exists()]):
        raise ValueError(f"{out}: a run directory (it holds {held[0]}), whose metrics.json is the run's own record "
                         "and would be replaced; give --out a folder of its own")
    scorer = _Scorer.load(model_path, tta)
    classes, preprocess, decision = scorer.labels, scorer.preprocess, scorer.decision
    if target_sensitivity is not None:
        if scorer.run is None:
            raise ValueError(f"{model_path}: choosing a new threshold needs the run directory, and the file "
                             "names none that still holds its model; pass RUN_DIR/model.keras")
        val_x, val_y, _ = load_arrays(recorded_split(scorer.run, "val"), preprocess, cache_dir)
        decision = choose_threshold(val_y, scorer.predict(val_x), classes, target_sensitivity)
    reference = _fp32_sibling(model_path, scorer)
    scored = scorer.with_unfamiliarity or scorer.predict  # [probabilities | unfamiliarity], from one pass
    predict_all = scored if reference is None else \
        lambda images: np.hstack([scored(images), reference.predict(images, batch_size=64)])  # one decode
    labels, outputs, folder = predict_folder(read_labelled(data, classes, naming, scorer.run), preprocess,
                                             predict_all, cache_dir)
    says_unfamiliar = scorer.with_unfamiliarity is not None
    probabilities, unfamiliarity, reference_p = np.split(outputs, [len(classes), len(classes) + says_unfamiliar],
                                                         axis=1)
    if scorer.run is not None and group_pattern is None and group_copies is None:  # the run's own grouping, so
        recipe = scorer.run.recipe  # its test scores come out the same
        group_pattern, group_copies = recipe.get("group_pattern"), recipe.get("group_copies")
    groups = split_groups(folder, group_pattern, group_copies, naming)
    extra = test_extras(labels, probabilities, groups, classes, decision)
    if scorer.run is not None and scorer.run.trained_by_medclf:  # unseen only if never seen in training
        extra["identical_to_training"] = seen_in_training(folder, recorded_split(scorer.run, "train"),
                                                          recorded_split(scorer.run, "val"))
    elif scorer.run is not None:  # a run folder written by hand, for a model medclf did not train: scored all the same
        log.warning("%s records no training images (no %s), so whether any of these images were trained on "
                    "cannot be checked", scorer.run.path, rundir.SPLITS)
    if scorer.calibrated_on is not None and _overlapping(scorer.calibrated_on, data):
        extra["calibrated_on_these_images"] = scorer.calibrated_on
        log.warning("%s was calibrated (medclf calibrate) on %s: its temperature, bias and threshold were fitted on "
                    "these images, so these scores are not those of unseen ones", model_path, scorer.calibrated_on)
    if reference is not None:
        extra["agreement_with_fp32"] = _agreement(labels, probabilities, decision, reference_p, reference, classes,
                                                  scorer.precision)
    extra["evaluated"] = scored_what(model_path, data, scorer.precision)
    if tta is not None:
        extra["test_time_augmentation"] = tta
    if prevalence:
        shares = stated_shares(prevalence, classes, np.bincount(labels, minlength=len(classes)))
        extra["at_prevalence"] = at_prevalence(labels, probabilities, classes, shares, decision)
    if says_unfamiliar:
        extra["unlike_training"] = unlike_training(unfamiliarity[:, 0], folder.paths) | (
            {"reference": scorer.familiar_with} if scorer.familiar_with else {})
    if out is None:
        return classification_metrics(labels, probabilities, classes, decision) | extra
    with written_together(out, last=rundir.METRICS) as staged:  # a run stopped midway keeps the old record whole
        metrics = report(staged, labels, probabilities, classes, decision, Path(data).name, extra) | extra
        write_json(staged / rundir.METRICS, metrics)
    return metrics


def _overlapping(folder: str, data: str | os.PathLike[str]) -> bool:
    """Whether ``data`` is ``folder``, inside it or holds it."""
    one, other = Path(folder).resolve(), Path(data).resolve()
    return one == other or one.is_relative_to(other) or other.is_relative_to(one)


def scored_what(model_path: str | os.PathLike[str], data: str | os.PathLike[str], precision: str) -> dict:
    """What an evaluation scored, when and with what: its ``metrics.json`` is the record a site keeps when it
    accepts a model, and must name the very file (its sha256, as ``medclf-run --describe`` and every
    ``medclf-run --json`` answer give it) even after the folders are moved."""
    return {"model": str(Path(model_path).resolve()), "model_sha256": file_sha256(model_path),
            "precision": precision, "data": str(Path(data).resolve()), "medclf_version": medclf.__version__,
            "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def unlike_training(unfamiliarity: np.ndarray, paths: tuple[str, ...]) -> dict:
    """How many of a scored set's images the exported file says are unlike its training images (about 0.5% of
    images like them lie beyond its threshold), with a few of them named: a set with many is not the kind of
    data the scores describe, or holds images that do not belong (another modality, a stain the model never
    saw)."""
    beyond = np.flatnonzero(unlike(unfamiliarity))
    return {"images": len(paths), "count": len(beyond), "share": len(beyond) / len(paths),
            "examples": [paths[i] for i in beyond[np.argsort(-unfamiliarity[beyond])][:3]]}


def _fp32_sibling(model_path: str | os.PathLike[str], scorer: "_Scorer") -> Classifier | None:
    """The FP32 file exported beside a reduced-precision ``model_path`` (``model.onnx``, same labels), or None.

    Export verifies FP16 and INT8 against Keras on the training site's held-out images; at another site they can
    drift: the chest pair's INT8 agreed with FP32 on 99.6% of validation films and changed 17 of the other
    hospital's 624 calls, all normal → pneumonia. Scoring such a file on a site's images also says how often it
    calls as the FP32 file does there. A calibrated copy (``model.int8.site.onnx``) is compared with the FP32
    file calibrated at the same site, or none: against the uncalibrated one, the site's threshold alone moved
    calls, read as the precision's drift (93.7% "below the 99.0% its export was verified to"; 97.5% against the
    FP32 copy of the same site)."""
    if scorer.precision == "fp32":  # a Keras model is scored as FP32
        return None
    fp32 = Path(model_path).with_name(FILE_NAMES["fp32"])
    if scorer.calibrated_on is not None:  # model.int8.site-2.onnx → model.site-2.onnx, if calibrated there too
        fp32 = Path(model_path).with_name(Path(model_path).name.replace(f".{scorer.precision}.", ".", 1))
        card = card_of_file(fp32)
        if card is None or (card.metrics.get("site") or {}).get("data_path") != scorer.calibrated_on:
            return None
    if fp32 is None or not fp32.is_file():
        return None
    reference = Classifier(fp32, tta=scorer.tta)
    return reference if reference.card.labels == scorer.labels and reference.card.precision == "fp32" else None


def _agreement(labels: np.ndarray, probabilities: np.ndarray, decision: Decision | None, reference_p: np.ndarray,
               reference: Classifier, classes: tuple[str, ...], precision: str) -> dict:
    """How often the scored file's calls (by ``decision``, the threshold it is scored at) are its FP32 sibling's
    (by that file's own), which calls moved, the FP32 file's accuracy, and whether the agreement is within what
    export demands of ``precision``. Each file is judged as it would be served: after ``medclf calibrate``
    their thresholds differ, and the changed calls may then be the better ones."""
    calls = decide(probabilities, classes, decision)
    reference_calls = decide(reference_p, classes, reference.card.decision)
    changed = calls != reference_calls
    moves = Counter(f"{classes[a]} → {classes[b]}" for a, b in zip(reference_calls[changed], calls[changed]))
    agreement, tolerance = float(1 - changed.mean()), TOLERANCES[precision].min_agreement
    return {"file": str(reference.model_path), "images": int(len(calls)), "changed": int(changed.sum()),
            "agreement": agreement, "moves": dict(moves.most_common()), "tolerance": tolerance,
            "within_tolerance": agreement >= tolerance, "fp32_accuracy": float(np.mean(reference_calls == labels))}


def test_extras(labels: np.ndarray, probabilities: np.ndarray, groups: np.ndarray | None, classes: tuple[str, ...],
                decision: Decision | None) -> dict:
    """What scoring a test set adds to its metrics: 95% ``confidence_intervals``, and where files belong
    together (copies of one image, a patient's) ``per_source`` (one vote per source), whole sources being what
    the intervals resample."""
    intervals = {"confidence_intervals": bootstrap_intervals(labels, probabilities, classes, decision, groups)}
    if groups is None:
        return intervals
    return intervals | {"per_source": per_source_metrics(labels, probabilities, groups, classes, decision)
                        | {"kind": group_kind(groups)}}


@dataclass(frozen=True)
class _Scorer:
    """What evaluation needs of a model, whichever file it is."""

    labels: tuple[str, ...]
    preprocess: Preprocess
    decision: Decision | None
    predict: Callable[[np.ndarray], np.ndarray]  # uint8 images → probabilities
    run: RunDir | None  # the run directory: a Keras model's, or the one an exported file names and still matches
    precision: str = "fp32"  # an exported file's (a Keras model is the FP32 reference itself)
    # uint8 images → [probabilities | unfamiliarity] in one pass, for a file that says how unlike its training
    # images an image is (medclf.export.familiarity); None for others
    with_unfamiliarity: Callable[[np.ndarray], np.ndarray] | None = None
    tta: str | None = None  # the test-time views its probabilities are averaged over (medclf.runtime.tta)
    calibrated_on: str | None = None  # a medclf calibrate copy's: the folder its site fit was made on
    familiar_with: str | None = None  # a calibrated copy's: the site whose images its unfamiliarity was set on

    @classmethod
    def load(cls, model_path: str | os.PathLike[str], tta: str | None = None) -> "_Scorer":
        if Path(model_path).suffix.lower() == ".onnx":
            classifier = Classifier(model_path, tta=tta)
            card = classifier.card
            both = (lambda x: np.column_stack(classifier.assess(x, 64))) if classifier.says_unfamiliar else None
            return cls(card.labels, card.preprocess, card.decision, partial(classifier.predict, batch_size=64),
                       RunDir.of_export(card.source), card.precision, both, tta,
                       (card.metrics.get("site") or {}).get("data_path"), familiarity_site(card))
        run = RunDir.of_model(model_path)
        model = loaded(Path(model_path), len(run.labels), run.preprocess.shape)  # a tutorial's too, by hand
        scored = (lambda x: predict(model, x)) if tta is None else partial(averaged, partial(predict, model), kind=tta)
        return cls(run.labels, run.preprocess, run.decision, scored, run, tta=tta)


def report(out: Path, labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...],
           decision: Decision | None, title: str, extras: dict | None = None) -> dict:
    """Metrics for one split, with its confusion matrix, ROC and reliability curves drawn in ``out`` (the latest
    call wins); a test set's ``extras`` (:func:`test_extras`) put its ROC AUC's interval under the ROC's title."""
    metrics = classification_metrics(labels, probabilities, classes, decision)
    at = f" at p ≥ {decision.threshold:.3g}" if decision is not None else ""
    plot_confusion(metrics["confusion_matrix"], classes, out / "confusion_matrix.png", f"{title}{at}")
    binary = positive_class(classes) if len(classes) == 2 else None
    plot_roc(labels, probabilities, classes, out / "roc.png", title + _auc_interval(metrics, extras or {}),
             positive=binary)
    of_what = " (of the most probable class)" if binary is not None else ""  # the curve is p(finding)'s
    plot_reliability(labels, probabilities, classes, out / "calibration.png",
                     f"{title}: calibration error {metrics['expected_calibration_error']:.3f}{of_what}",
                     positive=binary)
    return metrics


def _auc_interval(metrics: dict, extras: dict) -> str:
    """'\nROC AUC 0.969, 95% CI 0.955-0.980 over 427 patients', or "" where there is no interval."""
    intervals = extras.get("confidence_intervals") or {}
    if not intervals.get("roc_auc_macro") or metrics.get("roc_auc_macro") is None:
        return ""
    low, high = intervals["roc_auc_macro"]
    macro = "macro " if "per_class" in intervals else ""  # per-class intervals: three classes or more
    return (f"\n{macro}ROC AUC {metrics['roc_auc_macro']:.3f}, 95% CI {low:.3f}-{high:.3f} over "
            f"{resampled(intervals, extras.get('per_source'))}")


def _limit(folder: ImageFolder, per_class: int | None, seed: int) -> ImageFolder:
    """At most ``per_class`` images of each class, drawn at random (reproducibly)."""
    if per_class is None:
        return folder
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(folder.labels == c))[:per_class] for c in range(len(folder.classes))]
    return folder.subset(np.sort(np.concatenate(keep)))
