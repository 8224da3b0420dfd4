"""hemseg-export: ONNX FP32 / FP16 / INT8 files, their metadata and signature, the parity gates, and refusals.

The test network is a U-Net (base 8, depth 3) at 64 px, trained for a few deterministic steps (one thread) to
segment bright tissue on four phantom images, then its BatchNorm statistics are re-estimated on that batch: a
random-init net outputs logits near 0 everywhere, where any rounding flips mask pixels and Dice gates turn to coin
flips; this one is decisive on most pixels, like a trained model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common")

from click.testing import CliRunner  # noqa: E402

from hemseg.cli._base import run_main  # noqa: E402
from hemseg.cli.export_cmd import export  # noqa: E402
from hemseg.errors import ModelError, UsageError  # noqa: E402
from hemseg.export import calib, chain, parity  # noqa: E402
from hemseg.export.onnx_fp16 import fp16_initializers, require_fp16  # noqa: E402
from hemseg.export.onnx_fp32 import export_fp32  # noqa: E402
from hemseg.export.onnx_int8 import qdq_counts  # noqa: E402
from hemseg.export.report import FormatResult  # noqa: E402
from hemseg.runtime.model_meta import INPUT_NAME, OUTPUT_NAME, ModelMetadata  # noqa: E402
from hemseg.runtime.preprocess import PreprocessSpec, preprocess  # noqa: E402

pytestmark = pytest.mark.torch

SIZE = 64
STEPS = 30
CALIB_COUNT = 16
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}


def _config(spec: PreprocessSpec) -> dict:
    return {"model": "unet", "model_kwargs": {"base": 8, "depth": 3}, "preprocess": spec.to_dict(),
            "image_size": spec.size, "threshold": 0.5, "labels": None, "data_fingerprint": "test-phantom",
            "init": "random", "versions": {}, "epoch": 1, "metrics": {}, "hemseg_version": "test",
            "threshold_tuning": {"metric": "pooled", "val_dice": None}}  # as a finished run records it


def _train_tiny_unet():
    from hemseg.phantom import CATEGORIES, render_case
    from hemseg.train.models import build_model

    spec = PreprocessSpec(size=SIZE)
    cats = [c for c in CATEGORIES if c.startswith(("axial", "sagittal"))]
    x = torch.from_numpy(np.stack([preprocess(render_case(cats[(3 * i) % len(cats)], i)[0], spec) for i in range(4)]))
    y = (x[:, :1] > 0).float()  # "bright tissue": learnable in a few steps, non-trivial, smooth-edged
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible training
    try:
        torch.manual_seed(0)
        model = build_model("unet", base=8, depth=3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(STEPS):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
            opt.step()
        for m in model.modules():  # eval-mode statistics = those of the training batch
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        with torch.no_grad():
            model(x)
    finally:
        torch.set_num_threads(threads)
    return model.eval(), spec


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from hemseg.train.checkpoint import save_checkpoint

    model, spec = _train_tiny_unet()
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, model, _config(spec))
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "out"
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "onnx-fp16,onnx-int8",
                                         "--calib-count", str(CALIB_COUNT), "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    return out, result


def _run(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        run_main(export, "hemseg-export", args)
    return exc.value.code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the files
def test_export_writes_every_format_with_a_report(exported, checkpoint):
    out, result = exported
    assert sorted(p.name for p in out.iterdir()) == sorted([*ONNX_FILES.values(), "export_report.json"])
    report = json.loads((out / "export_report.json").read_text())
    assert report["ok"] is True and report["verified"] is True
    assert list(report["formats"]) == ["onnx", "onnx-fp16", "onnx-int8"]  # onnx built first, as a dependency
    for fmt, name in zip(report["formats"], ONNX_FILES.values()):
        entry = report["formats"][fmt]
        assert entry["file"] == name and entry["status"] == "passed"
        assert entry["size_bytes"] == (out / name).stat().st_size
        assert entry["export_seconds"] > 0
        assert entry["parity"]["passed"] is True and entry["parity"]["n_images"] == calib.VERIFY_COUNT
        assert all(g["passed"] for g in entry["parity"]["gates"])
        assert "runtime_loads" in [g["name"] for g in entry["parity"]["gates"]]
        # a model with foreground on the verification images is judged on its masks, and the report says so
        assert entry["parity"]["measurable"] is True and entry["parity"]["basis"] == "mask Dice"
        assert entry["parity"]["images_with_foreground"] >= 3 and entry["parity"]["reference_foreground_fraction"] > 0
        assert entry["parity"]["decision"].startswith("passed on mask Dice")
        assert f"{fmt}: passed on mask Dice" in result.output
    m32 = report["formats"]["onnx"]["parity"]["metrics"]
    assert m32["rel_l2_max"] < parity.FP32_MAX_REL_L2 and m32["dice_vs_pytorch"] >= parity.FP32_MIN_DICE
    assert 0.02 < m32["mask_foreground_fraction"] < 0.9  # the gates are not trivially met by empty masks
    m8 = report["formats"]["onnx-int8"]["parity"]["metrics"]
    assert m8["dice_vs_fp32"] >= parity.INT8_MIN_DICE
    assert {"dice_vs_truth", "dice_vs_truth_fp32"} <= set(m8)  # INT8 vs ground truth next to FP32's
    assert report["verification_data"]["source"] == "phantom" and report["verification_data"]["n_images"] == 8
    cal = report["calibration_data"]
    assert cal["source"] == "phantom" and cal["n_images"] == CALIB_COUNT
    assert not set(cal["ids"]) & set(report["verification_data"]["ids"])  # calibration-disjoint verification
    details = report["formats"]["onnx-int8"]["details"]
    assert "no --calib given" in details["calibration"]
    q = details["quantization"]  # 8- and 7-bit weights were both tried on the calibration images; the closer kept
    assert q["weight_bits"] in (7, 8) and q["calibration_images"] == CALIB_COUNT
    assert q[f"rel_l2_{q['weight_bits']}bit"] == min(q["rel_l2_7bit"], q["rel_l2_8bit"])
    assert report["checkpoint"]["path"] == str(checkpoint.resolve())
    from hemseg.train.checkpoint import read_checkpoint

    # what the models expect, in the report too (only in the ONNX metadata before: QA, stop 56)
    assert report["checkpoint"]["preprocess"] == read_checkpoint(checkpoint)["config"]["preprocess"]
    assert "model_int8.onnx" in result.output and "passed" in result.output  # the echoed table


def test_metadata_round_trip(exported, checkpoint):
    from hemseg.train.checkpoint import file_sha256, read_checkpoint

    out, _ = exported
    config = read_checkpoint(checkpoint)["config"]
    for precision, name in ONNX_FILES.items():
        props = {p.key: p.value for p in onnx.load(str(out / name)).metadata_props}
        meta = ModelMetadata.from_props(props)
        assert meta.precision == precision
        assert meta.preprocess == PreprocessSpec.from_dict(config["preprocess"]) and meta.image_size == SIZE
        assert meta.threshold == 0.5 and meta.labels is None and meta.model == "unet"
        assert meta.checkpoint_sha256 == file_sha256(checkpoint)
        assert {"torch", "onnx", "onnxruntime", "hemseg"} <= set(meta.producer_versions)
        assert props["hemseg.checkpoint_path"] == str(checkpoint.resolve())
        assert meta.data_fingerprint == "test-phantom"  # the training data's, for eval's same-data warning


def test_signature_and_dynamic_batch(exported):
    out, _ = exported
    x = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    for name in ONNX_FILES.values():
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
        assert (inp.name, inp.type, inp.shape[1:]) == (INPUT_NAME, "tensor(float)", [3, SIZE, SIZE])
        assert (outp.name, outp.type, outp.shape[1:]) == (OUTPUT_NAME, "tensor(float)", [1, SIZE, SIZE])
        assert isinstance(inp.shape[0], str) and isinstance(outp.shape[0], str)  # symbolic N
        y3 = sess.run(None, {INPUT_NAME: x})[0]
        y1 = sess.run(None, {INPUT_NAME: x[:1]})[0]
        assert y3.shape == (3, 1, SIZE, SIZE) and y1.shape == (1, 1, SIZE, SIZE) and y3.dtype == np.float32
        np.testing.assert_allclose(y1[0], y3[0], rtol=1e-4, atol=1e-4)  # batch-independent (eval BatchNorm)


def test_files_pass_checker_and_strict_shape_inference(exported):
    out, _ = exported
    for name in ONNX_FILES.values():
        model = onnx.load(str(out / name))
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        assert not [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert not list(out.glob("*.data")) and not list(out.glob(".*"))  # self-contained, no temp files left


def test_fp16_really_holds_float16(exported):
    out, _ = exported
    fp16 = onnx.load(str(out / "model_fp16.onnx"))
    f16, total = fp16_initializers(fp16)
    assert total > 0 and f16 == total  # every weight of these nets is float16
    assert require_fp16(fp16, out / "model_fp16.onnx") == f16
    fake = onnx.load(str(out / "model.onnx"))  # an FP32 model passed off as FP16 must be refused
    assert fp16_initializers(fake)[0] == 0
    with pytest.raises(ModelError, match="not an FP16 model"):
        require_fp16(fake, out / "model.onnx")


def test_float32_kept_output_op_still_gives_a_float32_output():
    """onnxconverter_common leaves a float16 graph output when a float32-kept op (FCN's final Resize) produces it."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxconverter_common import float16

    from hemseg.export.onnx_fp16 import op_block_list, restore_float32_outputs

    w = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "w")
    sizes = numpy_helper.from_array(np.array([1, 1, 8, 8], np.int64), "sizes")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"]),
         helper.make_node("Resize", ["c", "", "", "sizes"], ["logits"], mode="linear")],
        "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 8, 8])], [w, sizes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=op_block_list())
    assert converted.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16  # the quirk
    assert restore_float32_outputs(converted) == ["logits"]
    assert converted.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    onnx.checker.check_model(converted)
    x = np.ones((1, 3, 4, 4), np.float32)
    y = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    assert y[0].dtype == np.float32 and np.allclose(y[0], 1.5)


