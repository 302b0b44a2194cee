"""The pictures a person reads faster than numbers: training curves, confusion matrix, ROC and reliability curves.

Drawn with matplotlib (no display needed) and scikit-learn's own displays, written atomically as PNGs.
"""

from __future__ import annotations

import csv
import functools
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.calibration import CalibrationDisplay  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from medclf.runtime.atomic import atomic_write  # noqa: E402

log = logging.getLogger(__name__)

LEGEND_INSIDE_MAX = 6  # ROC curves whose legend still fits inside the axes without hiding them


def _plain_text(draw: Callable) -> Callable:
    """Class names drawn as written: not read as math (a folder named ``$x^$`` stopped a run after fitting)."""
    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        with plt.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return drawn


def _file_or_warning(draw: Callable) -> Callable:
    """A picture written to its ``path``, or a warning where it cannot be drawn: the model and the metrics
    computed before it are what a run is for (an older scikit-learn's ROC stopped a run before its model was
    saved)."""
    signature = inspect.signature(draw)

    @functools.wraps(draw)
    def drawn(*args, **kwargs) -> None:
        try:
            draw(*args, **kwargs)
        except Exception as exc:  # whatever matplotlib or scikit-learn raise: the picture alone is lost
            log.warning("could not draw %s (%s: %s); the numbers are in metrics.json",
                        signature.bind(*args, **kwargs).arguments["path"], type(exc).__name__, exc)
    return drawn


def _legend_name(name: str) -> str:
    """``name`` as a legend shows it: matplotlib leaves out labels that begin with "_" (a class ``_other``)."""
    return "\u200b" + name if name.startswith("_") else name


@_file_or_warning
@_plain_text
def plot_curves(history_csv: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Loss and accuracy per epoch, training vs validation, from the run's ``history.csv``; a dashed line marks
    where a new training stage begins (e.g. fine-tuning after the head), whose jump is not a glitch."""
    with open(history_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{history_csv}: no epochs logged")
    epochs = [int(row["epoch"]) + 1 for row in rows]
    starts = [(epoch, row["stage"]) for i, (epoch, row) in enumerate(zip(epochs, rows))
              if row.get("stage") and (i == 0 or row["stage"] != rows[i - 1].get("stage"))]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        marker = "o" if len(rows) <= 30 else None  # a one-epoch stage is a point, which a line alone does not draw
        ax.plot(epochs, [float(row[metric]) for row in rows], label="training", marker=marker, markersize=3)
        ax.plot(epochs, [float(row[f"val_{metric}"]) for row in rows], label="validation", marker=marker,
                markersize=3)
        for epoch, stage in starts[1:]:
            ax.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.annotate(stage, (epoch - 0.5, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", color="grey", fontsize=8)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    _save(figure, path)


@_file_or_warning
@_plain_text
def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike[str],
                   title: str = "") -> None:
    """Counts of true (rows) vs called (columns) classes."""
    size = 3 + 0.6 * len(classes)
    figure, ax = plt.subplots(figsize=(size + 1, size))
    rotated = len(classes) > 3
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(classes)).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45 if rotated else "horizontal")
    if rotated:  # each name ends under its column instead of straddling two
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    ax.set_title(title)
    figure.tight_layout()
    _save(figure, path)


@_file_or_warning
def plot_roc(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], path: str | os.PathLike[str],
             title: str = "", positive: int | None = None) -> None:
    """ROC curve of the positive class (binary) or one-vs-rest per class, with AUC in the legend."""
    _save(roc_figure(labels, probabilities, classes, title, positive), path)


@_plain_text
def roc_figure(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], title: str = "",
               positive: int | None = None) -> Figure:
    """:func:`plot_roc`'s picture. Past ``LEGEND_INSIDE_MAX`` curves the legend goes beside the axes, not over
    them (20 classes' legend hid every curve), and colours come from a 20-colour palette, dashed after 20."""
    figure, ax = plt.subplots(figsize=(5.5, 5))
    shown = [positive] if positive is not None else range(len(classes))
    palette = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
    undefined = []
    for number, index in enumerate(shown):
        if np.any(labels == index) and not np.all(labels == index):
            style = {"color": palette(number % palette.N), "linestyle": "-" if number < palette.N else "--"}
            RocCurveDisplay.from_predictions(labels == index, probabilities[:, index],
                                             name=_legend_name(classes[index]), ax=ax, curve_kwargs=style)
        else:
            undefined.append(f"{classes[index]} ({'every image is one' if np.any(labels == index) else 'no images'})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    if undefined:  # else a missing curve, or an empty picture, reads as a model no better than chance
        ax.text(0.98, 0.02, "no curve for " + ", ".join(undefined),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="grey", wrap=True)
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)", title=title)
    figure.tight_layout()  # before the legend goes beside the axes, which it would otherwise shrink to fit
    if len(shown) > LEGEND_INSIDE_MAX:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small", frameon=False)
    return figure


@_file_or_warning
def plot_reliability(labels: np.ndarray, probabilities: np.ndarray | dict[str, np.ndarray], classes: Sequence[str],
                     path: str | os.PathLike[str], title: str = "", positive: int | None = None,
                     weights: np.ndarray | None = None) -> None:
    """Whether the model's probabilities mean what they say, in ten bins: for a binary model, how often the
    finding is there against the probability it was given (``positive``); otherwise, how often the most
    probable class is right against its probability. A dict of probabilities for the same images (legend name
    → probabilities) draws one curve each: before and after a calibration. ``weights`` count some images more
    than others (a site's stated prevalence)."""
    _save(reliability_figure(labels, probabilities, classes, title, positive, weights), path)


@_plain_text
def reliability_figure(labels: np.ndarray, probabilities: np.ndarray | dict[str, np.ndarray], classes: Sequence[str],
                       title: str = "", positive: int | None = None, weights: np.ndarray | None = None) -> Figure:
    """:func:`plot_reliability`'s picture."""
    if positive is not None:
        name = f"p({classes[positive]})"
        axis = (f"probability of {classes[positive]}", f"fraction that are {classes[positive]}")
    else:
        name = "most probable class"
        axis = ("probability of the most probable class", "fraction where it is right")
    curves = probabilities if isinstance(probabilities, dict) else {name: probabilities}
    figure, ax = plt.subplots(figsize=(5.5, 5))
    for curve, p in curves.items():
        truth, said = (labels == positive, p[:, positive]) if positive is not None else \
            (p.argmax(axis=1) == labels, p.max(axis=1))
        CalibrationDisplay(*reliability_curve(truth, said, weights), said).plot(ax=ax, name=_legend_name(curve))
    ax.set(xlabel=axis[0], ylabel=axis[1], title=title)
    figure.tight_layout()
    return figure


def reliability_curve(truth: np.ndarray, said: np.ndarray, weights: np.ndarray | None = None,
                      bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``calibration_curve`` (uniform bins; the fraction true and the mean probability of each
    bin that holds an image), with ``weights``, which it does not take."""
    weights = np.ones(len(truth)) if weights is None else np.asarray(weights, dtype=np.float64)
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], said)
    total = np.bincount(which, weights, minlength=bins)
    held = total > 0
    fraction = np.bincount(which, weights * truth, minlength=bins)[held] / total[held]
    return fraction, np.bincount(which, weights * said, minlength=bins)[held] / total[held]


def _save(figure: Figure, path: str | os.PathLike[str]) -> None:
    with atomic_write(Path(path), "wb") as handle:  # "tight": long class names and outside legends are not cut off
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
