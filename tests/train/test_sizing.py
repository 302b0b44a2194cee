"""A dataset larger than the budget affords trains on a sample that fits: rare classes whole, the cut said."""

from __future__ import annotations

import cv2
import numpy as np

from medclf.runtime import Preprocess
from medclf.train.architectures import get_architecture
from medclf.train.budget import TimeBudget
from medclf.train.data import ImageFolder, read_folder
from medclf.train.sizing import (MIN_TRAIN_IMAGES, Speed, affordable_images, fit_to_budget,
                                 proportional, trimmed)
from medclf.train.splits import Splits


def folder_of(counts: list[int]) -> ImageFolder:
    labels = np.repeat(np.arange(len(counts)), counts)
    classes = tuple(f"c{k}" for k in range(len(counts)))
    return ImageFolder(tuple(f"{i}.png" for i in range(len(labels))), labels, classes)


def test_the_images_afforded_are_one_pass_in_a_share_of_the_time_left_within_memory_and_never_too_few():
    speed = Speed(decode=0.001, model=0.004)
    assert affordable_images(speed, seconds_left=1000, bytes_each=100) == 25_000  # 0.15 * 1000 / 0.005 = 30,000
    assert affordable_images(speed, seconds_left=1e9, bytes_each=2**20) == 4_000  # 4 GiB of 1 MiB images: 4,096
    assert affordable_images(speed, seconds_left=-5, bytes_each=100) == MIN_TRAIN_IMAGES


def test_timings_a_tenth_apart_afford_the_same_images_so_a_rerun_reuses_its_cache():
    """The count followed the timing: every run drew another sample, decoded and cached it anew (up to 4 GiB)."""
    counts = {affordable_images(Speed(decode=0.002, model=0.008 * slower), 600, 100) for slower in (1.0, 1.05, 1.1)}
    assert counts == {8_000}  # 9,000, 8,571 and 8,182 afforded
    assert affordable_images(Speed(decode=0.002, model=0.008), 600, 100, available=8_500) == 8_500  # all fit: all


def test_trimming_cuts_the_largest_classes_first_and_keeps_rare_ones_whole():
    kept = trimmed(folder_of([5000, 300, 50]), 1000, seed=0)
    assert np.bincount(kept.labels).tolist() == [650, 300, 50]
    small = folder_of([20, 10])
    assert trimmed(small, 1000, seed=0) is small


def test_validation_is_cut_in_the_classes_proportions_keeping_one_of_each():
    kept = proportional(folder_of([4000, 1000, 3]), 500, seed=0)
    assert np.bincount(kept.labels).tolist() == [400, 100, 1]


def test_a_run_that_cannot_afford_its_training_images_trims_them_and_says_so(blood_cells):
    train, val = read_folder(blood_cells / "TRAIN"), read_folder(blood_cells / "TEST")
    splits = Splits(train=train, val=val)
    preprocess = Preprocess(32, 32)
    model = get_architecture("mobilenet_025").build(preprocess.shape, 4, pretrained=False)
    budget = TimeBudget(minutes=0.01)  # under a second: only the minimum fits

    fitted = fit_to_budget(splits, preprocess, model, budget, seed=0)
    assert len(fitted.train) == MIN_TRAIN_IMAGES and np.bincount(fitted.train.labels).tolist() == [250] * 4
    assert fitted.val is val  # 2,487 validation images: under the cap
    assert budget.reserved > 0  # scoring the validation images is set aside
    assert budget.cuts == [next(cut for cut in budget.cuts if cut.startswith(f"training on 1,000 of {len(train):,}"))]

    unlimited = TimeBudget(minutes=None)
    assert fit_to_budget(splits, preprocess, model, unlimited, seed=0) is splits and unlimited.reserved == 0


def test_timing_a_sample_leaves_reporting_bad_files_to_the_full_pass(tmp_path, capsys):
    from medclf.train.sizing import measure_speed

    good = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), good)
        (tmp_path / name / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    model = get_architecture("small_cnn").build((32, 32, 3), 2, False)

    speed = measure_speed(read_folder(tmp_path), Preprocess(32, 32), model, seed=0)
    assert speed.decode > 0 and speed.model > 0
    assert capsys.readouterr().err == ""


def test_a_sample_of_which_nothing_can_be_read_stops_the_run_naming_a_file_and_why(tmp_path):
    import pytest

    from medclf.train.data import DatasetError
    from medclf.train.sizing import measure_speed

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            (tmp_path / name / f"{i}.jpg").write_text("not an image")
    model = get_architecture("small_cnn").build((32, 32, 3), 2, False)
    with pytest.raises(DatasetError, match=r"^timing the model on 6 training images drawn at random: none of the 6 "
                                           r"images could be read \(the first, .*[/\\]a[/\\]0\.jpg: .+\)$"):
        measure_speed(read_folder(tmp_path), Preprocess(32, 32), model, seed=0)