def _png_dataset(root: Path, n: int = 12) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 255, (40, 48), dtype=np.uint8), (7, 7), 0)
        mask = np.zeros((40, 48), np.uint8)
        mask[10:20, 10:30] = 255
        cv2.imwrite(str(root / "images" / f"s{i:02d}.png"), img)
        cv2.imwrite(str(root / "masks" / f"s{i:02d}.png"), mask)
    return root


def test_no_verify_int8_calibrated_on_a_dataset(checkpoint, tmp_path):
    out, data = tmp_path / "out", _png_dataset(tmp_path / "data")
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "onnx-int8", "--no-verify",
                                         "--calib", str(data), "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "export_report.json").read_text())
    assert report["verified"] is False and report["gates"] is None and report["verification_data"] is None
    for fmt in ("onnx", "onnx-int8"):
        assert report["formats"][fmt]["status"] == "not verified" and report["formats"][fmt]["parity"] is None
    cal = report["calibration_data"]
    assert cal["source"] == "dataset" and cal["n_images"] == 12  # nothing held back for verification
    assert str(data) in report["formats"]["onnx-int8"]["details"]["calibration"]
    assert "not verified" in result.output and (out / "model_int8.onnx").is_file()


def test_int8_has_quantize_dequantize_nodes(exported):
    out, _ = exported
    counts = qdq_counts(onnx.load(str(out / "model_int8.onnx")))
    assert counts["QuantizeLinear"] > 5 and counts["DequantizeLinear"] > 5
    assert qdq_counts(onnx.load(str(out / "model.onnx"))) == {"QuantizeLinear": 0, "DequantizeLinear": 0}


def test_int8_keeps_the_first_conv_and_the_head_in_float(exported):
    from hemseg.export.onnx_int8 import float_nodes, quantization_record

    out, _ = exported
    fp32 = onnx.load(str(out / "model.onnx"))
    convs = [n for n in fp32.graph.node if n.op_type == "Conv"]
    kept = float_nodes(fp32)
    assert kept[0] == convs[0].name and convs[-1].name in kept and convs[1].name not in kept
    int8 = onnx.load(str(out / "model_int8.onnx"))
    record = quantization_record(int8)
    assert record["float_nodes"] and set(record["float_nodes"]) <= {n.name for n in int8.graph.node}
    dq_out = {o for n in int8.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in int8.graph.node}
    floats = {i.name for i in int8.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    kept_convs = [by_name[name] for name in record["float_nodes"] if by_name[name].op_type == "Conv"]
    assert len(kept_convs) == 2 and kept_convs[0].input[0] == "image"  # the stem reads the float input itself
    for node in kept_convs:  # float weights straight from an initializer, no DequantizeLinear in between
        assert node.input[1] in floats and node.input[1] not in dq_out, node.name
    quantized = [n for n in int8.graph.node if n.op_type == "Conv" and n.name not in record["float_nodes"]]
    assert quantized and all(n.input[1] in dq_out for n in quantized)


def test_float_nodes_of_a_hand_built_graph():
    from onnx import TensorProto, helper

    from hemseg.export.onnx_int8 import float_nodes

    w = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, [1, 1, 1, 1], [1.0]) for i in range(3)]
    nodes = [helper.make_node("Conv", ["image", "w0"], ["a"], name="stem"),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Conv", ["b", "w1"], ["c"], name="body"),
             helper.make_node("Conv", ["c", "w2"], ["d"], name="head"),
             helper.make_node("Resize", ["d", "", "scales"], ["logits"], name="up")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 8, 8])],
        initializer=w + [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])])
    assert float_nodes(helper.make_model(graph)) == ["stem", "up", "head"]


def test_near_threshold_fraction_and_the_low_margin_note():
    logits = np.zeros((1, 1, 2, 4), np.float32)
    logits[0, 0, 0] = [0.1, 0.4, 2.0, 3.0]  # threshold 0.5 -> logit 0: two of four foreground pixels within 0.5
    logits[0, 0, 1] = -5.0
    assert parity.near_threshold_fraction(logits, 0.5) == pytest.approx(0.5)
    assert np.isnan(parity.near_threshold_fraction(np.full_like(logits, -3.0), 0.5))  # no foreground
    timid = np.full((1, 1, 4, 4), -2.0, np.float32)
    timid[0, 0, :2] = 0.2  # 8 foreground pixels, all 0.2 above the threshold logit
    shifted = timid - 0.3  # a small perturbation erases the whole mask
    truth = np.zeros((1, 4, 4), np.uint8)
    p = parity.verify_vs_fp32(shifted, timid, truth, 0.5, parity.INT8_MIN_DICE)
    assert not p.passed and p.metrics["fp32_foreground_near_threshold"] == 1.0
    assert len(p.notes) == 1 and "low FP32 margin: 100%" in p.notes[0]
    assert p.as_dict()["notes"] == p.notes
    confident = timid.copy()
    confident[0, 0, :2] = 3.0
    p = parity.verify_vs_fp32(confident - 3.5, confident, truth, 0.5, parity.INT8_MIN_DICE)
    assert not p.passed and p.notes == []  # a failure with a confident FP32 model blames the converter alone


