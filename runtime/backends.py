"""Where a model runs: onnxruntime on the CPU, its CUDA or TensorRT execution providers, or a native TensorRT
engine — each behind one small interface, ``run(output_names, images) → outputs``.

onnxruntime-gpu lists the CUDA provider even where CUDA cannot load, then quietly runs on the CPU; so a
session is checked with ``get_providers()`` after it is made, and a backend that did not really start is an
error naming what is missing. ``auto`` tries TensorRT, onnxruntime's TensorRT EP, CUDA, then the CPU, and
says once which it chose and why the others were passed over.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .cache import default_cache_dir
from .modelcard import INPUT_NAME, OUTPUT_NAME, ModelCard, ModelCardError
from .optimized import optimized_session

BACKENDS = ("auto", "cpu", "cuda", "ort-tensorrt", "tensorrt")
AUTO_ORDER = ("tensorrt", "ort-tensorrt", "cuda", "cpu")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "ort-tensorrt": "TensorrtExecutionProvider"}
# TF32 off: with it (the CUDA EP's default on Ampere and later) FP32 probabilities moved by up to 1.2e-2 on an H200,
# 100x the FP32 tolerance; without it 3e-6, at 10% of the batch-64 speed and none of batch 1's. FP16 is the fast path.
CUDA_OPTIONS = {"use_tf32": "0"}
# The TensorRT EP builds weakly typed networks, which keep an ONNX file's FP16 or INT8 (QDQ) layers at that
# precision only where the builder flag allows it; an FP32 file gets neither, so TensorRT keeps it FP32.
TENSORRT_PRECISION_OPTIONS = {"fp32": {}, "fp16": {"trt_fp16_enable": "True"}, "int8": {"trt_int8_enable": "True"}}
# The batch sizes the TensorRT EP's engines take (1 to 64, tuned for the runtime's batches of 32); larger batches
# are run in parts. Native engines have their own, set at export (``--batch-profile``).
ORT_TENSORRT_PROFILE = {"min": 1, "opt": 32, "max": 64}
PROVIDER_LIBRARIES = {"cuda": "libonnxruntime_providers_cuda.so",
                      "ort-tensorrt": "libonnxruntime_providers_tensorrt.so"}
# onnxruntime's CPU and GPU builds are two distributions that unpack into one ``onnxruntime`` folder, file over file;
# with both installed (what ``pip install 'medclf[gpu]'`` leaves: medclf needs onnxruntime, and pip cannot know the
# GPU build provides it) the CPU build's files won here, and no GPU provider was listed (onnxruntime 1.32.0 with
# onnxruntime-gpu 1.31.1). Uninstalling one of them then breaks the other, so the GPU build is reinstalled after.
TO_GPU_BUILD = "pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu"
GPU_HINT = f"on a machine with an NVIDIA GPU, replace onnxruntime by its GPU build: {TO_GPU_BUILD}"
BOTH_BUILDS_HINT = ("onnxruntime and onnxruntime-gpu are both installed and share one folder, where the CPU build's "
                    f"files hide the GPU build's: {TO_GPU_BUILD}")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says which library or device is missing."""


@dataclass(frozen=True)
class Backend:
    name: str
    run: Callable[[list[str], np.ndarray], list[np.ndarray]]  # output names, uint8 batch → outputs
    metadata: dict[str, str]  # the ONNX file's metadata_props (the model card)
    note: str = ""  # for auto: why this one was chosen
    classes: int | None = None  # the width of its probabilities, where the file fixes it
    most_images: int | None = None  # the largest batch it takes (an engine's profile), else any


