"""The pictures: readable with many classes and long class names, not only with the seeds' two to four."""

from __future__ import annotations

import cv2
import numpy as np

from medclf.train.plots import plot_confusion, plot_roc, roc_figure

CLASSES = [f"class_with_a_long_descriptive_name_{i}" for i in range(20)]


def scores(count: int = 400, classes: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, count)
    probabilities = rng.dirichlet(np.ones(classes), count)
    probabilities[np.arange(count), labels] += 0.04  # a little signal, so the curves differ
    return labels, probabilities / probabilities.sum(1, keepdims=True)


def test_twenty_classes_roc_legend_sits_beside_the_curves_and_every_curve_has_its_own_colour():
    figure = roc_figure(*scores(), CLASSES, "validation")
    figure.canvas.draw()
    ax = figure.axes[0]
    legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes_box.x1  # beside the axes, hiding none of them
    curves = [line for line in ax.get_lines() if not line.get_label().startswith("_")]  # not the chance line
    assert len(curves) == 20 and len({(line.get_color(), line.get_linestyle()) for line in curves}) == 20


def test_a_binary_roc_keeps_its_legend_inside():
    labels, probabilities = scores(classes=2)
    figure = roc_figure(labels, probabilities, ["NORMAL", "PNEUMONIA"], positive=1)
    figure.canvas.draw()
    ax = figure.axes[0]
    assert ax.get_window_extent().contains(*ax.get_legend().get_window_extent().get_points().mean(0))


def test_saved_pictures_take_in_their_legend_and_long_labels(tmp_path):
    labels, probabilities = scores()
    plot_roc(labels, probabilities, CLASSES, tmp_path / "roc.png", "validation")
    height, width = cv2.imread(str(tmp_path / "roc.png")).shape[:2]
    assert width > 1.5 * height  # the legend beside the 5.5x5-inch axes is in the file, not cut off
    matrix = np.bincount(labels * 20 + probabilities.argmax(1), minlength=400).reshape(20, 20)
    plot_confusion(matrix, CLASSES, tmp_path / "confusion.png", "validation")
    grey = cv2.imread(str(tmp_path / "confusion.png"), cv2.IMREAD_GRAYSCALE)
    assert (grey[:, :3] == 255).all() and (grey[:, -3:] == 255).all()  # a white margin: no label runs off
