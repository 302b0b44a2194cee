"""Segmentation masks shipped beside the images they outline are told apart by their twin, never by name alone."""

from __future__ import annotations

from pathlib import Path

from medclf.runtime.annotations import dataset_masks, segmentation_masks

ROOT = Path("/data/benign")


def masks_among(*names: str, root: Path = ROOT) -> set[str]:
    return {str(path.relative_to(root)) for path in segmentation_masks([root / name for name in names], root)}


def test_a_mask_named_after_the_image_beside_it_is_a_mask():
    """The breast ultrasound set (BUSI) files ``benign (1)_mask.png`` (and ``_mask_1`` for a second lesion)."""
    assert masks_among("benign (1).png", "benign (1)_mask.png", "benign (1)_mask_1.png", "benign (2).png") == {
        "benign (1)_mask.png", "benign (1)_mask_1.png"}


def test_other_mask_words_and_prefixes():
    assert masks_among("ISIC_0000000.jpg", "ISIC_0000000_segmentation.png") == {"ISIC_0000000_segmentation.png"}
    assert masks_among("scan-7.png", "scan-7-GT.png", "mask_scan-8.png", "scan-8.png") == {
        "scan-7-GT.png", "mask_scan-8.png"}


def test_a_mask_folder_beside_an_images_folder_holds_masks():
    """The COVID-19 radiography database: ``COVID/images/COVID-1.png`` and ``COVID/masks/COVID-1.png``;
    QaTa-COV19: ``Ground-truths/mask_<name>.png``."""
    assert masks_among("images/COVID-1.png", "images/COVID-2.png", "masks/COVID-1.png", "masks/COVID-2.png") == {
        "masks/COVID-1.png", "masks/COVID-2.png"}
    assert masks_among("Images/sub-S1.png", "Ground-truths/mask_sub-S1.png") == {"Ground-truths/mask_sub-S1.png"}


def test_a_mask_word_without_its_twin_is_an_image():
    """A face-mask dataset's photos are ``with_mask_12.jpg``; an image of a mask-named study is still an image."""
    assert masks_among("with_mask_1.jpg", "with_mask_2.jpg") == set()
    assert masks_among("masks/COVID-3.png", "images/COVID-1.png") == set()
    assert masks_among("lesion_mask.png", "other.png") == set()


def test_a_dataset_looks_for_twins_within_each_class():
    """``a/x.png`` does not make ``b/x_mask.png`` a mask; ``b/y_mask.png`` beside ``b/y.png`` is one."""
    root = Path("/data")
    paths = [root / name for name in ("a/x.png", "b/x_mask.png", "b/y.png", "b/y_mask.png", "loose.png")]
    assert dataset_masks(paths, root) == {root / "b/y_mask.png"}