def open_backend(model: Path, name: str = "cpu", threads: int = 1, spin: bool = True,
                 reuse_optimized: bool = False) -> Backend:
    """Start ``name`` for ``model``; ``auto`` picks the first that starts, in :data:`AUTO_ORDER`.

    ``spin``: onnxruntime's worker threads busy-wait between operators. That cuts batch-1 latency by a fifth
    (2.0 vs 2.5 ms, MobileNetV2 160 px, 2 cores), but while other threads decode images on the same cores the
    spinning takes their CPU (a 256-image folder: 0.71 s spinning, 0.67 s not). ``reuse_optimized``: the CPU
    starts from the graph onnxruntime optimized for this machine last time (:mod:`.optimized`)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name != "auto":
        return _open(model, name, threads, spin, reuse_optimized)
    passed_over = []
    for candidate in AUTO_ORDER:
        try:
            backend = _open(model, candidate, threads, spin, reuse_optimized)
        except BackendUnavailable as exc:
            passed_over.append(str(exc).split("; ")[0])  # the reason; the install hint is said once below
            continue
        note = f"backend {candidate} (auto)"
        if passed_over and candidate == "cpu" and not nvidia_gpu():  # why no GPU backend started is beside the point
            note += ": no NVIDIA GPU here"
        elif passed_over:
            hint = candidate == "cpu" and not gpu_listed()
            note += f"; passed over {', '.join(passed_over)}" + (f" ({gpu_hint()})" if hint else "")
        return replace(backend, note=note)
    raise BackendUnavailable("; ".join(passed_over))  # unreachable while the CPU provider exists


def nvidia_gpu() -> bool:
    """Whether this machine shows an NVIDIA GPU: its driver's devices (a workstation's ``/dev/nvidia0``, a Jetson's
    ``/dev/nvhost-ctrl-gpu``), a Jetson's device tree, or ``nvidia-smi``. Where none shows, ``auto`` says so in
    four words instead of why each GPU backend could not start and how to install one."""
    devices = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu", "/proc/driver/nvidia/gpus")
    if any(os.path.exists(path) for path in devices) or shutil.which("nvidia-smi"):
        return True
    try:
        with open("/proc/device-tree/compatible", "rb") as tree:
            return b"nvidia,tegra" in tree.read()
    except OSError:
        return False


def gpu_listed() -> bool:
    """Whether this onnxruntime lists a GPU provider (onnxruntime-gpu does, even where it cannot start one)."""
    return any(PROVIDERS[name] in ort.get_available_providers() for name in ("cuda", "ort-tensorrt"))


def gpu_hint(paths: list[str] | None = None) -> str:
    """What to do for onnxruntime's GPU providers where this onnxruntime lists none, knowing which of its builds
    are installed (looked up on ``paths``, default ``sys.path``)."""
    import importlib.metadata  # here, not at the top: 10 ms that a one-shot run on the CPU never needs

    where = {} if paths is None else {"path": paths}

    def installed(name: str) -> bool:
        return next(iter(importlib.metadata.Distribution.discover(name=name, **where)), None) is not None
    return BOTH_BUILDS_HINT if installed("onnxruntime") and installed("onnxruntime-gpu") else GPU_HINT


def gpu_ready(name: str = "cuda") -> bool:
    """Whether onnxruntime here can start the GPU provider ``name`` ("cuda" or "ort-tensorrt"): listed, and
    its libraries load. Asked without making a session."""
    if PROVIDERS[name] not in ort.get_available_providers():
        return False
    _preload_gpu_libraries()
    return missing_library(name) is None


def _open(model: Path, name: str, threads: int, spin: bool, reuse_optimized: bool = False) -> Backend:
    return _tensorrt(model) if name == "tensorrt" else _onnxruntime(model, name, threads, spin, reuse_optimized)


def _onnxruntime(model: Path, name: str, threads: int, spin: bool, reuse_optimized: bool = False) -> Backend:
    provider = PROVIDERS[name]
    if provider not in ort.get_available_providers():
        raise BackendUnavailable(f"{name}: this onnxruntime has no {provider}; {gpu_hint()}")
    if name != "cpu":
        _preload_gpu_libraries()
        if name == "ort-tensorrt":
            _preload_tensorrt()
            # TF32 off, as the CUDA EP and native engines run: the TensorRT EP has no option for it, but TensorRT
            # reads this when it builds (a user's own setting stands)
            os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
        if missing := missing_library(name):  # asked first: a failed TensorRT EP prints its error on stdout
            raise BackendUnavailable(f"{name}: onnxruntime cannot start {provider} (missing library {missing})")
    card = ModelCard.from_metadata(_metadata(model), str(model)) if name == "ort-tensorrt" else None
    try:
        providers = _providers(name, model, *((card.precision, card.preprocess.shape) if card else ()))
    except OSError as exc:  # the TensorRT EP's engine cache cannot be made
        raise BackendUnavailable(f"{name}: its engine cache cannot be written ({exc})") from None
    try:
        session = _session(model, providers, threads, spin, reuse_optimized and name == "cpu")
    except ModelCardError:
        if name == "cpu":
            raise
        _metadata(model)  # a bad file fails on the CPU too, and is said as such; else the GPU provider failed
        raise BackendUnavailable(f"{name}: onnxruntime could not start {provider} for this model, which loads on "
                                 "the CPU (onnxruntime's log says why)") from None
    if session.get_providers()[0] != provider:
        raise BackendUnavailable(f"{name}: onnxruntime could not start {provider} and would have run on the CPU "
                                 f"instead (onnxruntime's log says why)")
    metadata = session.get_modelmeta().custom_metadata_map
    if problem := _graph_problem(session, ModelCard.from_metadata(metadata, str(model))):
        raise ModelCardError(f"{model}: {problem}")
    widths = [output.shape[-1] for output in session.get_outputs() if output.name == OUTPUT_NAME and output.shape]
    return Backend(name, lambda outputs, images: session.run(outputs, {INPUT_NAME: images}), metadata,
                   classes=widths[0] if widths and isinstance(widths[0], int) else None,
                   most_images=ORT_TENSORRT_PROFILE["max"] if name == "ort-tensorrt" else None)


def _graph_problem(session: ort.InferenceSession, card: ModelCard) -> str | None:
    """How the graph differs from what its model card promises — one uint8 ``image`` input of the card's
    [N, H, W, C], a ``probabilities`` output and the card's other outputs — or None. A file medclf did not write
    (a float32 NCHW input, Keras' ``Identity:0`` output) or a card copied from another model failed at its first
    batch, in onnxruntime's traceback, every answer lost."""
    inputs = session.get_inputs()
    if [given.name for given in inputs] != [INPUT_NAME]:
        return (f"takes {', '.join(repr(given.name) for given in inputs)}; a medclf model takes one input, "
                f"{INPUT_NAME!r} (export it with medclf export)")
    given, expected = inputs[0], card.preprocess.shape
    fixed = [side if isinstance(side, int) else None for side in given.shape[1:]]
    if given.type != "tensor(uint8)" or len(given.shape) != 4 or any(
            side not in (None, want) for side, want in zip(fixed, expected)):
        shape = "x".join("?" if side is None else str(side) for side in fixed)
        return (f"its input is {given.type[7:-1]} [N, {shape}], and its model card says uint8 images of "
                f"{'x'.join(map(str, expected))} [N, H, W, C]")
    outputs = [output.name for output in session.get_outputs()]
    if missing := [name for name in (OUTPUT_NAME, *card.outputs) if name not in outputs]:
        return f"has no output {missing[0]!r}, which its model card names (its outputs: {', '.join(outputs)})"
    return None


@functools.cache
def _preload_gpu_libraries() -> None:
    """CUDA and cuDNN from their pip wheels, where installed. onnxruntime prints what it cannot find on stdout,
    which would break ``--json``; :func:`missing_library` says it in one line instead."""
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()):
            ort.preload_dlls()


