"""TensorRT engines built from medclf ONNX files, cached by everything that makes an engine invalid.

An engine (a raw TensorRT plan) only runs on the TensorRT version and GPU it was built for, so it is built on
the machine that serves it — here, by ``medclf export --engine`` or, later, by the runtime on first use — and
cached under a key of: the ONNX file's SHA-256, TensorRT's version, the GPU's name and compute capability, the
precision and the batch profile. Next to each ``KEY.plan`` a ``KEY.json`` records those fields and the plan's
own hash; a plan whose record does not match this machine, or whose bytes changed, is rebuilt, never loaded.

Precision comes from the ONNX file, not from builder flags: FP16 and INT8 (QDQ) files are exported as such,
and the network is built *strongly typed* — TensorRT 10's recommended mode for explicit quantization and the
only mode TensorRT 11 has. TensorRT 8.6 (JetPack 6.0's, on Jetson Orin) has no strongly typed networks: there
the network is built with an explicit batch axis (without it the ONNX parser refuses the file) and the file's
precision is allowed by builder flags — FP16 for an FP16 file, INT8 for a QDQ file, as its own documentation
for explicit quantization asks.

Written against TensorRT's documented Python API (``tensorrt`` 10+) and NVIDIA's ``cuda-python`` for the GPU's
identity and memory; neither can be installed on the CPU machines medclf is developed on, so this module is
exercised on GPU machines only (tests skip elsewhere with the reason).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .atomic import atomic_write, write_json
from .cache import default_cache_dir
from .describe import file_sha256
from .gpu_libraries import TensorRTUnavailable, cudart, tensorrt
from .modelcard import INPUT_NAME, OUTPUT_NAME

WORKSPACE_BYTES = 1 << 30
# TensorRT 8.6's builder flags for each precision's file (10+ reads the precision from the strongly typed network)
PRECISION_FLAGS = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}
# How medclf builds engines, part of every engine's key: a change of build settings rebuilds the engines cached
# before it ("tf32-off": engines built with TensorRT's default TF32 are not reused).
ENGINE_BUILD = "tf32-off"


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine accepts (``min``..``max``) and the one it is tuned for (``opt``)."""

    min: int = 1
    opt: int = 16
    max: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; two engines with equal keys are interchangeable."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: BatchProfile
    build: str = ENGINE_BUILD

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]


def _check(result):
    """cuda-python returns ``(error, *values)``; raise on an error, return the values."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise TensorRTUnavailable(f"CUDA runtime call failed: {error}")
    return values[0] if len(values) == 1 else values


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """The GPU's name and compute capability (e.g. ``("NVIDIA H100", "9.0")``)."""
    properties = _check(cudart().cudaGetDeviceProperties(device))
    name = properties.name.decode() if isinstance(properties.name, bytes) else str(properties.name)
    return name.strip("\x00 "), f"{properties.major}.{properties.minor}"


def engine_key(onnx_path: str | os.PathLike[str], precision: str, profile: BatchProfile) -> EngineKey:
    name, capability = gpu_identity()
    return EngineKey(onnx_sha256=file_sha256(onnx_path),
                     tensorrt_version=tensorrt().__version__, gpu_name=name, compute_capability=capability,
                     precision=precision, profile=profile)