# ------------------------------------------------------------------------------------------------ BatchNorm
def test_fp32_export_uses_eval_batchnorm_even_from_a_training_model(checkpoint, tmp_path):
    from hemseg.export.metadata import metadata_from_config
    from hemseg.train.checkpoint import file_sha256, load_checkpoint

    model, config = load_checkpoint(checkpoint)
    meta = metadata_from_config(config, checkpoint, file_sha256(checkpoint))
    model.train()  # as if a caller forgot eval(): the export must not capture batch statistics
    path = export_fp32(model, meta, checkpoint, tmp_path)
    assert not any(m.training for m in model.modules())  # and nothing put it back into training mode
    graph = onnx.load(str(path)).graph
    assert not {n.op_type for n in graph.node} & {"BatchNormalization", "ReduceMean"}  # folded, no batch stats
    v = calib.phantom_verification(meta.preprocess)
    model.train()  # the PyTorch reference runs in eval mode whatever it was handed
    result, run = parity.verify_fp32(path, model, v, meta.preprocess, meta.threshold, parity.Gates())
    assert result.passed, result.failures()
    assert not model.training and run.logits.shape == (len(v), 1, SIZE, SIZE)


# ------------------------------------------------------------------------------------------------ gates
def test_missed_gates_fail_the_export_and_remove_the_files(checkpoint, tmp_path, monkeypatch, capsys):
    from hemseg.export import onnx_fp16

    convert = onnx_fp16.convert_fp16

    def corrupted_fp16(*args, **kwargs):  # a broken converter: the head's weights come out negated
        path = convert(*args, **kwargs)
        model = onnx.load(str(path))
        head = [n for n in model.graph.node if n.op_type == "Conv"][-1]
        for init in model.graph.initializer:
            if init.name == head.input[1]:
                init.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(init), init.name))
        onnx.save(model, str(path))
        return path

    monkeypatch.setattr(onnx_fp16, "convert_fp16", corrupted_fp16)
    monkeypatch.setattr(parity, "INT8_MIN_DICE", 1.01)  # an impossible gate
    out = tmp_path / "out"
    code, err = _run([str(checkpoint), "--out", str(out), "--format", "onnx-fp16,onnx-int8",
                      "--calib-count", "4", "-q"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    # the checkpoint records no training data: one warning names the phantom stand-in, then the one-line error
    assert len(lines) == 2 and lines[0].startswith("WARNING") and "rendered phantom images" in lines[0]
    lines = lines[1:]
    assert lines[0].startswith("hemseg-export: error: ")
    assert "onnx-fp16: missed parity gate(s): dice_vs_fp32" in lines[0] and "(needs >= 1.01)" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model.onnx"]  # failed formats removed
    report = json.loads((out / "export_report.json").read_text())
    assert report["ok"] is False and report["formats"]["onnx"]["status"] == "passed"
    assert report["formats"]["onnx-fp16"]["status"] == "failed"
    assert report["formats"]["onnx-fp16"]["parity"]["metrics"]["dice_vs_fp32"] < parity.FP16_MIN_DICE
    assert report["formats"]["onnx-int8"]["status"] == "failed"
    assert report["gates"]["int8_min_dice"] == 1.01
    # a failed format's entry named the files it removed as its files (a reader took them for present)
    for fmt, name in (("onnx-fp16", "model_fp16.onnx"), ("onnx-int8", "model_int8.onnx")):
        entry = report["formats"][fmt]
        assert entry["files"] == [] and entry["file"] is None and entry["sha256"] == {}, entry
        assert entry["details"]["removed_files"] == [name]
    assert report["formats"]["onnx"]["files"] == ["model.onnx"] and report["formats"]["onnx"]["sha256"]


def test_gates_follow_the_module_constants(monkeypatch):
    assert parity.Gates().fp16_min_dice == parity.FP16_MIN_DICE == 0.98
    monkeypatch.setattr(parity, "FP32_MAX_REL_L2", 0.5)
    assert parity.Gates().fp32_max_rel_l2 == 0.5
    assert parity.Gates(int8_min_dice=0.5).int8_min_dice == 0.5


def test_run_step_removes_the_files_of_a_failing_or_raising_step(tmp_path):
    def build():
        (tmp_path / "model.onnx").write_bytes(b"x")
        return tmp_path / "model.onnx"

    failing = parity.Parity("pytorch", 8, checks=[parity.at_least("dice_vs_pytorch", 0.5, 0.999)])
    r = FormatResult("onnx", ["model.onnx"])
    assert chain.run_step(r, tmp_path, build, lambda p: failing) is None
    assert r.status == "failed" and not (tmp_path / "model.onnx").exists() and "0.5" in r.error

    r = FormatResult("onnx", ["model.onnx"])
    with pytest.raises(ModelError):
        chain.run_step(r, tmp_path, build, lambda p: (_ for _ in ()).throw(ModelError(p, "broken")))
    assert r.status == "error" and not (tmp_path / "model.onnx").exists()
    assert r.details["removed_files"] == ["model.onnx"] and r.as_dict()["files"] == []

    r = FormatResult("onnx", ["model.onnx"])
    assert chain.run_step(r, tmp_path, build, None) == tmp_path / "model.onnx"
    assert r.status == "not verified" and r.size_bytes == 1


# ------------------------------------------------------------------------------------------------ refusals
def test_non_hemseg_checkpoints_are_refused_in_one_line(tmp_path, capsys):
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, plain)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "hemseg-checkpoint", "obj": PreprocessSpec()}, unsafe)  # not weights_only-loadable
    for path, reason in ((plain, "not a hemseg checkpoint"), (unsafe, "weights-only")):
        code, err = _run([str(path), "--out", str(tmp_path / "out")], capsys)
        assert code == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"hemseg-export: error: {path}") and reason in lines[0]
    assert not (tmp_path / "out").exists()


def test_opsets_below_18_are_refused_before_anything_is_written(checkpoint, tmp_path, capsys):
    code, err = _run([str(checkpoint), "--out", str(tmp_path / "out"), "--opset", "13"], capsys)
    assert code == 1 and "--opset 13 is not supported" in err and len(err.strip().splitlines()) == 1
    code, err = _run([str(checkpoint), "--out", str(tmp_path / "out"), "--opset", "99"], capsys)  # said "use 18 or newer"
    assert code == 1 and "--opset 99 is newer than the installed onnx knows" in err
    assert not (tmp_path / "out").exists()


def test_out_may_not_be_the_checkpoint(checkpoint, capsys):
    code, err = _run([str(checkpoint), "--out", str(checkpoint)], capsys)
    assert code == 1 and "is the checkpoint file itself" in err
    assert checkpoint.is_file()


def test_trt_without_tensorrt_fails_before_writing_anything(checkpoint, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    out = tmp_path / "out"
    code, err = _run([str(checkpoint), "--out", str(out), "--format", "trt"], capsys)
    assert code == 1
    assert "TensorRT is not installed (pip install 'hemseg[trt]' on a machine with an NVIDIA GPU)" in err
    assert not out.exists()


def test_trt_step_is_wired_to_the_fp16_model(checkpoint, tmp_path, monkeypatch):
    """Without TensorRT here, the engine builder and runner are faked: this checks what the chain hands them."""
    from hemseg.export import trt_build
    from hemseg.export.batch_profile import BatchProfile

    calls = {}

    def fake_build_engine(onnx_path, out_dir, profile, workspace_mb, timing_cache, metadata):
        calls.update(onnx=Path(onnx_path), profile=profile, workspace_mb=workspace_mb, cache=timing_cache,
                     precision=metadata.precision)
        (Path(out_dir) / "model.plan").write_bytes(b"engine")
        (Path(out_dir) / "model.plan.json").write_text("{}")
        return Path(out_dir) / "model.plan"

    monkeypatch.setattr(chain, "require_tensorrt", lambda: None)
    monkeypatch.setattr(trt_build, "build_engine", fake_build_engine)
    # the engine is verified where it was built, beside its FP16 model, before either reaches --out
    monkeypatch.setattr(parity, "trt_runner", lambda path: parity.onnx_runner(Path(path).parent / "model_fp16.onnx"))
    out = tmp_path / "out"
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "trt", "--batch", "1,2,4",
                                         "--workspace-mb", "64", "--timing-cache", str(tmp_path / "cache.bin"), "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    staged = calls.pop("onnx")  # built in the export's staging folder inside --out, then moved into place
    assert staged.name == "model_fp16.onnx" and staged.parent.parent == out and staged.parent.name.startswith(".")
    assert calls == {"profile": BatchProfile(1, 2, 4), "workspace_mb": 64, "cache": tmp_path / "cache.bin",
                     "precision": "fp16"}
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model.onnx", "model.plan",
                                                     "model.plan.json", "model_fp16.onnx"]
    report = json.loads((out / "export_report.json").read_text())
    assert list(report["formats"]) == ["onnx", "onnx-fp16", "trt"]
    trt = report["formats"]["trt"]
    assert trt["status"] == "passed" and trt["files"] == ["model.plan", "model.plan.json"]
    # the faked engine is the FP16 ONNX model, so its parity is exactly that model's (1.0 on AVX2; the FP16 kernels
    # of other CPUs may flip a pixel or two)
    fp16 = report["formats"]["onnx-fp16"]["parity"]["metrics"]
    assert trt["parity"]["metrics"]["dice_vs_fp32"] == fp16["dice_vs_fp32"] > 0.99
    assert trt["size_bytes"] == len(b"engine") + 2


