"""Which nodes of an ONNX graph serve only one of its outputs."""

from __future__ import annotations

import onnx

from medclf.runtime.modelcard import FAMILIARITY_NAME


def nodes_only_for(model: onnx.ModelProto, output: str) -> list[str]:
    """The names of the nodes that compute ``output`` and nothing else the model outputs ([] without it)."""
    producers = {name: node for node in model.graph.node for name in node.output}

    def ancestors(names: list[str]) -> dict[str, None]:
        found: dict[str, None] = {}
        stack = list(names)
        while stack:
            node = producers.get(stack.pop())
            if node is not None and node.name not in found:
                found[node.name] = None
                stack.extend(node.input)
        return found

    outputs = [value.name for value in model.graph.output]
    if output not in outputs:
        return []
    others = ancestors([name for name in outputs if name != output])
    return [name for name in ancestors([output]) if name not in others]


def familiarity_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes behind ``unfamiliarity`` alone, which FP16 and INT8 keep float32: its squared distances pass
    float16's 65,504 on the very images it must flag, and quantized whitening would move every distance."""
    return nodes_only_for(model, FAMILIARITY_NAME)
