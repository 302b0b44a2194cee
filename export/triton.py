"""A Triton Inference Server model repository for an exported model, for users who outgrow one workstation.

Layout (Triton's "model repository" docs)::

    REPO/NAME/config.pbtxt     platform, batch size, the contract's input and output, dynamic batching
    REPO/NAME/labels.txt       one label per line, for Triton's classification extension
    REPO/NAME/1/model.onnx     (a TensorRT engine goes to its own model, NAME_tensorrt/1/model.plan)

The config is written from the ONNX file itself (names, element types, shapes), never from assumptions, and
carries the model card in ``parameters`` so a client can read the labels and preprocessing from Triton.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import onnx

from medclf.runtime.modelcard import ModelCard

PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".plan": ("tensorrt_plan", "model.plan")}
TRITON_TYPES = {onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32",
                onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.INT8: "TYPE_INT8"}
LABELS_FILE = "labels.txt"
MAX_QUEUE_DELAY_US = 500  # how long Triton may hold a request to batch it with others


def write_model(repo: str | os.PathLike[str], name: str, model_file: str | os.PathLike[str],
                onnx_file: str | os.PathLike[str], card: ModelCard, max_batch_size: int = 64) -> Path:
    """Write (or replace, whole) ``REPO/NAME`` serving ``model_file`` (.onnx or .plan); ``onnx_file`` is the ONNX
    model it is or was built from, whose inputs and outputs the config describes. Returns the model folder."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"{name!r}: a Triton model name needs letters, digits, '_', '-' or '.'")
    platform, file_name = PLATFORMS[Path(model_file).suffix]
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=repo, prefix=f".{name}."))
    staged.chmod(0o755)  # mkdtemp makes it private; a Triton server often runs as another user
    try:
        (staged / "1").mkdir()
        shutil.copyfile(model_file, staged / "1" / file_name)
        (staged / LABELS_FILE).write_text("\n".join(card.labels) + "\n")
        (staged / "config.pbtxt").write_text(config_text(name, platform, onnx.load(str(onnx_file)), card,
                                                         max_batch_size))
        _swap_in(staged, repo / name)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return repo / name


def config_text(name: str, platform: str, model: onnx.ModelProto, card: ModelCard, max_batch_size: int) -> str:
    """``config.pbtxt`` in protobuf text format; dims leave out the batch axis, which Triton adds."""
    (image,), (probabilities, *extra) = model.graph.input, model.graph.output
    outputs = [f'{{ name: "{probabilities.name}" data_type: {_type(probabilities)} dims: {_dims(probabilities)} '
               f'label_filename: "{LABELS_FILE}" }}']
    outputs += [f'{{ name: "{value.name}" data_type: {_type(value)} dims: {_dims(value)} }}' for value in extra]
    parameters = "".join(f'parameters {{ key: "{key}" value: {{ string_value: {_quote(value)} }} }}\n'
                         for key, value in card.to_metadata().items())
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch_size}\n'
            f'input [ {{ name: "{image.name}" data_type: {_type(image)} format: FORMAT_NHWC dims: {_dims(image)} }} ]\n'
            f"output [ {', '.join(outputs)} ]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}\n{parameters}")


def _type(value: onnx.ValueInfoProto) -> str:
    return TRITON_TYPES[value.type.tensor_type.elem_type]


def _dims(value: onnx.ValueInfoProto) -> str:
    dims = value.type.tensor_type.shape.dim[1:]  # the first axis is the dynamic batch
    return "[ " + ", ".join(str(d.dim_value) if d.HasField("dim_value") else "-1" for d in dims) + " ]"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _swap_in(staged: Path, final: Path) -> None:
    """Replace ``final`` by ``staged`` so a reader sees the old model or the new one, never half of each."""
    old = final.with_name(f".{final.name}.old.{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)