def test_parse_formats_adds_dependencies_in_order():
    assert chain.parse_formats("onnx") == ["onnx"]
    assert chain.parse_formats("trt") == ["onnx", "onnx-fp16", "trt"]
    assert chain.parse_formats("onnx-int8, onnx") == ["onnx", "onnx-int8"]
    with pytest.raises(UsageError, match="unknown --format"):
        chain.parse_formats("onnx,tflite")


# ------------------------------------------------------------------------------------------------ data
def test_dataset_split_keeps_verification_and_calibration_files_apart(tmp_path):
    import cv2

    _png_dataset(tmp_path / "data")
    spec = PreprocessSpec(size=32, nlm=False)
    cal, ver = calib.dataset_sets(tmp_path / "data", spec, calib_count=3)
    assert len(ver) == calib.VERIFY_COUNT and len(cal) == 3 and not set(cal.ids) & set(ver.ids)
    assert ver.images.shape == (8, 3, 32, 32) and ver.images.dtype == np.float32
    assert ver.masks.shape == (8, 32, 32) and set(np.unique(ver.masks)) == {0, 1}
    np.testing.assert_array_equal(ver.images[0], preprocess(cv2.imread(
        str(tmp_path / "data" / "images" / f"{ver.ids[0]}.png"), cv2.IMREAD_UNCHANGED), spec))
    with pytest.raises(Exception, match="need at least 12 to verify"):
        calib.dataset_sets(tmp_path / "data", spec, calib_count=3, verify_count=12)
    cal, ver = calib.dataset_sets(tmp_path / "data", spec, calib_count=64, verify_count=0)  # --no-verify: all calibrate
    assert len(ver) == 0 and len(cal) == 12
    cal, ver = calib.dataset_sets(tmp_path / "data", spec, calib_count=0, verify_count=12)  # verify only
    assert len(ver) == 12 and len(cal) == 0


def test_dataset_verification_takes_lesion_files_first_and_labels_no_mask_holds_are_refused(tmp_path):
    """--calib DATA: verification took the first shuffled files, so a set whose few lesion slices went to
    calibration verified on lesion-free slices only (the gates then compared logits, never a lesion mask); a model's
    label no mask holds (--label 255 trained, 0/1 masks) read every mask as lesion-free without a word."""
    import cv2

    from hemseg.errors import DatasetError

    root = _png_dataset(tmp_path / "data", n=20)
    for i in range(20):  # three files keep their lesion: they must be among the verification files
        if i not in (3, 11, 17):
            cv2.imwrite(str(root / "masks" / f"s{i:02d}.png"), np.zeros((40, 48), np.uint8))
    cal, ver = calib.dataset_sets(root, PreprocessSpec(size=32, nlm=False), calib_count=4)
    assert {"s03", "s11", "s17"} <= set(ver.ids) and ver.summary()["foreground_images"] == 3
    assert cal.summary()["foreground_images"] == 0
    with pytest.raises(DatasetError, match="no mask holds the model's training label 7; the masks hold 255"):
        calib.dataset_sets(root, PreprocessSpec(size=32, nlm=False), calib_count=4, labels=[7])


def test_short_calibration_says_whole_verification_files_are_held_back(tmp_path, caplog):
    """Two 16-slice volumes: verification takes 8 slices of the first, calibration gets the 16 of the second only.
    The warning said 'only 16 calibration image(s) left after the 8 verification image(s)', as if 24 were all
    there was; it now says the verification file is held back whole."""
    import logging

    import nibabel as nib

    for sub_ in ("images", "masks"):
        (tmp_path / "data" / sub_).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem in ("a", "b"):
        vol = rng.integers(0, 255, (32, 32, 16)).astype(np.uint8)
        mask = np.zeros((32, 32, 16), np.uint8)
        mask[10:20, 10:20, :] = 1
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "data" / "images" / f"{stem}.nii.gz"))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "data" / "masks" / f"{stem}.nii.gz"))
    with caplog.at_level(logging.WARNING, logger="hemseg.export.calib"):
        cal, ver = calib.dataset_sets(tmp_path / "data", PreprocessSpec(size=32, nlm=False), calib_count=100)
    assert len(ver) == 8 and len(cal) == 16
    assert ("only 16 calibration image(s) (asked for 100): the 8 verification image(s) came from 1 whole file(s), "
            "held back from calibration") in caplog.text


def test_a_re_export_removes_another_checkpoints_models_and_keeps_its_own(exported, checkpoint, tmp_path):
    """An export folder holds one checkpoint's models: a re-export of another checkpoint removes the formats it does
    not rebuild (an old model_int8.onnx was benchmarked and used as the new model's INT8); of the same checkpoint
    they stay (one format after another)."""
    import shutil

    from hemseg.train.checkpoint import save_checkpoint

    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(exported[0], same)
    shutil.copytree(exported[0], other)
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(same), "--format", "onnx", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert (same / "model_fp16.onnx").is_file() and (same / "model_int8.onnx").is_file()
    model, spec = _train_tiny_unet()
    second = tmp_path / "second.pt"
    save_checkpoint(second, model, {**_config(spec), "threshold": 0.4})  # another checkpoint (another sha256)
    result = CliRunner().invoke(export, [str(second), "--out", str(other), "--format", "onnx", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert (other / "model.onnx").is_file()
    assert not (other / "model_fp16.onnx").exists() and not (other / "model_int8.onnx").exists()


def test_files_named_like_exports_that_hemseg_did_not_write_are_kept_and_refused(checkpoint, tmp_path):
    """hemseg-export removed a user's own model_int8.onnx (a text file here) and model.plan (an engine without
    hemseg's sidecar) as 'an earlier export of another checkpoint', and a fold_1/ of foreign files."""
    # also the second file of a format without its model, and an export report hemseg did not write: each was
    # removed or overwritten
    for name in ("model_int8.onnx", "model.plan", "model_ov_int8.bin", "model.plan.json", "export_report.md",
                 "export_report.json"):
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        (out / name).write_text("my own file")
        result = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "onnx", "--no-verify"])
        assert result.exit_code != 0 and isinstance(result.exception, UsageError), result.output
        assert f"{out / name} is not a hemseg export" in str(result.exception)
        assert sorted(p.name for p in out.iterdir()) == [name] and (out / name).read_text() == "my own file"
    out = tmp_path / "with_folds"
    (out / "fold_1").mkdir(parents=True)
    (out / "fold_1" / "model.onnx").write_text("not an export")
    (out / "folds.json").write_text("my notes")
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "onnx", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert (out / "fold_1" / "model.onnx").read_text() == "not an export" and (out / "folds.json").exists()


