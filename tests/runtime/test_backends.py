"""Backends: the CPU always; GPU ones only where they really start — never a silent fall back to the CPU.

GPU backends are tested on a machine with onnxruntime-gpu and an NVIDIA GPU; elsewhere those tests skip.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from medclf.runtime import DEFAULT_MODEL, Classifier, load_image
from medclf.runtime import backends
from medclf.runtime.backends import (BOTH_BUILDS_HINT, GPU_HINT, BackendUnavailable, gpu_hint, gpu_ready,
                                     open_backend)
from medclf.runtime.describe import file_sha256

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the packaged default model is missing")
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
CUDA_USABLE = gpu_ready("cuda")  # onnxruntime-gpu lists CUDA wherever it is installed; a GPU machine has its libraries
gpu_only = pytest.mark.skipif(not CUDA_USABLE, reason="onnxruntime-gpu with CUDA's libraries is not installed here "
                                                      "(GPU machines only)")


def test_cpu_is_the_default_and_says_nothing():
    backend = open_backend(DEFAULT_MODEL)
    assert backend.name == "cpu" and backend.note == ""


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_auto_says_which_backend_it_chose_and_why_the_others_were_passed_over(monkeypatch):
    monkeypatch.setattr(backends, "nvidia_gpu", lambda: True)  # a GPU machine with the CPU build of onnxruntime
    backend = open_backend(DEFAULT_MODEL, "auto")
    assert backend.name == "cpu"
    assert backend.note.startswith("backend cpu (auto); passed over tensorrt: TensorRT is not installed")
    assert "cuda: this onnxruntime has no CUDAExecutionProvider" in backend.note
    assert backend.note.count(GPU_HINT) == 1


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_on_a_machine_without_an_nvidia_gpu_auto_says_so_in_four_words(monkeypatch):
    monkeypatch.setattr(backends, "nvidia_gpu", lambda: False)
    backend = open_backend(DEFAULT_MODEL, "auto")
    assert backend.name == "cpu" and backend.note == "backend cpu (auto): no NVIDIA GPU here"


def test_the_gpu_hint_knows_onnxruntimes_two_builds_cannot_share_one_environment(tmp_path):
    """The CPU and GPU builds unpack into one ``onnxruntime`` folder. ``pip install 'medclf[gpu]'`` leaves both,
    and then no GPU provider is listed; installing onnxruntime-gpu again, the usual advice, would change nothing."""
    def site(*installed: tuple[str, str]) -> list[str]:
        folder = tmp_path / "-".join(name for name, _ in installed)
        for name, version in installed:  # as pip writes them: onnxruntime_gpu-1.31.1.dist-info, Name: onnxruntime-gpu
            info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
            info.mkdir(parents=True)
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        return [str(folder)]

    assert gpu_hint(site(("onnxruntime", "1.32.0"), ("onnxruntime-gpu", "1.31.1"))) == BOTH_BUILDS_HINT
    assert gpu_hint(site(("onnxruntime", "1.32.0"))) == GPU_HINT
    assert "pip uninstall -y onnxruntime &&" in BOTH_BUILDS_HINT and "--force-reinstall" in BOTH_BUILDS_HINT


def test_auto_without_tensorrt_does_not_load_the_engine_code():
    """Every one-shot run starts with auto's question "is TensorRT here?"; answering it must stay cheap."""
    code = ("import sys\nfrom medclf.runtime import Classifier\nClassifier(backend='auto')\n"
            "print('tensorrt' in sys.modules, 'medclf.runtime.tensorrt_engine' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    has_tensorrt, loaded_engine_code = done.stdout.split()
    assert loaded_engine_code == has_tensorrt  # loaded only where TensorRT is installed


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
@pytest.mark.parametrize("name", ["cuda", "ort-tensorrt", "tensorrt"])
def test_a_requested_backend_that_cannot_start_is_an_error_not_a_fallback(name):
    with pytest.raises(BackendUnavailable, match=f"^{name}: "):
        Classifier(DEFAULT_MODEL, backend=name)


def test_medclf_run_reports_an_unavailable_backend_with_exit_2(blood_cell_images):
    if HAS_CUDA:
        pytest.skip("this onnxruntime has CUDA")
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--backend", "cuda",
                           str(blood_cell_images[0])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error: cuda: this onnxruntime has no CUDAExecutionProvider" in done.stderr
    assert done.stdout == ""


def test_the_cuda_provider_keeps_fp32_exact_and_the_tensorrt_provider_caches_its_engines(tmp_path, monkeypatch):
    """TF32 moved FP32 probabilities by 1.2e-2 on an H200 (tolerance 1e-4); a TensorRT EP without an engine cache
    rebuilds its engines on every start. Pinned here because only a GPU machine would notice either."""
    from medclf.runtime.backends import _providers

    monkeypatch.setenv("MEDCLF_CACHE", str(tmp_path))
    cuda = ("CUDAExecutionProvider", {"use_tf32": "0"})
    assert _providers("cuda", DEFAULT_MODEL) == [cuda, "CPUExecutionProvider"]
    tensorrt, *rest = _providers("ort-tensorrt", DEFAULT_MODEL)
    assert rest == [cuda, "CPUExecutionProvider"]  # what TensorRT cannot take runs on CUDA, not the CPU
    assert tensorrt[0] == "TensorrtExecutionProvider" and tensorrt[1]["trt_engine_cache_enable"] == "True"
    cache = tmp_path / "ort-tensorrt" / file_sha256(DEFAULT_MODEL)[:16]
    assert tensorrt[1]["trt_engine_cache_path"] == str(cache) and cache.is_dir()
    assert _providers("cpu", DEFAULT_MODEL) == ["CPUExecutionProvider"]


def test_each_model_file_has_its_own_tensorrt_provider_engine_cache(tmp_path, monkeypatch):
    """onnxruntime names a cached engine by the graph's node names and the file's name, not its weights: a second
    training of the same architecture, also ``model.onnx``, was served the first one's engine — its weights'
    answers under the second model's labels."""
    from medclf.runtime.backends import _providers

    monkeypatch.setenv("MEDCLF_CACHE", str(tmp_path / "cache"))
    retrained = tmp_path / "b" / "model.onnx"
    retrained.parent.mkdir()
    retrained.write_bytes(DEFAULT_MODEL.read_bytes()[:-1] + b"\0")  # the same names, other bytes
    first, second = (_providers("ort-tensorrt", path)[0][1]["trt_engine_cache_path"]
                     for path in (DEFAULT_MODEL, retrained))
    assert first != second


def test_the_tensorrt_provider_allows_the_precision_the_file_was_exported_in(tmp_path, monkeypatch):
    """TensorRT keeps an FP16 or INT8 (QDQ) file's layers at that precision only where its builder flag allows
    it, and an FP32 file must not get FP16 kernels (FP32's tolerance is 1e-4)."""
    from medclf.runtime import DEFAULT_MODEL
    from medclf.runtime.backends import _precision, _providers

    monkeypatch.setenv("MEDCLF_CACHE", str(tmp_path))
    flags = {precision: {key: value for key, value in _providers("ort-tensorrt", DEFAULT_MODEL, precision)[0][1].items()
                         if key in ("trt_fp16_enable", "trt_int8_enable")} for precision in ("fp32", "fp16", "int8")}
    assert flags == {"fp32": {}, "fp16": {"trt_fp16_enable": "True"}, "int8": {"trt_int8_enable": "True"}}
    assert _precision(DEFAULT_MODEL) == "fp32"  # read from the file's model card before any GPU session


def test_the_tensorrt_provider_builds_one_engine_for_every_batch_the_runtime_sends(tmp_path, monkeypatch):
    """Without an explicit profile the TensorRT EP builds for the batch sizes seen so far and rebuilds (a minute
    or more) when a larger one comes; batches past the profile's largest are run in parts."""
    import dataclasses

    import numpy as np

    from medclf.runtime import Classifier
    from medclf.runtime.backends import ORT_TENSORRT_PROFILE, _providers

    monkeypatch.setenv("MEDCLF_CACHE", str(tmp_path))
    options = _providers("ort-tensorrt", DEFAULT_MODEL, "fp32", (128, 128, 3))[0][1]
    assert {key: value for key, value in options.items() if key.startswith("trt_profile")} == {
        "trt_profile_min_shapes": "image:1x128x128x3", "trt_profile_opt_shapes": "image:32x128x128x3",
        "trt_profile_max_shapes": "image:64x128x128x3"}
    assert options["trt_engine_cache_path"].endswith("-batch-1-32-64")  # not an engine built without the profile
    sizes, classifier = [], Classifier(DEFAULT_MODEL)
    session = classifier.backend.run

    def recorded(names, batch):  # the real session, given at most the profile's largest batch at a time
        sizes.append(len(batch))
        return session(names, batch)

    classifier.backend = dataclasses.replace(classifier.backend, most_images=ORT_TENSORRT_PROFILE["max"],
                                             run=recorded)
    images = np.random.default_rng(0).integers(0, 255, (150, *classifier.card.preprocess.shape), dtype=np.uint8)
    np.testing.assert_allclose(classifier.predict(images), Classifier(DEFAULT_MODEL).predict(images), atol=1e-5)
    assert sizes == [64, 64, 22]


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'npu'"):
        open_backend(DEFAULT_MODEL, "npu")


@gpu_only
def test_cuda_really_runs_on_the_gpu_and_matches_the_cpu(blood_cell_images):
    gpu, cpu = Classifier(DEFAULT_MODEL, backend="cuda"), Classifier(DEFAULT_MODEL)
    images = np.stack([load_image(p, cpu.card.preprocess) for p in blood_cell_images])
    np.testing.assert_allclose(gpu.predict(images), cpu.predict(images), atol=1e-4)


@gpu_only
@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_on_a_gpu_without_tensorrt_auto_picks_cuda_and_names_the_missing_tensorrt_library():
    backend = open_backend(DEFAULT_MODEL, "auto")
    assert backend.name == "cuda"
    assert backend.note.startswith("backend cuda (auto); passed over tensorrt: TensorRT is not installed")
    assert "ort-tensorrt: onnxruntime cannot start TensorrtExecutionProvider (missing library libnvinfer" in \
        backend.note


@gpu_only
@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_onnxruntimes_tensorrt_provider_without_tensorrt_is_an_error_naming_the_library():
    with pytest.raises(BackendUnavailable, match=r"^ort-tensorrt: .*\(missing library libnvinfer\.so\.\d+\)"):
        Classifier(DEFAULT_MODEL, backend="ort-tensorrt")


@pytest.mark.skipif(not HAS_CUDA or CUDA_USABLE, reason="needs onnxruntime-gpu on a machine without CUDA's libraries")
def test_onnxruntime_gpu_without_cuda_names_the_missing_library_and_keeps_stdout_for_results(blood_cell_images):
    """onnxruntime prints what it cannot load on stdout; ``--json`` lines must stay parseable all the same. (Two
    images: with one, auto goes to the CPU without trying the GPU.)"""
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--backend", "auto", "--json",
                           *map(str, blood_cell_images[:2])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[0])["path"] == str(blood_cell_images[0])
    assert "cuda: onnxruntime cannot start CUDAExecutionProvider (missing library libcublas" in done.stderr
