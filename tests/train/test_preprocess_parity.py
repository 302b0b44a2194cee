"""Preprocessing parity on real images: runtime resize == TensorFlow's bilinear resize, to the grey level."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from medclf.runtime.preprocess import Preprocess, decode_image, resize


def test_opencv_float_resize_matches_tensorflow_bilinear(blood_cell_images, chest_xray):
    xray = next((chest_xray / "test" / "NORMAL").iterdir())
    for path, size in [(blood_cell_images[0], (160, 160)), (blood_cell_images[-1], (96, 128)), (xray, (100, 100))]:
        decoded = decode_image(path.read_bytes(), str(path))
        ours = resize(decoded, Preprocess(*size)).astype(np.float64)
        theirs = tf.image.resize(decoded.astype(np.float32), size, method="bilinear", antialias=False).numpy()
        theirs = np.clip(np.rint(theirs), 0, 255)
        assert np.abs(ours - theirs).max() <= 1, path
        assert np.abs(ours - theirs).mean() < 0.01, path