def test_models_kept_from_an_earlier_export_are_in_the_report(exported, checkpoint, tmp_path):
    """A re-export listed only its own formats and said 'verified: true' while an INT8 model of an earlier
    --no-verify run stayed in the folder (and one that missed the gate was used by predict and bench)."""
    import shutil

    folder = tmp_path / "e"
    shutil.copytree(exported[0], folder)
    earlier = json.loads((folder / "export_report.json").read_text())
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(folder), "--format", "onnx", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "export_report.json").read_text())
    assert report["kept_formats"] == ["onnx-fp16", "onnx-int8"] and report["verified"] is True
    assert report["formats"]["onnx-int8"]["status"] == earlier["formats"]["onnx-int8"]["status"] == "passed"
    assert report["formats"]["onnx-int8"]["kept_from_export"] == earlier["created"]
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(folder), "--format", "onnx", "-q"])
    again = json.loads((folder / "export_report.json").read_text())  # still the export that built it, not the last
    assert again["formats"]["onnx-int8"]["kept_from_export"] == earlier["created"]
    unverified = tmp_path / "u"  # an INT8 model kept from a --no-verify export: the folder is not verified
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(unverified), "--format", "onnx-int8",
                                         "--no-verify", "-q"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(unverified), "--format", "onnx", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((unverified / "export_report.json").read_text())
    assert report["formats"]["onnx-int8"]["status"] == "not verified" and report["verified"] is False
    (unverified / "export_report.json").unlink()  # no record at all: "unknown"
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(unverified), "--format", "onnx", "-q"])
    report = json.loads((unverified / "export_report.json").read_text())
    assert report["formats"]["onnx-int8"]["status"] == "unknown" and report["verified"] is False


def test_a_checkpoint_named_like_an_export_file_in_out_is_never_removed(checkpoint, tmp_path, capsys):
    """A checkpoint stored as E/model_fp16.onnx was removed as 'an earlier export of another checkpoint'."""
    import shutil

    (tmp_path / "E").mkdir()
    ckpt = tmp_path / "E" / "model_fp16.onnx"
    shutil.copy(checkpoint, ckpt)
    code, err = _run([str(ckpt), "--out", str(tmp_path / "E"), "--format", "onnx", "--no-verify"], capsys)
    assert code != 0 and "is named like an export file" in err and ckpt.is_file()


def test_lesion_free_references_give_no_dice_against_them():
    from hemseg.export.parity import dice_vs_truth

    masks = np.zeros((3, 8, 8), bool)
    assert dice_vs_truth(masks, np.zeros((3, 8, 8), bool)) is None  # 1.0 before: empty vs empty
    truth = masks.copy()
    truth[0, 2:4, 2:4] = True
    assert dice_vs_truth(masks, truth) == 0.0


def test_the_first_conv_behind_a_pad_stays_float():
    """At a size no multiple of 32 the graph pads first: the first Conv was quantized (and Slices kept instead)."""
    from onnx_graphs import padded_conv_chain

    from hemseg.export.onnx_int8 import float_nodes

    assert float_nodes(padded_conv_chain(2)) == ["stem", "head"]


def test_a_fold_export_and_a_single_export_do_not_share_a_folder(tmp_path):
    """hemseg predict ran a leftover top-level model.onnx instead of averaging the folds, and averaged in a
    fold_<k> left by an earlier export with more folds."""
    from hemseg.cli.export_cmd import _clear_other_layout

    out = tmp_path / "out"
    tiny = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"  # an export: it records a checkpoint
    for sub in ("", "fold_1", "fold_2", "fold_3"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        (out / sub / "model.onnx").write_bytes(tiny.read_bytes())
        (out / sub / "export_report.json").write_text("{}")
    (out / "fold_2" / "notes.txt").write_text("mine")
    _clear_other_layout(out, 2)  # a 2-fold export is coming
    assert not (out / "model.onnx").exists() and not (out / "fold_3").exists()
    assert (out / "fold_1" / "model.onnx").is_file() and (out / "fold_2" / "notes.txt").is_file()
    _clear_other_layout(out, 0)  # a single export is coming: fold folders go, a folder with other files stays
    assert not (out / "fold_1").exists() and (out / "fold_2" / "notes.txt").is_file()


def test_an_interrupted_export_leaves_the_folder_as_it_was(checkpoint, tmp_path, monkeypatch):
    """Each model was written under its final name before its gate ran: an export stopped during the INT8 step
    left model_int8.onnx unverified (later exports kept it, predict ran it) and no report; a re-export of another
    checkpoint stopped part-way left a folder of two checkpoints. Now the export is built in a staging folder and
    published at its end."""
    from hemseg.export import onnx_int8
    from hemseg.train.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(checkpoint)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    other = save_checkpoint(tmp_path / "other.pt", model, config)  # an earlier export of another checkpoint
    out = tmp_path / "out"
    first = CliRunner().invoke(export, [str(other), "--out", str(out), "--format", "onnx", "-q"])
    assert first.exit_code == 0, (first.output, first.exception)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_int8, "quantize_int8", stopped)
    res = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "onnx,onnx-int8",
                                      "--calib-count", "4", "-q"])
    assert res.exit_code != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing new, nothing half-made, no staging


def test_a_second_export_into_a_folder_in_use_is_refused(checkpoint, tmp_path):
    """Two exports into one folder both exited 0 with models of two checkpoints and one report naming one."""
    from hemseg.runtime.io.lock import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out, "hemseg-export"):
        res = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "onnx", "-q"])
        assert isinstance(res.exception, UsageError) and "another hemseg command" in str(res.exception)
    assert list(out.iterdir()) == []


def test_an_interrupt_torch_wraps_in_its_own_error_stays_an_interrupt():
    """SIGTERM during torch.onnx.export came out as 'torch.onnx.export failed' (exit 1, a failure report)."""
    from hemseg.export.onnx_fp32 import _interrupt_in

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as inner:
            raise RuntimeError("Failed to export the model with torch.export") from inner
    except RuntimeError as outer:
        assert isinstance(_interrupt_in(outer), KeyboardInterrupt)
    assert _interrupt_in(ValueError("a real failure")) is None


def test_a_file_onnxruntime_cannot_run_while_building_is_a_model_error(tmp_path):
    """--opset 28 --format onnx-int8: onnxruntime has no DequantizeLinear(28) kernel, and its exception came out as a
    traceback."""
    from hemseg.errors import ModelError
    from hemseg.export.parity import run_onnx

    bad = tmp_path / "model_int8.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="model_int8.onnx: onnxruntime .* cannot run it"):
        run_onnx(bad, np.zeros((1, 3, 8, 8), np.float32))


def test_an_int8_candidate_onnxruntime_cannot_run_is_named_as_the_model_being_built(tmp_path, monkeypatch):
    """The error named .export-xxxx/.hemseg-int8-xxxx/quant_0.onnx, gone by the time anyone read it."""
    from hemseg.errors import ModelError
    from hemseg.export import onnx_int8, parity

    calls = []

    def fake_run_onnx(path, images, chunk=8):
        calls.append(path)
        if len(calls) > 1:
            raise ModelError(path, "onnxruntime 1.x cannot run it: NOT_IMPLEMENTED DequantizeLinear(28)")
        return np.zeros((len(images), 1, 4, 4), np.float32)

    monkeypatch.setattr(parity, "run_onnx", fake_run_onnx)
    with pytest.raises(ModelError, match="^model_int8.onnx: the INT8 model being built: onnxruntime"):
        onnx_int8._choose(tmp_path / "model.onnx", {False: tmp_path / ".tmp" / "quant_0.onnx"},
                          np.zeros((2, 3, 4, 4), np.float32))