def _preload_tensorrt() -> None:
    """TensorRT's libraries from its pip wheel, where installed: importing ``tensorrt`` loads them, and the
    TensorRT EP finds them loaded (``preload_dlls`` loads CUDA's and cuDNN's only; without this an explicit
    ``--backend ort-tensorrt`` said libnvinfer was missing where ``auto``, having tried TensorRT first, worked)."""
    from .gpu_libraries import TensorRTUnavailable, tensorrt

    try:
        tensorrt()
    except TensorRTUnavailable:  # installed some other way (a Jetson's JetPack): the loader may still find it
        pass


def _metadata(model: Path) -> dict[str, str]:
    """The model card's fields, read before a GPU session or engine is made (a CPU session opens in ms)."""
    return _session(model, [PROVIDERS["cpu"]], 1, spin=False).get_modelmeta().custom_metadata_map


def _precision(model: Path, metadata: dict[str, str] | None = None) -> str:
    return ModelCard.from_metadata(metadata or _metadata(model), str(model)).precision


def _providers(name: str, model: Path, precision: str = "fp32",
               image_shape: tuple[int, int, int] | None = None) -> list:
    """The provider list for ``name``, most wanted first. Under the TensorRT EP, what TensorRT cannot take runs
    on CUDA, its engines are cached on disk (without the cache each start rebuilds them: minutes) in a folder of
    the ``model`` file's own, the file's ``precision`` is allowed (:data:`TENSORRT_PRECISION_OPTIONS`), and its
    engines take any batch of ``image_shape`` images up to :data:`ORT_TENSORRT_PROFILE`'s largest."""
    cuda = (PROVIDERS["cuda"], CUDA_OPTIONS)
    if name == "cuda":
        return [cuda, PROVIDERS["cpu"]]
    if name == "ort-tensorrt":
        from .describe import file_sha256

        # onnxruntime names a cached engine by the graph's names and its file name, never its weights: two
        # trainings of one architecture, each a model.onnx, would share an engine, the second answering with the
        # first's weights under its own labels. Keyed by the file's bytes, each model has its own.
        # and by the batch profile: an engine built without one (or for another) is not loaded under this one
        profile = "-batch-" + "-".join(map(str, ORT_TENSORRT_PROFILE.values())) if image_shape else ""
        cache = default_cache_dir() / "ort-tensorrt" / (file_sha256(model)[:16] + profile)
        cache.mkdir(parents=True, exist_ok=True)
        tensorrt = (PROVIDERS["ort-tensorrt"], {"trt_engine_cache_enable": "True", "trt_timing_cache_enable": "True",
                                                  "trt_engine_cache_path": os.fspath(cache),
                                                  "trt_timing_cache_path": os.fspath(cache)}
                    | TENSORRT_PRECISION_OPTIONS[precision] | _profile_options(image_shape))
        return [tensorrt, cuda, PROVIDERS["cpu"]]
    return [PROVIDERS["cpu"]]


