"""Small hand-built ONNX graphs for the INT8 exporters' node choices (tests/test_export*.py)."""

from __future__ import annotations


def padded_conv_chain(convs: int = 3):
    """``image -> Pad -> Conv stem -> Conv body ... -> Conv head -> logits`` (1 x 1 weights): a model whose input size
    is no multiple of 32 pads before its first convolution. Node names: ``pad``, ``stem``, ``body1``..., ``head``."""
    from onnx import TensorProto, helper

    names = ["stem"] + [f"body{i}" for i in range(1, convs - 1)] + ["head"]
    w = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, [1, 1, 1, 1], [1.0]) for i in range(convs)]
    nodes = [helper.make_node("Pad", ["image", "pads"], ["p0"], name="pad", mode="reflect")]  # not fusable into a Conv
    for i, name in enumerate(names):
        out = "logits" if i == convs - 1 else f"p{i + 1}"
        nodes.append(helper.make_node("Conv", [f"p{i}", f"w{i}"], [out], name=name))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 6, 6])],
        initializer=w + [helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 1, 0, 0, 1, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