def test_a_re_export_that_breaks_off_keeps_the_earlier_model_of_this_checkpoint(exported, checkpoint, tmp_path,
                                                                                monkeypatch):
    """A re-export of the same checkpoint whose INT8 build broke off (a full disk, a crash of the quantizer) removed
    the earlier, verified model_int8.onnx. It stays now, its report entry the earlier one with this run's error
    beside it; a format that misses its gates still removes its earlier files."""
    import shutil

    import hemseg.export.onnx_int8 as onnx_int8

    out = tmp_path / "out"
    shutil.copytree(exported[0], out)
    before = (out / "model_int8.onnx").read_bytes()

    def broken(*args, **kwargs):
        raise ModelError(out / "pre.onnx", "static quantization failed: Wire format was corrupt")

    monkeypatch.setattr(onnx_int8, "quantize_int8", broken)
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "onnx,onnx-int8",
                                         "--calib-count", str(CALIB_COUNT), "-q"])
    assert result.exit_code != 0
    assert (out / "model_int8.onnx").read_bytes() == before
    report = json.loads((out / "export_report.json").read_text())
    entry = report["formats"]["onnx-int8"]
    assert entry["status"] == "passed" and entry["this_run"]["status"] == "error"
    assert "Wire format was corrupt" in entry["this_run"]["error"] and "onnx-int8" in report["kept_formats"]
    assert report["ok"] is False


def test_int8_quantization_on_a_full_disk_says_so(checkpoint, tmp_path, monkeypatch):
    """onnxruntime's pre-processing wrote a model cut short on a full disk without an error; hemseg-export then
    reported 'static quantization failed: Error parsing message ... Wire format was corrupt' about a temporary
    file. With too little space free it is a 'No space left on device' error naming model_int8.onnx now."""
    import errno
    from collections import namedtuple

    import onnxruntime

    import hemseg.export.onnx_int8 as onnx_int8
    from hemseg.runtime.model_file import read_metadata

    out = tmp_path / "out"
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "onnx", "--no-verify"])
    assert result.exit_code == 0, result.output
    quantization, _ = onnx_int8._quantization()

    def cut_short(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:100])

    monkeypatch.setattr(onnx_int8, "_quantization", lambda: (quantization, cut_short))
    meta = read_metadata(onnxruntime.InferenceSession(str(out / "model.onnx")), out / "model.onnx")
    images = np.zeros((2, meta.preprocess.channels, meta.preprocess.size, meta.preprocess.size), np.float32)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(onnx_int8.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError) as exc:
        onnx_int8.quantize_int8(out / "model.onnx", images, meta, checkpoint, tmp_path / "q")
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(tmp_path / "q" / "model_int8.onnx")
    monkeypatch.setattr(onnx_int8.shutil, "disk_usage", lambda p: Usage(10**12, 0, 10**12))
    with pytest.raises(ModelError):  # space enough: the parse error stands
        onnx_int8.quantize_int8(out / "model.onnx", images, meta, checkpoint, tmp_path / "q")


def test_calibration_and_verification_ids_name_samples_of_category_folders_sharing_file_names(tmp_path):
    """t1/images/0.png and t2/images/0.png: export_report.json listed both as '0', and a name appeared in both the
    verification and the calibration list of a report that says the two are disjoint."""
    import cv2

    for cat in ("t1", "t2", "t3"):
        for sub_ in ("images", "masks"):
            (tmp_path / "d" / cat / sub_).mkdir(parents=True)
        for k in range(4):
            img = np.zeros((32, 32), np.uint8)
            img[8:20, 8:20] = 200
            cv2.imwrite(str(tmp_path / "d" / cat / "images" / f"{k}.png"), img)
            cv2.imwrite(str(tmp_path / "d" / cat / "masks" / f"{k}.png"), (img > 0).astype(np.uint8) * 255)
    cal, ver = calib.dataset_sets(tmp_path / "d", PreprocessSpec(size=32, nlm=False), calib_count=4)
    assert all("/" in i for i in cal.ids + ver.ids)
    assert not set(cal.ids) & set(ver.ids) and len(set(ver.ids)) == len(ver.ids)


def test_a_fold_list_names_the_checkpoint_version_each_fold_was_exported_from(tmp_path, monkeypatch):
    """A fold's best.pt replaced while a K-fold export ran (a training still going): folds.json listed the hash taken
    when the export began, predict then refused the folder it had just written ('mixes the folds of two runs')."""
    import hemseg.cli.export_cmd as export_cmd

    for k in (1, 2):
        (tmp_path / "run" / f"fold_{k}").mkdir(parents=True)
        (tmp_path / "run" / f"fold_{k}" / "best.pt").write_bytes(b"fold %d" % k)
        (tmp_path / "run" / f"fold_{k}" / "metrics.json").write_text("{}")
    loaded = {"fold_1": "a" * 64, "fold_2": "b" * 64}  # fold_2's version as loaded differs from the one listed first
    monkeypatch.setattr(export_cmd, "_export_one", lambda ckpt, out, *a: ([], loaded[out.name], []))
    result = CliRunner().invoke(export, [str(tmp_path / "run"), "--out", str(tmp_path / "exp"), "--format", "onnx",
                                         "--no-verify"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "exp" / "folds.json").read_text())
    assert doc["checkpoint_sha256"] == loaded


def test_a_re_export_keeps_the_permissions_of_the_files_it_replaces(checkpoint, tmp_path):
    """model.onnx and export_report.json made owner-only came back world-readable after a re-export (its staged
    files were moved in as they were made)."""
    import os

    out = tmp_path / "out"
    args = [str(checkpoint), "--out", str(out), "--format", "onnx", "--no-verify"]
    assert CliRunner().invoke(export, args).exit_code == 0
    for name in ("model.onnx", "export_report.json"):
        os.chmod(out / name, 0o600)
    assert CliRunner().invoke(export, args).exit_code == 0
    assert all((out / n).stat().st_mode & 0o777 == 0o600 for n in ("model.onnx", "export_report.json"))


def test_a_model_changed_in_place_since_its_export_is_not_reported_as_verified(exported, tmp_path):
    """Weights zeroed in place (same size, same recorded checkpoint): predict reported 'passed' for a model that
    segments differently, since only the size and the checkpoint were compared. The export records each file's
    SHA-256 as built and verified."""
    import shutil

    from hemseg.runtime.io.hashing import sha256_file
    from hemseg.runtime.model_file import export_verification

    out = tmp_path / "exp"
    shutil.copytree(exported[0], out)
    formats = json.loads((out / "export_report.json").read_text())["formats"]
    for entry in formats.values():
        assert entry["sha256"] == {n: sha256_file(out / n) for n in entry["files"]}
    model = out / "model.onnx"
    assert export_verification(model) == "passed"
    data = bytearray(model.read_bytes())
    data[-4096:-2048] = bytes(2048)  # part of the weights, in place: the size stays
    model.write_bytes(bytes(data))
    assert export_verification(model) == "unknown"
    assert export_verification(out / "model_fp16.onnx") == "passed"  # the untouched files keep their status


def test_a_repeated_format_option_builds_every_format_asked_for(checkpoint, tmp_path):
    """--format onnx-int8 --format onnx-fp16 built model.onnx and model_fp16.onnx, exit 0: the INT8 model asked
    for was dropped without a word (click kept the last value)."""
    out = tmp_path / "x"
    res = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "onnx-fp16", "--format",
                                      "onnx", "--no-verify", "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("model*.onnx")) == ["model.onnx", "model_fp16.onnx"]
    res = CliRunner().invoke(export, [str(checkpoint), "--out", str(tmp_path / "y"), "--format", "onnx",
                                      "--format", "nope"])
    assert res.exit_code != 0 and "unknown --format nope" in str(res.exception)


