"""FP32 ONNX → INT8 ONNX by explicit quantization: QDQ nodes that onnxruntime and TensorRT 10 both consume.

Calibration sees real training images decoded and resized by the runtime's own preprocessing, through
:class:`ImageCalibrationReader` — the data side of onnxruntime's ``CalibrationDataReader`` contract, so the
quantizer never knows where images come from. Settings, and why:

* two flavours from the same images. For onnxruntime (the published ``model.int8.onnx``): uint8 activations with
  a zero point, int8 symmetric weights — the U8S8 kernels x86 CPUs run fastest (VNNI), and the ReLU6 clips fold
  into the activations' range: 2.4x FP32 throughput on MobileNetV2 at 224 px, where S8S8 ran at 0.65x (its
  clips stay float between DQ and Q). For TensorRT (``symmetric=True``, what its engines are built from): int8
  activations and weights, both with zero point 0 — the only QDQ TensorRT accepts;
* per-channel weights: MobileNet-style depthwise filters differ by orders of magnitude from channel to channel,
  one scale per tensor crushes the small ones (agreement 85% instead of 96% on chest X-rays);
* bias correction (:mod:`.bias_correction`) first: each convolution to be quantized has the mean error its
  int8 weights will make taken out of its bias. On trained models the weights' rounding, not the activations',
  is most of INT8's disagreement with FP32 (the blood-cell model with only its weights rounded: 96.8%
  agreement); corrected, one to two thirds of the disagreements go;
* the first convolution and the classifier tail — pooling, head and softmax, all that follows the last
  convolution — are left float in the file (TensorRT runs them so). Quantized, the tail put the logits and the
  probabilities themselves on a 256-level grid; float, flips fell 0.78% → 0.68% (blood cells, 3 float convs)
  and 1.37% → 1.27% (a blood model fine-tuned from block 6, 9 float), at no measurable cost. Note that
  onnxruntime's CPU optimizer (``WeightBiasQuantization``) gives a float Conv or Gemm that sits between DQ and
  Q nodes per-tensor int8 weights when it loads the file; measured on the packaged blood-cell model, disabling
  that changed agreement by under one point (93.2% vs 94.0% of 512 TEST images), so it is left on.
  ``float_convs`` keeps more of the leading convolutions float (from the second on, really float in
  onnxruntime too: their neighbours are float, so there is no DQ-Conv-Q to fuse): in MobileNetV2 the early
  blocks' depthwise filters have the widest channel-to-channel ranges, and on a sharply trained blood-cell model
  agreement with FP32 rose 92.2% → 97.5% → 98.8% → 99.2% keeping 1, 3, 9, 15 of 52 float (at 2.3x → 1.4x
  FP32's speed). The float prefix is every node up to the last float convolution, not its convolutions
  alone: the input's normalisation and the residual Adds between float convolutions were quantized too,
  rounding the residual stream to 256 levels where nothing around it ran in int8. On a MobileNetV2 trained
  on 28-px chest films enlarged to 160 px, flips against FP32 with 9 / 15 / 51 float convolutions fell from
  2.3% / 1.6% / 3.1% to 0.4% / 0.4% / 0%; on the packaged blood-cell model (1,024 held-out cells) the mean
  |Δp| fell by a third at every step (9 float: 0.0082 → 0.0052, flips 0.59% → 0.29%).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from medclf.runtime.modelcard import INPUT_NAME
from medclf.runtime.preprocess import ImageError, Preprocess, load_image

from .bias_correction import conv_input_means, correct_biases
from .integer_pooling import pool_levels_in_integers
from .output_nodes import conv_depths, familiarity_nodes

HEAD_OPS = ("MatMul", "Gemm")


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds ``{"image": uint8 batch}`` dictionaries of real images to a calibrator; unreadable files are skipped.

    The first full pass decodes the files; after :meth:`rewind` the same batches are replayed from memory, so
    one reader serves every quantization of an export (INT8's search steps, its TensorRT flavour).

    Small batches: onnxruntime's calibration session runs the graph unoptimised with every tensor feeding a
    ReduceMin/ReduceMax, so a batch's whole set of activations is live at once. The 224-px chest model (two
    backbones) exported fp32+fp16+int8 in 153 s with a 6.8 GB peak at 32 images a batch, 78 s and 3.5 GB at 8
    (4: 87 s, 3.3 GB); the ranges (a min and max over all images) and the files are the same."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], preprocess: Preprocess, batch_size: int = 8):
        self.paths, self.preprocess, self.batch_size = list(paths), preprocess, batch_size
        self._batches: Iterator[dict[str, np.ndarray]] | None = None
        self._decoded: list[dict[str, np.ndarray]] | None = None  # every batch, once a pass has finished

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = iter(self._decoded) if self._decoded is not None else self._read()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None

    def _read(self) -> Iterator[dict[str, np.ndarray]]:
        batches = []
        for start in range(0, len(self.paths), self.batch_size):
            images = []
            for path in self.paths[start:start + self.batch_size]:
                try:
                    images.append(load_image(path, self.preprocess))
                except ImageError:
                    continue
            if images:
                batches.append({INPUT_NAME: np.stack(images)})
                yield batches[-1]
        if not batches:  # onnxruntime's calibrator would fail on no ranges, saying nothing of why
            raise FileNotFoundError(f"none of the {len(self.paths)} calibration images could be read")
        self._decoded = batches


class Int8Quantizer:
    """Quantizes FP32 files as many ways as an export tries (INT8's search steps, TensorRT's flavour), all
    calibrated on one reader. What the tries of one file share — onnxruntime's preparation of its graph, and
    its convolutions' input means for bias correction (8.6 s a try for the 224-px chest model) — is done once
    per file, not once per try."""

    def __init__(self, reader: ImageCalibrationReader) -> None:
        self.reader = reader
        self._prepared: tuple[tuple[Path, int], onnx.ModelProto, dict[str, np.ndarray]] | None = None

    def quantize(self, fp32_path: str | os.PathLike[str], symmetric: bool = False,
                 float_convs: int = 1) -> onnx.ModelProto:
        """The QDQ-quantized model, calibrated on the reader's images; ``symmetric`` for TensorRT. The first
        ``float_convs`` convolutions stay float (at least the first one; see the module docstring). For
        onnxruntime, the familiarity levels are pooled in integers (:mod:`.integer_pooling`)."""
        model, means = self._prepare(Path(fp32_path))
        float_nodes = _float_nodes(model, float_convs)
        activations = QuantType.QInt8 if symmetric else QuantType.QUInt8
        self.reader.rewind()  # from its first batch, whatever an earlier quantization read
        with tempfile.TemporaryDirectory() as tmp:
            corrected, quantized = Path(tmp) / "corrected.onnx", Path(tmp) / "int8.onnx"
            onnx.save(correct_biases(model, means, set(float_nodes)), str(corrected))
            quantize_static(str(corrected), str(quantized), self.reader, quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=activations, weight_type=QuantType.QInt8,
                            nodes_to_exclude=float_nodes,
                            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
            model = onnx.load(str(quantized))
        return model if symmetric else pool_levels_in_integers(model)  # TensorRT parses no MatMulInteger

    def method(self) -> dict:
        """How the files are made, for whoever audits an export report."""
        return {"format": "QDQ (onnxruntime quantize_static)", "weights": "int8, symmetric, per output channel",
                "activations": "uint8 with zero point (TensorRT's flavour: int8, symmetric), MinMax over the "
                               "calibration images",
                "bias_correction": True, "calibration_images": len(self.reader.paths)}

    def _prepare(self, fp32: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """``fp32`` with the shape inference and graph clean-up the quantizer needs, and its convolutions'
        input means; remembered until another file (or a rewritten one) comes."""
        key = (fp32.resolve(), fp32.stat().st_mtime_ns)
        if self._prepared is None or self._prepared[0] != key:
            with tempfile.TemporaryDirectory() as tmp:
                prepared = Path(tmp) / "prepared.onnx"
                # auto_merge: an ensemble's members see the batch through a Resize (scale 1 on that axis), which
                # symbolic inference names floor(1.0*N); their outputs' N and floor(1.0*N) are one dimension
                quant_pre_process(str(fp32), str(prepared), auto_merge=True)
                model = onnx.load(str(prepared))
            self._prepared = key, model, conv_input_means(model, self.reader)
        return self._prepared[1], self._prepared[2]


def to_int8(fp32_path: str | os.PathLike[str], reader: ImageCalibrationReader, symmetric: bool = False,
            float_convs: int = 1) -> onnx.ModelProto:
    """One quantization of ``fp32_path`` (see :meth:`Int8Quantizer.quantize`)."""
    return Int8Quantizer(reader).quantize(fp32_path, symmetric, float_convs)


def _float_nodes(model: onnx.ModelProto, float_convs: int = 1) -> list[str]:
    """Every node up to the ``float_convs``-th convolution of its branch and that convolution's activation (the
    float prefix, whole: see the module docstring), the classifier head, everything after each branch's last
    convolution (pooling, head, softmax), and the nodes that compute ``unfamiliarity`` alone. Counted along
    the graph, not in node order: where two backbones sit side by side (``two_backbones``, an ensemble), the
    file lists one's nodes before the other's, and the second one's input convolution was quantized."""
    nodes = list(model.graph.node)
    depth = conv_depths(nodes)
    float_convs = min(max(1, float_convs), max(depth, default=0))
    fused = _fused_activations(nodes)
    prefix = [i for i, d in enumerate(depth) if d < float_convs or (d == float_convs and (
        nodes[i].op_type == "Conv" or i in fused))]
    tail = [i for i, reaches in enumerate(_reach_a_conv(nodes)) if not reaches and nodes[i].op_type != "Conv"
            and i not in fused]
    head = [node.name for node in nodes if node.op_type in HEAD_OPS]
    return list(dict.fromkeys([nodes[i].name for i in sorted(prefix + tail)] + head + familiarity_nodes(model)))


def _reach_a_conv(nodes: list[onnx.NodeProto]) -> list[bool]:
    """For each node, whether a convolution lies downstream of it."""
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    reaches = [False] * len(nodes)
    for i in reversed(range(len(nodes))):
        reaches[i] = any(nodes[j].op_type == "Conv" or reaches[j]
                         for name in nodes[i].output for j in consumers.get(name, ()))
    return reaches


def _fused_activations(nodes: list[onnx.NodeProto]) -> set[int]:
    """The Clip/Relu nodes reading a convolution's output, each fused into it (found by the tensor it reads, not
    by its place: two backbones' nodes interleave in the file, and the unfamiliarity output's nodes sit between)."""
    convolved = {name for node in nodes if node.op_type == "Conv" for name in node.output}
    return {i for i, node in enumerate(nodes) if node.op_type in ("Clip", "Relu") and node.input[0] in convolved}
