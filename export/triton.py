"""A Triton Inference Server model repository for an exported model, for users who outgrow one workstation.

Layout (Triton's "model repository" docs)::

    REPO/NAME/config.pbtxt     platform, batch size, the contract's input and output, dynamic batching
    REPO/NAME/labels.txt       one label per line, for Triton's classification extension
    REPO/NAME/1/model.onnx     (a TensorRT engine goes to its own model, NAME_tensorrt/1/model.plan)

The config is written from the ONNX file itself (names, element types, shapes), never from assumptions, and
carries the model card in ``parameters`` so a client can read the labels and preprocessing from Triton.

A binary model with a threshold is served with a second output, ``calls`` (:func:`with_calls`): Triton's
classification extension answers with an output's largest entry, so asked of ``probabilities`` it gives the
most probable class, and asked of ``calls`` the threshold's call, as ``medclf-run`` makes it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from medclf.runtime.modelcard import OUTPUT_NAME, ModelCard

PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".plan": ("tensorrt_plan", "model.plan")}
TRITON_TYPES = {onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32",
                onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.INT8: "TYPE_INT8"}
LABELS_FILE = "labels.txt"
CALLS_NAME = "calls"  # a binary model's threshold call, for the classification extension (see with_calls)
CALLS_DESCRIPTION = ("[batch, 2] the threshold's call as the larger entry: p({finding}) rescaled so that its "
                     "threshold {threshold:.4g} sits at 0.5, and the other class 1 minus it")
MAX_QUEUE_DELAY_US = 500  # how long Triton may hold a request to batch it with others


def write_model(repo: str | os.PathLike[str], name: str, model_file: str | os.PathLike[str],
                onnx_file: str | os.PathLike[str], max_batch_size: int = 64) -> Path:
    """Write (or replace, whole) ``REPO/NAME`` serving ``model_file`` (.onnx or .plan); ``onnx_file`` is the ONNX
    model it is or was built from, whose inputs, outputs and model card the config describes. Returns the model
    folder."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"{name!r}: a Triton model name needs letters, digits, '_', '-' or '.'")
    platform, file_name = PLATFORMS[Path(model_file).suffix]
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=_staging_folder(repo), prefix=f".{name}."))
    staged.chmod(0o755)  # mkdtemp makes it private; a Triton server often runs as another user
    try:
        (staged / "1").mkdir()
        described = onnx.load(str(onnx_file))  # for an .onnx model_file, that file itself
        card = ModelCard.from_proto(described, str(onnx_file))
        if file_name == "model.onnx" and card.decision is not None:
            described = with_calls(described, card)
            onnx.save(described, str(staged / "1" / file_name))
        else:  # an engine's outputs are those it was built with
            shutil.copyfile(model_file, staged / "1" / file_name)
        (staged / LABELS_FILE).write_text("\n".join(one_line_each(card.labels)) + "\n", encoding="utf-8")
        (staged / "config.pbtxt").write_text(config_text(name, platform, described, max_batch_size))
        _swap_in(staged, repo / name)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return repo / name


def one_line_each(labels: tuple[str, ...]) -> tuple[str, ...]:
    """The labels, each on a line of ``labels.txt`` as Triton reads it; a ValueError for one holding a line break
    (a model trained before such names were refused: its classes from there on were named wrong)."""
    if broken := [label for label in labels if len(label.splitlines()) > 1 or "\r" in label or "\n" in label]:
        raise ValueError(f"class {broken[0]!r} holds a line break, and Triton's labels.txt is a line per class: "
                         "rename its folder and train again")
    return labels


def config_text(name: str, platform: str, model: onnx.ModelProto, max_batch_size: int) -> str:
    """``config.pbtxt`` in protobuf text format, from the ``model`` and its card; dims leave out the batch axis,
    which Triton adds."""
    (image,) = model.graph.input
    labelled = (OUTPUT_NAME, CALLS_NAME)  # class scores, which the classification extension can rank
    outputs = [f'{{ name: "{value.name}" data_type: {_type(value)} dims: {_dims(value)}'
               + (f' label_filename: "{LABELS_FILE}"' if value.name in labelled else "") + " }"
               for value in model.graph.output]
    parameters = "".join(f'parameters {{ key: "{prop.key}" value: {{ string_value: {_quote(prop.value)} }} }}\n'
                         for prop in model.metadata_props)
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch_size}\n'
            f'input [ {{ name: "{image.name}" data_type: {_type(image)} format: FORMAT_NHWC dims: {_dims(image)} }} ]\n'
            f"output [ {', '.join(outputs)} ]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}\n{parameters}")


