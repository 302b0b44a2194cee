"""``medclf crossval``: k-fold cross-validation for datasets too small for one held-out test set.

Each fold trains a fresh model on the other folds (its own validation split carved from them, for early
stopping and the threshold) and is scored once on its held-out fold. The report gives each metric's mean and
spread across folds, which on 59 images says more than any single number, and the held-out folds pooled — every
image called once, by the model that never saw it — with 95% confidence intervals over those images.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from medclf.runtime.atomic import write_json

from .data import Labeller
from .evaluate import macro_roc_auc
from .groups import split_groups
from .identical import twin_groups
from .intervals import intervals_of_calls
from .pipeline import Recipe, TestScores, train_splits, writing_run
from .splits import Splits, pooled_for_folds, stratified_split

REPORTED = ("accuracy", "roc_auc_macro", "sensitivity", "specificity", "expected_calibration_error")


def cross_validate(data: str | os.PathLike[str], out: str | os.PathLike[str], recipe: Recipe = Recipe(),
                   folds: int = 5, naming: Labeller | None = None,
                   cache_dir: str | os.PathLike[str] | None = None) -> dict:
    """Train ``folds`` models, write ``OUT/fold<k>/`` run directories and ``OUT/crossval.json``; return it. OUT is
    held for the whole run: a second one into it is refused before it replaces a fold."""
    with writing_run(Path(out)):
        return _cross_validate(data, out, recipe, folds, naming, cache_dir)


def _cross_validate(data: str | os.PathLike[str], out: str | os.PathLike[str], recipe: Recipe, folds: int,
                    naming: Labeller | None, cache_dir: str | os.PathLike[str] | None) -> dict:
    folder = pooled_for_folds(data, naming)
    if np.bincount(folder.labels, minlength=len(folder.classes)).min() < folds:
        raise ValueError(f"{data}: every class needs at least {folds} images for {folds}-fold cross-validation")
    groups = twin_groups(folder, split_groups(folder, recipe.group_pattern, recipe.group_copies, naming))
    splitter = (StratifiedGroupKFold if groups is not None else StratifiedKFold)(
        n_splits=folds, shuffle=True, random_state=recipe.fit.seed)
    made = list(splitter.split(np.zeros(len(folder)), folder.labels, groups))
    _check_folds(data, folder, made)
    per_fold, held_out, started = [], [], time.monotonic()
    for k, (rest, held) in enumerate(made):
        inner_groups = groups[rest] if groups is not None else None
        train, val = stratified_split(folder.subset(rest), recipe.val_split, recipe.fit.seed, inner_groups)
        splits = Splits(train, val, folder.subset(held), f"{recipe.val_split:.0%} of the other folds")
        held_groups = dict(zip(splits.test.paths, map(str, groups[held]))) if groups is not None else None
        result = train_splits(splits, Path(out) / f"fold{k}", _fold_share(recipe, started, folds - k), cache_dir,
                              source=f"{data} fold {k + 1}/{folds}", naming=naming, test_groups=held_groups,
                              before_writing=partial(_set_aside_summary, Path(out)) if k == 0 else None)
        per_fold.append(result.metrics["test"] | {"seconds": result.seconds})
        held_out.append(result.test)
    summary = {"data": str(data), "folds": folds, "images": len(folder), "per_fold": per_fold,
               **{name: _spread([fold.get(name) for fold in per_fold]) for name in REPORTED},
               "pooled": _pooled(held_out, folder.classes)}
    write_json(Path(out) / "crossval.json", summary)
    _remove_extra_folds(Path(out), folds)
    return summary


def _set_aside_summary(out: Path) -> None:
    """An earlier run's ``crossval.json`` into ``OUT/previous/`` as the first fold it describes is replaced (a
    rerun stopped midway left it describing folds already replaced; one refused before writing leaves both)."""
    summary = out / "crossval.json"
    if summary.is_file():
        (out / "previous").mkdir(parents=True, exist_ok=True)
        for older in (out / "previous").glob("fold*"):  # an older run's extra folds: that summary is replaced
            shutil.rmtree(older, ignore_errors=True)
        os.replace(summary, out / "previous" / summary.name)


def _fold_share(recipe: Recipe, started: float, folds_left: int) -> Recipe:
    """``recipe`` with an equal share of what is left of its time budget for each fold still to train: the
    budget is the whole command's (five folds on the default 28 minutes each would take over two hours)."""
    if recipe.fit.time_budget is None:
        return recipe
    left = recipe.fit.time_budget - (time.monotonic() - started) / 60
    return replace(recipe, fit=replace(recipe.fit, time_budget=max(left, 0.0) / folds_left))


def _check_folds(data, folder, made: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Refuse, before any fold trains, folds that would train on fewer than two images of a class (one to train,
    one to validate on): a class whose images are one patient's (or one source's) is held out whole by one fold,
    which found out only after training the folds before it."""
    for k, (rest, _) in enumerate(made):
        counts = np.bincount(folder.labels[rest], minlength=len(folder.classes))
        if short := [folder.classes[c] for c in np.flatnonzero(counts < 2)]:
            raise ValueError(f"{data}: fold {k + 1} of {len(made)} would train on fewer than 2 images of "
                             f"{', '.join(short)}: its images belong to too few patients or sources to spread over "
                             f"{len(made)} folds (use fewer --folds, or no grouping if they are not one patient's)")


def _remove_extra_folds(out: Path, folds: int) -> None:
    """An earlier run in ``out`` with more folds left ``fold<k>`` runs this summary does not count; they go to
    ``OUT/previous/`` beside that run's summary (its other folds' runs are in theirs), not deleted: the summary
    set aside still describes them."""
    for run in sorted(out.glob("fold*/model.keras")):
        index = run.parent.name[len("fold"):]
        if index.isdigit() and int(index) >= folds:
            aside = out / "previous" / run.parent.name
            aside.parent.mkdir(exist_ok=True)
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(run.parent, aside)
            print(f"moved {run.parent} to {aside}: a fold of an earlier cross-validation with more folds",
                  file=sys.stderr)


def _pooled(folds: list[TestScores], classes: tuple[str, ...]) -> dict:
    """Accuracy and ROC AUC of every held-out image's call, the folds together, with 95% confidence intervals
    (whole groups resampled where the folds were drawn by groups)."""
    labels = np.concatenate([fold.labels for fold in folds])
    probabilities = np.concatenate([fold.probabilities for fold in folds])
    calls = np.concatenate([fold.calls for fold in folds])
    groups = None
    if any(fold.groups is not None for fold in folds):  # a fold's groups are its own: named apart
        named = [fold.groups if fold.groups is not None else np.arange(len(fold.labels)) for fold in folds]
        groups = np.concatenate([[f"{k}|{group}" for group in fold_groups] for k, fold_groups in enumerate(named)])
    return {"images": int(len(labels)), "accuracy": float(np.mean(calls == labels)),
            "roc_auc_macro": macro_roc_auc(labels, probabilities),
            "confidence_intervals": intervals_of_calls(labels, probabilities, calls, classes, groups)}


def _spread(values: list[float | None]) -> dict[str, float] | None:
    """Mean and sample standard deviation over the folds where the metric is defined."""
    present = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(present) == 0:
        return None
    return {"mean": float(present.mean()), "std": float(present.std(ddof=1)) if len(present) > 1 else 0.0,
            "folds": int(len(present))}
