"""One image, one process, end to end — what a clinician waits for: ``medclf-run image.jpg`` vs a seed-style
Keras script (import TensorFlow, load_model, decode, predict), and the floor: importing onnxruntime, OpenCV and
numpy, creating the session and running one inference."""

from __future__ import annotations

import subprocess
import sys

FLOOR = """
import sys
import cv2, numpy, onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
session.run(None, {session.get_inputs()[0].name: numpy.zeros(shape, numpy.uint8)})
"""

KERAS_SCRIPT = """
import sys
import numpy as np
import keras
model = keras.models.load_model(sys.argv[1])
size = model.input_shape[1:3]
image = keras.utils.img_to_array(keras.utils.load_img(sys.argv[2], target_size=size))
print(model.predict(image[None], verbose=0).argmax())
"""


def run(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, capture_output=True, timeout=300)


def test_oneshot_medclf_run(benchmark, image_paths):
    benchmark.pedantic(run, args=("-m", "medclf.runtime.cli", image_paths[0]), rounds=5, warmup_rounds=1)


def test_oneshot_floor(benchmark, classifier):
    benchmark.pedantic(run, args=("-c", FLOOR, str(classifier.model_path)), rounds=5, warmup_rounds=1)


def test_oneshot_keras_script(benchmark, keras_file, image_paths):
    benchmark.pedantic(run, args=("-c", KERAS_SCRIPT, str(keras_file), image_paths[0]), rounds=2, warmup_rounds=0)