def test_a_checkpoint_with_nan_weights_is_refused_naming_it_not_the_export(checkpoint, tmp_path):
    """A checkpoint whose output is NaN (a diverged training) failed its export with 'onnx: missed parity gate(s):
    rel_l2_max nan', blaming the exporter; eval scored it as a model that finds nothing."""
    from hemseg.errors import ModelError
    from hemseg.train.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(checkpoint)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    bad = save_checkpoint(tmp_path / "nan.pt", model, config)
    with pytest.raises(ModelError, match=r"nan.pt: its weights hold NaN or infinite values \(head.bias\)"):
        load_checkpoint(bad)
    res = CliRunner().invoke(export, [str(bad), "--out", str(tmp_path / "x"), "--format", "onnx"])
    assert res.exit_code != 0 and "NaN or infinite" in str(res.exception) and not (tmp_path / "x").exists()


def test_eval_of_an_exported_model_on_its_training_data_is_flagged_as_optimistic(checkpoint, tmp_path):
    """hemseg eval of best.pt on its training data warned 'optimistic numbers'; of the exported model, with the
    same numbers, it said nothing (same_data_as_training null): the export now carries the data fingerprint, and
    the pixel digests of the training slices. Digests of the files' bytes (stop 50) missed the same pixels saved
    again (a PNG re-compressed, a 16-bit copy, a DICOM of them: a QA finding of stop 51); now the digests are of
    each slice's values as read."""
    import shutil

    import cv2

    from hemseg.runtime.dataset import dataset_fingerprint, discover, image_pixel_digests
    from hemseg.train.checkpoint import load_checkpoint, save_checkpoint
    from hemseg.train.evaluate import evaluate_model

    data = _png_dataset(tmp_path / "data", n=3)
    model, config = load_checkpoint(checkpoint)
    digests = sorted(set().union(*(image_pixel_digests(s.image) for s in discover(data).samples)))
    assert len(digests) == 3
    ckpt = save_checkpoint(tmp_path / "trained_here.pt", model,
                           {**config, "data_fingerprint": dataset_fingerprint(discover(data)),
                            "pixel_digests": digests})
    res = CliRunner().invoke(export, [str(ckpt), "--out", str(tmp_path / "exp"), "--format", "onnx", "--no-verify"])
    assert res.exit_code == 0, res.output
    onnx = tmp_path / "exp" / "model.onnx"
    s = evaluate_model(onnx, data, tmp_path / "ev", backend="ort-cpu", progress=False)
    assert s["same_data_as_training"] is True and s["training_images_in_data"] == 3
    assert [w for w in s["warnings"] if "optimistic" in w] == [
        f"{data} is the dataset {onnx} was trained on (training and validation images together): optimistic "
        "numbers, not a held-out evaluation"]  # one warning (the count would say it again)
    other = _png_dataset(tmp_path / "other", n=4)
    s = evaluate_model(onnx, other, tmp_path / "ev2", backend="ort-cpu", progress=False)
    assert s["same_data_as_training"] is False
    # its first three images are the training images (the same generator), copied under another layout: the
    # fingerprint of the whole dataset differs, and the evaluation said nothing; by their pixels they are told
    assert s["training_images_in_data"] == 3
    assert any("3 of the 4 images are, by their pixels, images the model was trained" in w for w in s["warnings"])
    # the same pixel values in other files: saved again uncompressed, as 16-bit, as TIFF; a flipped copy and a
    # blank image are not the training images
    redone = tmp_path / "redone"
    for sub in ("images", "masks"):
        (redone / sub).mkdir(parents=True)
    for i, stem in enumerate(("s00", "s01", "s02")):
        img = cv2.imread(str(data / "images" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        name, pixels = [("a.png", img), ("b.png", img.astype(np.uint16)), ("c.tif", img)][i]
        params = [cv2.IMWRITE_PNG_COMPRESSION, 0] if name.endswith(".png") else []
        cv2.imwrite(str(redone / "images" / name), pixels, params)
        assert (redone / "images" / name).read_bytes() != (data / "images" / f"{stem}.png").read_bytes()
        shutil.copyfile(data / "masks" / f"{stem}.png", redone / "masks" / f"{Path(name).stem}.png")
    cv2.imwrite(str(redone / "images" / "d.png"), cv2.flip(img, 1))
    cv2.imwrite(str(redone / "images" / "e.png"), np.zeros_like(img))
    for stem in ("d", "e"):
        shutil.copyfile(data / "masks" / "s00.png", redone / "masks" / f"{stem}.png")
    s = evaluate_model(onnx, redone, tmp_path / "ev3", backend="ort-cpu", progress=False)
    assert s["same_data_as_training"] is False and s["training_images_in_data"] == 3
    # an ensemble with a model trained elsewhere counts every member's training images
    other_digests = sorted(image_pixel_digests(other / "images" / "s03.png"))
    ckpt2 = save_checkpoint(tmp_path / "elsewhere.pt", model, {**config, "data_fingerprint": "0" * 64,
                                                                "pixel_digests": other_digests,
                                                                "threshold": 0.4})
    res = CliRunner().invoke(export, [str(ckpt2), "--out", str(tmp_path / "exp2"), "--format", "onnx",
                                      "--no-verify"])
    assert res.exit_code == 0, res.output
    s = evaluate_model(onnx, other, tmp_path / "ev4", backend="ort-cpu", progress=False,
                       ensemble_with=[tmp_path / "exp2" / "model.onnx"])
    assert s["training_images_in_data"] == 4 and s["same_data_as_training"] is False  # neither member's dataset
    # a model that records no digests (an earlier hemseg's): not known, not 0
    legacy = save_checkpoint(tmp_path / "legacy.pt", model, {k: v for k, v in config.items() if k != "pixel_digests"})
    res = CliRunner().invoke(export, [str(legacy), "--out", str(tmp_path / "exp3"), "--format", "onnx",
                                      "--no-verify"])
    s = evaluate_model(tmp_path / "exp3" / "model.onnx", other, tmp_path / "ev5", backend="ort-cpu", progress=False)
    assert s["training_images_in_data"] is None


def test_an_export_of_an_untuned_checkpoint_is_warned_of_where_it_is_used(checkpoint, tmp_path):
    """hemseg-export warned that an interrupted run's best.pt records no threshold tuning, but its ONNX did not
    carry it: hemseg eval and predict of the export used the untuned threshold without a word (a QA finding of
    stop 51). The export's metadata says it now; a finished run's export says nothing."""
    from hemseg.cli import main
    from hemseg.train.checkpoint import load_checkpoint, save_checkpoint
    from hemseg.train.evaluate import evaluate_model

    data = _png_dataset(tmp_path / "data", n=2)
    model, config = load_checkpoint(checkpoint)
    # "skipped": a finished run whose validation split had no lesion kept 0.5 untuned, and its export said it was
    # tuned (a QA finding of stop 52)
    tunings = {"interim": None, "skipped": {"skipped": "the validation split has no lesion pixel", "metric": None},
               "tuned": {"metric": "pooled"}}
    for name, warned in (("interim", True), ("skipped", True), ("tuned", False)):
        cfg = {k: v for k, v in config.items() if k != "threshold_tuning"}
        if tunings[name] is not None:
            cfg["threshold_tuning"] = tunings[name]
        ckpt = save_checkpoint(tmp_path / f"{name}.pt", model, cfg)
        res = CliRunner().invoke(export, [str(ckpt), "--out", str(tmp_path / name), "--format", "onnx",
                                          "--no-verify"])
        assert res.exit_code == 0, res.output
        about = json.loads((tmp_path / name / "export_report.json").read_text())["checkpoint"]
        assert about["threshold_tuned"] is (not warned) and bool(about["threshold_note"]) == warned  # (stop 52)
        onnx = tmp_path / name / "model.onnx"
        s = evaluate_model(onnx, data, tmp_path / f"ev_{name}", backend="ort-cpu", progress=False)
        assert any("exported from a checkpoint whose threshold was never tuned" in w for w in s["warnings"]) == warned
        res = CliRunner().invoke(main, ["predict", str(onnx), str(data / "images" / "s00.png"), "--out",
                                        str(tmp_path / f"p_{name}"), "--backend", "ort-cpu"])
        assert res.exit_code == 0, res.output
        assert ("exported from a checkpoint whose threshold was never tuned" in res.output) == warned, res.output
        # and in what predict keeps, not only its log (a QA finding of stop 52)
        said = json.loads((tmp_path / f"p_{name}" / "summary.json").read_text())["model"]
        assert said["threshold_tuned"] is (not warned) and bool(said["threshold_notes"]) == warned


def test_a_cut_short_export_report_is_refused_for_what_it_is(exported, checkpoint, tmp_path):
    """A truncated export_report.json beside models of this very checkpoint: refused as 'not a hemseg export's (no
    model of it records a checkpoint)', which every model there does."""
    import shutil

    out = tmp_path / "r"
    shutil.copytree(exported[0], out)
    text = (out / "export_report.json").read_text()
    (out / "export_report.json").write_text(text[:300])
    res = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "onnx", "--no-verify"])
    assert res.exit_code != 0
    assert "export_report.json is not valid JSON (cut short?)" in str(res.exception)
    assert (out / "export_report.json").read_text() == text[:300]