class EngineCache:
    """``KEY.plan`` + ``KEY.json`` files in one folder (default ``$MEDCLF_CACHE/engines``)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir() / "engines"

    def engine_for(self, onnx_path: str | os.PathLike[str], precision: str,
                   profile: BatchProfile | None = None) -> Path:
        """The cached plan for this file on this machine, built first if missing, stale or foreign. Without a
        ``profile``, that of the engine built last for this file here (the one ``medclf export --engine
        --batch-profile`` verified), else the default."""
        key = engine_key(onnx_path, precision, profile or BatchProfile())
        if profile is None:
            key = replace(key, profile=self._built_profile(key) or key.profile)
        plan, record = self.root / f"{key.digest}.plan", self.root / f"{key.digest}.json"
        if not self._valid(plan, record, key):
            self.root.mkdir(parents=True, exist_ok=True)
            data = build_engine(onnx_path, key.profile, precision)
            with atomic_write(plan, "wb") as file:
                file.write(data)
            write_json(record, {**asdict(key), "plan_sha256": hashlib.sha256(data).hexdigest()})
        return plan

    def _built_profile(self, key: EngineKey) -> BatchProfile | None:
        """The batch profile of the newest engine recorded here for ``key`` but for its profile."""
        wanted = {name: value for name, value in asdict(key).items() if name != "profile"}
        found = []
        for record in self.root.glob("*.json"):
            try:
                fields = json.loads(record.read_text())
                if {name: fields.get(name) for name in wanted} == wanted:
                    found.append((record.stat().st_mtime, BatchProfile(**fields["profile"])))
            except (OSError, ValueError, TypeError, KeyError):  # damaged or foreign: not this file's engine
                continue
        return max(found, key=lambda item: item[0])[1] if found else None

    @staticmethod
    def _valid(plan: Path, record: Path, key: EngineKey) -> bool:
        if not (plan.is_file() and record.is_file()):
            return False
        try:
            recorded = json.loads(record.read_text())
        except (OSError, ValueError):
            return False
        expected = {**asdict(key), "plan_sha256": hashlib.sha256(plan.read_bytes()).hexdigest()}
        return recorded == json.loads(json.dumps(expected))


def build_engine(onnx_path: str | os.PathLike[str], profile: BatchProfile, precision: str = "fp32") -> bytes:
    """Parse the ONNX file (of ``precision``: fp32, fp16 or int8) into a network and build a serialized engine
    for ``profile``: strongly typed on TensorRT 10+, with the precision's builder flag on TensorRT 8.6."""
    trt = tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is None:  # 8.6: EXPLICIT_BATCH, ignored from 10 on and gone from TensorRT 11
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    else:
        network = builder.create_network(1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    # TF32 is on by default: FP32 convolutions on Ampere and later would round their inputs to 10 bits of mantissa
    # (2.7e-2 of probability measured by emulating it, against FP32's 1e-4); the engine computes what the file says.
    config.clear_flag(trt.BuilderFlag.TF32)
    if strongly_typed is None:  # weakly typed: the flags let the builder use the file's float16 / int8 layers
        for flag in PRECISION_FLAGS[precision]:
            config.set_flag(getattr(trt.BuilderFlag, flag))
    shape = tuple(network.get_input(0).shape)[1:]
    optimization = builder.create_optimization_profile()
    optimization.set_shape(INPUT_NAME, (profile.min, *shape), (profile.opt, *shape), (profile.max, *shape))
    config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValueError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    return bytes(serialized)


class TensorRTEngine:
    """Runs a plan: uint8 ``[N, H, W, C]`` in, the model's outputs out (probabilities, and class activation
    maps for files exported with ``--cam``), ``N`` within the engine's profile."""

    def __init__(self, plan: str | os.PathLike[str]) -> None:
        trt = tensorrt()
        self._cuda = cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise TensorRTUnavailable(f"{plan}: TensorRT could not load this engine (other version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self._cuda.cudaStreamCreate())
        smallest, _, largest = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.min_batch, self.max_batch = smallest[0], largest[0]
        names = (self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors))
        # Every output needs a device address to run, whichever ones the caller reads.
        self.outputs = {name: trt.nptype(self.engine.get_tensor_dtype(name)) for name in names
                        if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT}

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, classes]``."""
        return self.run([OUTPUT_NAME], images)[0]

    def run(self, names: list[str], images: np.ndarray) -> list[np.ndarray]:
        """The outputs called ``names``, in that order, for a batch of uint8 images."""
        if unknown := [name for name in names if name not in self.outputs]:
            raise ValueError(f"this engine has no output {unknown[0]!r} (it has {', '.join(self.outputs)})")
        if len(images) > self.max_batch:
            parts = [self.run(names, images[i:i + self.max_batch]) for i in range(0, len(images), self.max_batch)]
            return [np.concatenate(chunks) for chunks in zip(*parts)]
        if 0 < len(images) < self.min_batch:  # a folder's last few, under a profile that starts higher: padded
            padded = np.concatenate([images, np.repeat(images[-1:], self.min_batch - len(images), axis=0)])
            return [output[:len(images)] for output in self.run(names, padded)]
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if not self.context.set_input_shape(INPUT_NAME, images.shape):
            raise ValueError(f"this engine does not take a batch of shape {images.shape}")
        host = {name: np.empty(tuple(self.context.get_tensor_shape(name)), dtype)
                for name, dtype in self.outputs.items()}
        cuda, kinds = self._cuda, self._cuda.cudaMemcpyKind
        device = {}
        try:
            for name, array in {INPUT_NAME: images, **host}.items():
                device[name] = _check(cuda.cudaMallocAsync(array.nbytes, self.stream))
                self.context.set_tensor_address(name, int(device[name]))
            _check(cuda.cudaMemcpyAsync(device[INPUT_NAME], images.ctypes.data, images.nbytes,
                                        kinds.cudaMemcpyHostToDevice, self.stream))
            if not self.context.execute_async_v3(int(self.stream)):
                raise RuntimeError("TensorRT execution failed")
            for name, array in host.items():
                _check(cuda.cudaMemcpyAsync(array.ctypes.data, device[name], array.nbytes,
                                            kinds.cudaMemcpyDeviceToHost, self.stream))
            _check(cuda.cudaStreamSynchronize(self.stream))
        finally:
            for pointer in device.values():
                _check(cuda.cudaFreeAsync(pointer, self.stream))
        return [host[name] for name in names]
