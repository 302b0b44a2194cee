"""onnxslim's graph simplification, kept only where it changes nothing the model computes.

tf2onnx writes TensorFlow's asymmetric "same" padding as separate ``Pad`` nodes and leaves constant arithmetic
in place; onnxslim folds them (MobileNetV2: 144 → 106 nodes). onnxruntime fuses most of this itself, so CPU
speed barely moves, but TensorRT and the INT8 quantizer see a cleaner graph with fewer float islands.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import onnxslim

from medclf.runtime.modelcard import INPUT_NAME

MAX_CHANGE = 1e-6  # float re-association may move the last bits; anything more is a different model
# (relative to values over 1: unfamiliarity reaches the hundreds, where float32's last bit is 1e-5)


def simplify(model: onnx.ModelProto, images: np.ndarray) -> tuple[onnx.ModelProto, dict]:
    """The simplified graph if it has the original's outputs, by name and in order, and they match on
    ``images`` within :data:`MAX_CHANGE`, else the original; and a record of what happened for the export
    report."""
    simplified = onnxslim.slim(model)
    before, after = _outputs(model, images), _outputs(simplified, images)
    same = list(before) == list(after) and all(before[name].shape == after[name].shape for name in before)
    change = max(float(np.max(np.abs(before[name].astype(np.float64) - after[name])
                              / np.maximum(1.0, np.abs(before[name])))) for name in before) if same else None
    kept = change is not None and change <= MAX_CHANGE
    record = {"tool": f"onnxslim {onnxslim.__version__}", "nodes_before": len(model.graph.node),
              "nodes_after": len(simplified.graph.node), "max_abs_change": change, "kept": kept}
    if not same:
        record["outputs_changed"] = {"before": list(before), "after": list(after)}
    return (simplified if kept else model), record


def _outputs(model: onnx.ModelProto, images: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """Every output for ``images`` by name, in the graph's order, computed ``batch`` at a time: all 256
    verification images at once held 11 GB of activations for the 224-px two-backbone chest model."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    batches = [session.run(names, {INPUT_NAME: images[i:i + batch]}) for i in range(0, len(images), batch)]
    return {name: np.concatenate(output) for name, output in zip(names, zip(*batches))}
