"""Regenerate the tiny ONNX models the torch-free runtime tests use (needs the ``onnx`` package; run rarely).

    python tests/data/make_tiny_onnx.py

The models are one 1x1 convolution, 3 -> 1 channels, with fixed weights ``(10, 0, 0)`` and bias 0, so
``logits = 10 * x[:, 0]``: with the ``(x/255 - 0.5)/0.5`` normalization a preprocessed pixel brighter than 127.5 gets
a positive logit (lesion), a darker one a negative logit. ``sigmoid(logit) > threshold`` with ``THRESHOLD = 0.4`` puts
the decision at a preprocessed value of ``127.5 * (1 + logit(0.4) / 10) = 122.3`` (the threshold is checked by tests).

Files written next to this script (committed; each well under 1 KiB):

- ``tiny_64.onnx``: the good model, input ``image`` float32 (N, 3, 64, 64), output ``logits`` float32 (N, 1, 64, 64),
  hemseg metadata for a 64 px spec.
- ``tiny_64_fp16.onnx``: the same with float16 input and output (as ``model_fp16.onnx`` exports keep I/O in FP16).
- ``tiny_64_dynamic.onnx``: the same with symbolic H and W.
- ``bad_input_shape.onnx``: input (N, 1, 64, 64) (one channel), otherwise valid.
- ``bad_output_shape.onnx``: output (N, 2, 64, 64).
- ``bad_input_name.onnx``: input named ``input`` instead of ``image``.
- ``no_metadata.onnx``: the good graph without hemseg metadata.
- ``custom_op.onnx``: a node in domain ``com.example.custom`` (onnxruntime cannot load it).
- ``external/tiny_ext.onnx`` + ``external/tiny_ext.onnx.data``: the good model with its weights in an external file.
- ``tiny_64_convnet.onnx``: a small random-weight CNN with the same I/O and metadata (3x3 conv 3->8, ReLU, 3x3
  stride-2 conv 8->8, ReLU, nearest 2x Resize, 1x1 conv 8->1; weights from seed 0), for parity between engines on
  more than one multiply per pixel (a few KiB).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from hemseg.runtime.model_meta import ModelMetadata  # noqa: E402
from hemseg.runtime.preprocess import PreprocessSpec  # noqa: E402

SIZE = 64
THRESHOLD = 0.4
SPEC = PreprocessSpec(size=SIZE)
META = ModelMetadata(preprocess=SPEC, threshold=THRESHOLD, labels=None, model="tiny_conv", version="test",
                     checkpoint_sha256="0" * 64, precision="fp32", producer_versions={"onnx": onnx.__version__})
OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.14


def _model(*, in_channels=3, out_channels=1, in_name="image", out_name="logits", dtype=TensorProto.FLOAT,
           hw=(SIZE, SIZE), metadata=True, custom=False, precision="fp32") -> onnx.ModelProto:
    w = np.zeros((out_channels, in_channels, 1, 1), np.float32)
    w[:, 0] = 10.0
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    inits = [numpy_helper.from_array(w.astype(np_dtype), "w"), numpy_helper.from_array(np.zeros(out_channels, np_dtype), "b")]
    nodes = [helper.make_node("Conv", [in_name, "w", "b"], [out_name if not custom else "conv"], name="conv")]
    if custom:
        nodes.append(helper.make_node("Mystery", ["conv"], [out_name], domain="com.example.custom", name="mystery"))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(in_name, dtype, ["N", in_channels, *hw])],
        [helper.make_tensor_value_info(out_name, dtype, ["N", out_channels, *hw])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if custom:
        opsets.append(helper.make_opsetid("com.example.custom", 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="hemseg-tests")
    model.ir_version = IR_VERSION
    if metadata:
        props = ModelMetadata(**{**META.__dict__, "precision": precision}).to_props()
        helper.set_model_props(model, props)
    if not custom:
        onnx.checker.check_model(model)
    return model


def _convnet() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", (8, 3, 3, 3), 0.4), init("b1", (8,), 0.1), init("w2", (8, 8, 3, 3), 0.2),
             init("b2", (8,), 0.1), init("w3", (1, 8, 1, 1), 0.5), init("b3", (1,), 0.1),
             numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales")]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Resize", ["r2", "", "scales"], ["up"], name="up", mode="nearest"),
        helper.make_node("Conv", ["up", "w3", "b3"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(nodes, "tiny_convnet",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hemseg-tests")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, META.to_props())
    onnx.checker.check_model(model)
    return model


def main() -> None:
    out = HERE
    onnx.save(_model(), out / "tiny_64.onnx")
    onnx.save(_model(dtype=TensorProto.FLOAT16, precision="fp16"), out / "tiny_64_fp16.onnx")
    onnx.save(_model(hw=("H", "W")), out / "tiny_64_dynamic.onnx")
    onnx.save(_model(in_channels=1), out / "bad_input_shape.onnx")
    onnx.save(_model(out_channels=2), out / "bad_output_shape.onnx")
    onnx.save(_model(in_name="input"), out / "bad_input_name.onnx")
    onnx.save(_model(metadata=False), out / "no_metadata.onnx")
    onnx.save(_model(custom=True), out / "custom_op.onnx")
    onnx.save(_convnet(), out / "tiny_64_convnet.onnx")
    ext = out / "external"
    ext.mkdir(exist_ok=True)
    onnx.save(_model(), ext / "tiny_ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="tiny_ext.onnx.data", size_threshold=0)
    print(json.dumps(sorted(p.name for p in out.rglob("*.onnx*")), indent=1))


if __name__ == "__main__":
    main()
