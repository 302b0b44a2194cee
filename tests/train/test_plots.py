"""The pictures: readable with many classes and long class names, not only with the seeds' two to four; the
reliability curve shows whether probabilities mean what they say."""

from __future__ import annotations

import cv2
import numpy as np

from medclf.train.plots import plot_confusion, plot_reliability, plot_roc, reliability_figure, roc_figure

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


def test_the_reliability_curve_follows_the_diagonal_for_honest_probabilities_and_not_for_shy_ones():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 4000)
    labels = (rng.uniform(0, 1, 4000) < p).astype(int)  # the finding is there as often as its probability says
    honest = np.stack([1 - p, p], axis=1)
    shy = np.stack([0.75 - p / 2, 0.25 + p / 2], axis=1)  # the same ranking, half as sure
    deviations = []
    for probabilities in (honest, shy):
        figure = reliability_figure(labels, probabilities, ["NORMAL", "PNEUMONIA"], positive=1)
        curve = next(line for line in figure.axes[0].get_lines() if line.get_label() == "p(PNEUMONIA)")
        said, seen = curve.get_data()
        deviations.append(np.max(np.abs(np.asarray(seen) - np.asarray(said))))
        assert figure.axes[0].get_xlabel() == "probability of PNEUMONIA"
    assert deviations[0] < 0.06 < 0.15 < deviations[1]


def test_the_reliability_curve_is_scikit_learns_and_weighs_an_image_as_so_many_copies_of_it():
    from sklearn.calibration import calibration_curve

    from medclf.train.plots import reliability_curve

    rng = np.random.default_rng(1)
    said = np.concatenate([rng.uniform(0, 1, 300), [0.0, 0.1, 0.5, 1.0]])  # bin edges land where sklearn puts them
    truth = rng.uniform(0, 1, 304) < said
    np.testing.assert_allclose(reliability_curve(truth, said), calibration_curve(truth, said, n_bins=10))
    weights = rng.integers(1, 4, 304)
    copies = np.repeat(np.arange(304), weights)
    np.testing.assert_allclose(reliability_curve(truth, said, weights),
                               calibration_curve(truth[copies], said[copies], n_bins=10))


def test_a_multi_class_reliability_curve_judges_the_most_probable_class(tmp_path):
    labels, probabilities = scores(classes=4)
    plot_reliability(labels, probabilities, CLASSES[:4], tmp_path / "calibration.png", "validation")
    assert cv2.imread(str(tmp_path / "calibration.png")) is not None
    figure = reliability_figure(labels, probabilities, CLASSES[:4])
    assert figure.axes[0].get_ylabel() == "fraction where it is right"


def test_class_names_are_drawn_as_written_not_as_math_and_none_leaves_the_legend(tmp_path):
    """A folder named "$x^$" stopped a run after fitting (matplotlib parsed it as math); a class "_other" had a
    curve and no legend entry (matplotlib leaves out labels that begin with "_")."""
    labels, probabilities = scores(classes=3)
    names = ["$x^$", "_other", "50% $ off"]
    figure = roc_figure(labels, probabilities, names)
    plot_confusion(np.eye(3, dtype=int) * 5, names, tmp_path / "confusion.png")
    plot_roc(labels, probabilities, names, tmp_path / "roc.png")
    shown = [text.get_text().lstrip("\u200b") for text in figure.axes[0].get_legend().get_texts()]
    assert [name.split(" (AUC")[0] for name in shown] == names


def test_a_class_without_a_curve_is_named_on_the_picture_not_left_out_in_silence():
    """Test films of one class only drew the chance diagonal alone, which reads as a model no better than it."""
    labels, probabilities = scores(classes=2)
    figure = roc_figure(np.zeros_like(labels), probabilities, ["NORMAL", "PNEUMONIA"], positive=1)
    assert "no curve for PNEUMONIA (no images)" in [text.get_text() for text in figure.axes[0].texts]


def test_a_one_epoch_run_still_draws_its_points(tmp_path, monkeypatch):
    """A line through one point draws nothing: the picture of a one-epoch stage held axes and legends alone."""
    from medclf.train import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure))
    history = tmp_path / "history.csv"
    history.write_text("epoch,accuracy,loss,val_accuracy,val_loss,stage\n0,0.5,0.9,0.6,0.8,head\n")
    plots.plot_curves(history, tmp_path / "curves.png")
    lines = [line for ax in drawn[0].axes for line in ax.get_lines()]
    assert len(lines) == 4 and all(line.get_marker() == "o" for line in lines)