def _profile_options(image_shape: tuple[int, int, int] | None) -> dict[str, str]:
    """The TensorRT EP's explicit batch profile (onnxruntime's ``trt_profile_*_shapes``, ``name:dim1xdim2...``).
    Without one it builds each engine for the batch sizes seen so far and rebuilds it, a minute or more, whenever
    a run brings a size outside them: one image, then a folder's batches of 32, then ``predict``'s hundreds."""
    if image_shape is None:
        return {}
    return {f"trt_profile_{bound}_shapes": f"{INPUT_NAME}:" + "x".join(map(str, (batch, *image_shape)))
            for bound, batch in ORT_TENSORRT_PROFILE.items()}


def missing_library(name: str) -> str | None:
    """The first library that the provider ``name`` needs and the loader cannot find (``libnvinfer.so.10``), or
    None. Loading the provider's own library the way onnxruntime does gets the loader's answer, which onnxruntime
    would only write to its log; where the libraries are all there, the load stops at onnxruntime's own symbols."""
    library = Path(ort.__file__).parent / "capi" / PROVIDER_LIBRARIES[name]
    if not library.is_file():
        return None  # another platform's layout: the session itself will tell
    try:
        ctypes.CDLL(os.fspath(library))
    except OSError as exc:
        if "cannot open shared object file" in str(exc):
            return str(exc).split(":")[0]
    return None


def _tensorrt(model: Path) -> Backend:
    """A native engine from the cache, built on first use for this GPU (that takes a while, once)."""
    from .gpu_libraries import TensorRTUnavailable, tensorrt

    try:
        tensorrt()  # not installed: say so before any work (and before loading the engine module)
        from .tensorrt_engine import EngineCache, TensorRTEngine

        metadata = _metadata(model)
        engine = TensorRTEngine(EngineCache().engine_for(model, _precision(model, metadata)))
    except (TensorRTUnavailable, ValueError, OSError) as exc:  # OSError: an engine cache it cannot write
        raise BackendUnavailable(f"tensorrt: {exc}") from None
    except Exception as exc:  # noqa: BLE001 — a TensorRT whose API differs (11 dropped EXPLICIT_BATCH) or fails
        raise BackendUnavailable(f"tensorrt: TensorRT failed ({type(exc).__name__}: {exc})") from None

    width = int(engine.engine.get_tensor_shape(OUTPUT_NAME)[-1])
    return Backend("tensorrt", engine.run, metadata, classes=width if width > 0 else None)


def _session(model: Path, providers: list[str], threads: int, spin: bool,
             reuse_optimized: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    try:
        if reuse_optimized:
            return optimized_session(model, options, providers)
        return ort.InferenceSession(os.fspath(model), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ModelCardError(f"{model}: not a loadable ONNX model ({exc})") from None