def with_calls(model: onnx.ModelProto, card: ModelCard) -> onnx.ModelProto:
    """A copy of a binary ``model`` with a second output, ``calls`` ``[batch, 2]``, whose larger entry is its
    card's threshold call: the finding's probability rescaled so that the threshold sits at one half (linearly
    on each side of it; 0 and 1 stay put), and the other class one minus that. ``probabilities`` is untouched."""
    labels, decision = card.labels, card.decision
    positive = labels.index(decision.positive_class)
    threshold = np.float32(min(max(decision.threshold, 1e-6), 1 - 1e-6))
    if threshold < decision.threshold:  # the float32 nearest below: p between would be called in the graph only
        threshold = np.nextafter(threshold, np.float32(1))

    def const(name: str, value: float | list[int]) -> onnx.TensorProto:
        array = np.array(value, np.int64 if isinstance(value, list) else np.float32)
        return numpy_helper.from_array(array, f"medclf_calls_{name}")

    make = onnx.helper.make_node
    nodes = [
        make("Gather", [OUTPUT_NAME, "medclf_calls_positive"], ["medclf_calls_p"], axis=1),
        make("Mul", ["medclf_calls_p", "medclf_calls_below_scale"], ["medclf_calls_below"]),
        make("Sub", ["medclf_calls_p", "medclf_calls_threshold"], ["medclf_calls_over"]),
        make("Mul", ["medclf_calls_over", "medclf_calls_above_scale"], ["medclf_calls_above_half"]),
        make("Add", ["medclf_calls_above_half", "medclf_calls_over_half"], ["medclf_calls_above_uncapped"]),
        make("Min", ["medclf_calls_above_uncapped", "medclf_calls_one"], ["medclf_calls_above"]),
        make("GreaterOrEqual", ["medclf_calls_p", "medclf_calls_threshold"], ["medclf_calls_is_finding"]),
        make("Where", ["medclf_calls_is_finding", "medclf_calls_above", "medclf_calls_below"],
             ["medclf_calls_finding"]),
        make("Sub", ["medclf_calls_one", "medclf_calls_finding"], ["medclf_calls_other"]),
        make("Concat", ["medclf_calls_other", "medclf_calls_finding"][::1 if positive == 1 else -1], [CALLS_NAME],
             axis=1),
    ]
    # at the threshold itself the finding must still be the larger entry: just over one half, not a tie
    over_half = float(np.nextafter(np.float32(0.5), np.float32(1)))
    constants = [const("positive", [positive]), const("threshold", float(threshold)), const("over_half", over_half),
                 const("one", 1.0), const("below_scale", 0.5 / float(threshold)),
                 const("above_scale", 0.5 / (1 - float(threshold)))]
    served = onnx.ModelProto()
    served.CopyFrom(model)
    outputs = card.outputs | {CALLS_NAME: CALLS_DESCRIPTION.format(finding=decision.positive_class,
                                                                   threshold=decision.threshold)}
    onnx.helper.set_model_props(served, dataclasses.replace(card, outputs=outputs).to_metadata())
    served.graph.node.extend(nodes)
    served.graph.initializer.extend(constants)
    batch = served.graph.output[0].type.tensor_type.shape.dim[0]
    served.graph.output.append(onnx.helper.make_tensor_value_info(
        CALLS_NAME, onnx.TensorProto.FLOAT, [batch.dim_param or batch.dim_value or None, 2]))
    onnx.checker.check_model(served)
    return served


def _type(value: onnx.ValueInfoProto) -> str:
    return TRITON_TYPES[value.type.tensor_type.elem_type]


def _dims(value: onnx.ValueInfoProto) -> str:
    dims = value.type.tensor_type.shape.dim[1:]  # the first axis is the dynamic batch
    return "[ " + ", ".join(str(d.dim_value) if d.HasField("dim_value") else "-1" for d in dims) + " ]"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _staging_folder(repo: Path) -> Path:
    """Where a model folder is written before it is swapped in: beside the repository where that folder is
    writable and on the same file system (a rename cannot cross one), else inside it — where a Triton server
    polling the repository sees the half-written folder as a model it cannot load."""
    parent = repo.resolve().parent
    try:
        beside = os.access(parent, os.W_OK | os.X_OK) and parent.stat().st_dev == repo.stat().st_dev
    except OSError:
        beside = False
    return parent if beside else repo


def _swap_in(staged: Path, final: Path) -> None:
    """Replace ``final`` by ``staged`` so a reader sees the old model or the new one, never half of each — nor,
    where Linux can exchange two paths in one step, neither (Triton polling the repository would unload it)."""
    if final.exists() and _exchanged(staged, final):
        shutil.rmtree(staged, ignore_errors=True)  # now the old model
        return
    old = staged.with_name(f"{staged.name}.old")  # beside the staged folder: outside the repository
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)


def _exchanged(first: Path, second: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where it is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or a C library before glibc 2.28
        return False
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
    return renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), exchange) == 0