def test_a_kept_int8_model_keeps_the_record_of_its_calibration_and_verification_data(exported, checkpoint, tmp_path):
    """A rerun with --format onnx-fp16 kept the INT8 model of the same checkpoint, but the new report's
    calibration_data was null and its verification_data described this run's models only: which images the kept
    INT8 model was calibrated and verified on was lost."""
    import shutil

    out = tmp_path / "e"
    shutil.copytree(exported[0], out)
    first = json.loads((out / "export_report.json").read_text())
    assert first["calibration_data"]["n_images"] > 0
    res = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "onnx-fp16", "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "export_report.json").read_text())
    assert "onnx-int8" in report["kept_formats"] and report["calibration_data"] is None
    kept = report["formats"]["onnx-int8"]
    assert kept["calibration_data"] == first["calibration_data"]
    assert kept["verification_data"] == first["verification_data"]
    assert "calibration_data" not in report["formats"]["onnx-fp16"]  # built now: the top-level data are its own


def test_a_kept_model_changed_since_its_export_is_not_reported_passed(exported, checkpoint, tmp_path):
    """A re-export of one format copied the earlier entry of a kept FP16 model whose weights had been zeroed since:
    'passed', 'verified: true', with a SHA-256 that no longer matched the file."""
    import shutil

    import onnx
    from onnx import numpy_helper

    folder = tmp_path / "e"
    shutil.copytree(exported[0], folder)
    model = onnx.load(str(folder / "model_fp16.onnx"))
    init = model.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    onnx.save(model, str(folder / "model_fp16.onnx"))
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(folder), "--format", "onnx", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "export_report.json").read_text())
    fp16 = report["formats"]["onnx-fp16"]
    assert fp16["status"] == "unknown" and fp16["earlier_status"] == "passed" and report["verified"] is False
    assert "model_fp16.onnx changed since the export" in fp16["details"]["note"]
    assert report["formats"]["onnx-int8"]["status"] == "passed"  # untouched: its verdict stands


def test_the_console_table_lists_no_file_of_a_format_that_failed():
    """A failed openvino-int8 row read 'model_ov_int8.xml  29.8 MiB ... failed': a removed model, named and sized as
    if it were in the folder (the JSON said files [] and size null)."""
    from hemseg.export.report import format_table

    table = format_table([FormatResult("onnx", ["model.onnx"], "passed", size_bytes=3 << 20),
                          FormatResult("openvino-int8", ["model_ov_int8.xml", "model_ov_int8.bin"], "failed",
                                       size_bytes=31 << 20, export_seconds=22.4)])
    failed = [line for line in table.splitlines() if line.startswith("openvino-int8")][0]
    assert "model_ov_int8" not in failed and "MiB" not in failed and "22.4 s" in failed
    assert "model.onnx" in table and "3.0 MiB" in table


def test_a_damaged_model_its_report_lists_is_named_as_such(exported, checkpoint, tmp_path):
    """A kept model_fp16.onnx cut to a third was refused as 'not a hemseg export's (no model of it records a
    checkpoint)' although the folder's export report lists it with its SHA-256."""
    import shutil

    folder = tmp_path / "e"
    shutil.copytree(exported[0], folder)
    data = (folder / "model_fp16.onnx").read_bytes()
    (folder / "model_fp16.onnx").write_bytes(data[: len(data) // 3])
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(folder), "--format", "onnx", "-q"])
    assert result.exit_code != 0
    message = str(result.exception) + result.output
    assert "its export_report.json lists it" in message and "damaged or changed since that export" in message


def test_a_checkpoint_with_unusable_labels_is_one_model_error(checkpoint):
    """config labels 'x' or 255 (not a list) were tracebacks out of hemseg-export; [0] was written into the ONNX,
    a model whose lesion is the background."""
    from hemseg.errors import ModelError
    from hemseg.export.metadata import metadata_from_config
    from hemseg.train.checkpoint import file_sha256, load_checkpoint

    _, config = load_checkpoint(checkpoint)
    sha = file_sha256(checkpoint)
    for labels in (["x"], 255, [0], "255"):
        with pytest.raises(ModelError, match="checkpoint config labels .* are not usable"):
            metadata_from_config({**config, "labels": labels}, checkpoint, sha)
    assert metadata_from_config({**config, "labels": [255]}, checkpoint, sha).labels == (255,)
    assert metadata_from_config({**config, "labels": None}, checkpoint, sha).labels is None


def test_a_checkpoint_whose_threshold_was_never_tuned_is_warned_of(checkpoint, tmp_path, caplog):
    """An interrupted run's best.pt (no threshold_tuning: the run stopped before its end) was exported at 0.5 without
    a word; a finished run's is not warned of."""
    from hemseg.cli.export_cmd import _load_source
    from hemseg.train.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(checkpoint)
    for name, extra, warned in (("interim", {}, True), ("tuned", {"threshold_tuning": {"metric": "pooled"}}, False)):
        path = tmp_path / f"{name}.pt"
        save_checkpoint(path, model, {k: v for k, v in {**config, **extra}.items()
                                      if k != "threshold_tuning" or extra})
        caplog.clear()
        with caplog.at_level("WARNING", logger="hemseg"):
            _load_source(path)
        assert ("records no threshold tuning" in caplog.text) == warned
    # a finished run's last.pt: not 'a run that did not finish, --resume' (a QA finding of stop 51), but best.pt
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "best.pt", model, {**config, "threshold_tuning": {"metric": "pooled"}})
    save_checkpoint(run / "last.pt", model, {k: v for k, v in config.items() if k != "threshold_tuning"})
    caplog.clear()
    with caplog.at_level("WARNING", logger="hemseg"):
        _load_source(run / "last.pt")
    assert "is the run's last step, kept for --resume, not its selected model" in caplog.text
    assert f"use {run / 'best.pt'}" in caplog.text and "did not finish" not in caplog.text


def test_a_ctrl_c_while_an_export_is_published_leaves_it_whole(tmp_path, monkeypatch, sigint_raises):
    """A Ctrl-C between two of publish's renames left the new model.onnx beside the earlier export's report (a QA
    finding of stop 53): publishing holds SIGINT / SIGTERM back, the command stops right after, the folder whole."""
    from types import SimpleNamespace

    from interrupts import sigint_at_first_rename

    stage, out = tmp_path / "stage", tmp_path / "out"
    for folder, what in ((stage, b"new"), (out, b"old")):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(what)
        (folder / "export_report.json").write_bytes(what + b" report")
    calls = sigint_at_first_rename(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        chain.publish(stage, out, {"onnx": SimpleNamespace(status="passed")}, "0" * 64)
    assert len(calls) == 2
    assert (out / "model.onnx").read_bytes() == b"new" and (out / "export_report.json").read_bytes() == b"new report"
