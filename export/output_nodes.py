"""Graph questions FP16 and INT8 ask of an ONNX file: which nodes serve only one of its outputs, and how deep in
its backbone each convolution sits."""

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


def conv_depths(nodes: list[onnx.NodeProto]) -> list[int]:
    """How many convolutions lie on the longest path from the input to each node, itself included: where two
    backbones sit side by side (``two_backbones``, an ensemble), the file lists one's nodes before the other's,
    so a convolution's place in the file does not say how deep it is."""
    producer = {name: i for i, node in enumerate(nodes) for name in node.output}
    depth: list[int] = []
    for node in nodes:  # ONNX lists nodes in topological order
        before = max((depth[producer[name]] for name in node.input if name in producer), default=0)
        depth.append(before + (node.op_type == "Conv"))
    return depth


def leading_convs(model: onnx.ModelProto, count: int) -> list[str]:
    """The names of each branch's first ``count`` convolutions (in a single backbone, the file's first)."""
    nodes = list(model.graph.node)
    return [node.name for node, depth in zip(nodes, conv_depths(nodes)) if node.op_type == "Conv" and depth <= count]
