"""Heatmap drawing shared by Grad-CAM (Keras) and the ONNX ``cam`` output: no TensorFlow needed."""

from __future__ import annotations

import numpy as np

from medclf.runtime.cam import heatmaps, overlay


def test_the_overlay_is_enlarged_to_be_readable_and_keeps_the_image_aspect():
    picture = overlay(np.zeros((40, 80, 1), np.uint8), np.ones((40, 80), np.float32))
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert picture.shape[0] >= 320 and picture.shape[1] == 2 * picture.shape[0]


def test_heatmaps_keep_positive_evidence_scaled_to_each_maps_peak():
    maps = np.array([[[-1.0, 2.0], [0.0, 4.0]], [[-3.0, -1.0], [-2.0, -5.0]]], np.float32)
    heat = heatmaps(maps, 8, 8)
    assert heat.shape == (2, 8, 8) and heat[0].max() == 1.0 and heat[0].min() == 0.0
    assert heat[0, -1, -1] == 1.0 and heat[0, 0, 0] == 0.0  # the strongest corner stays the strongest
    assert not heat[1].any()  # no positive evidence anywhere: an empty map, not noise scaled up


def test_a_heatmap_is_named_after_any_file_name_even_one_that_is_not_utf8():
    import os

    from medclf.runtime.cam import overlay_name

    name = overlay_name(os.fsdecode(b"/share/r\xe9sultat.jpeg"), "NORMAL", "cam")
    assert name.startswith("r\udce9sultat-") and name.endswith(".NORMAL.cam.png")
    same_stems = {overlay_name(path, "NORMAL", "gradcam") for path in ("a/scan.jpg", "b/scan.jpg", "a/scan.png")}
    assert len(same_stems) == 3
    assert "/" not in overlay_name("scan.png", "ER+/PR+", "cam")  # a label a sheet gives: one file, no folder


def test_a_heatmap_of_a_file_with_a_name_near_the_limit_can_still_be_written(tmp_path):
    """Names up to 255 bytes are legal; with the hash, label and suffix added, writing the heatmap failed."""
    import numpy as np

    from medclf.runtime.atomic import write_image
    from medclf.runtime.cam import overlay_name

    for stem in ("x" * 250, "é" * 120):
        names = {overlay_name(str(tmp_path / f"{stem}{n}.jpg"), "PNEUMONIA", "gradcam") for n in range(2)}
        assert len(names) == 2
        for name in names:
            assert len(name.encode()) <= 255 and name.endswith(".PNEUMONIA.gradcam.png")
            write_image(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    long_classes = ["肺" * 80, "肺" * 79 + "炎"]  # 240-byte class names: no heatmap could be written
    names = {overlay_name(str(tmp_path / "scan.jpg"), label, "gradcam") for label in long_classes}
    assert len(names) == 2  # still one per class
    for name in names:
        assert len(name.encode()) <= 255 and name.startswith("scan-")
        write_image(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    from medclf.runtime.inputs import list_images

    assert not [path for path in list_images(tmp_path) if path.name in names]  # still known for overlays
