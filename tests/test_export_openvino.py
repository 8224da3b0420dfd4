"""hemseg-export --format openvino-int8: NNCF post-training quantization for OpenVINO, its metadata, gate and runtime.

Uses the trained test U-Net of test_export.py (64 px, decisive on most pixels). Needs torch, onnx, NNCF and OpenVINO
(the ``[train]`` and ``[nncf]`` extras); the refusal without NNCF needs only torch.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402
from test_export import CALIB_COUNT, _config, _train_tiny_unet  # noqa: E402

from hemseg.cli._base import run_main  # noqa: E402
from hemseg.cli.export_cmd import export  # noqa: E402
from hemseg.export import chain  # noqa: E402

pytestmark = pytest.mark.torch
HAS_NNCF = importlib.util.find_spec("nncf") is not None and importlib.util.find_spec("openvino") is not None
needs_nncf = pytest.mark.skipif(not HAS_NNCF, reason="NNCF / OpenVINO not installed (pip install hemseg[nncf])")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from hemseg.train.checkpoint import save_checkpoint

    model, spec = _train_tiny_unet()
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, model, _config(spec))
    return path


@pytest.fixture(scope="module")
def ov_exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "out"
    result = CliRunner().invoke(export, [str(checkpoint), "--out", str(out), "--format", "openvino-int8",
                                         "--calib-count", str(CALIB_COUNT), "-q"])
    return out, result


def test_parse_formats_builds_the_fp32_model_first():
    assert chain.parse_formats("openvino-int8") == ["onnx", "openvino-int8"]
    assert chain.parse_formats("openvino-int8,onnx-int8") == ["onnx", "onnx-int8", "openvino-int8"]
    assert chain.FILES["openvino-int8"] == ("model_ov_int8.xml", "model_ov_int8.bin")


@needs_nncf
def test_openvino_int8_is_written_verified_and_recorded(ov_exported):
    out, result = ov_exported
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "export_report.json").read_text())
    fmt = report["formats"]["openvino-int8"]
    assert fmt["status"] == "passed" and fmt["files"] == ["model_ov_int8.xml", "model_ov_int8.bin"]
    metrics = fmt["parity"]["metrics"]
    assert metrics["dice_vs_fp32"] >= 0.98 and fmt["parity"]["reference"] == "model.onnx"
    assert {g["name"] for g in fmt["parity"]["gates"]} == {"dice_vs_fp32", "runtime_loads"}
    assert report["calibration_data"]["n_images"] == CALIB_COUNT
    assert "no --calib given" in fmt["details"]["calibration"]
    record = fmt["details"]["quantization"]
    assert record["overflow_fix"] in ("first_layer", "enable") and record["fake_quantize_ops"] > 3
    assert {"rel_l2_overflow_fix_first_layer", "rel_l2_overflow_fix_enable"} <= set(record)


@needs_nncf
def test_openvino_int8_file_metadata_and_float_nodes(ov_exported):
    from hemseg.export.openvino_int8 import ov_float_nodes, quantization_record_ir
    from hemseg.runtime.backends.openvino import ov_core, read_ir_props

    out, _ = ov_exported
    props = read_ir_props(out / "model_ov_int8.xml")
    assert props["hemseg.precision"] == "int8"
    fp32_props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    for key in ("hemseg.preprocess", "hemseg.threshold", "hemseg.checkpoint_sha256", "hemseg.image_size"):
        assert props[key] == fp32_props[key]
    producers = json.loads(props["hemseg.producer_versions"])
    assert "nncf" in producers and "openvino" in producers
    record = quantization_record_ir(out / "model_ov_int8.xml")
    assert record["tool"] == "nncf" and record["calibration_images"] == CALIB_COUNT
    # the same layers stay in float as in onnx-int8: the first convolution and the head (with its bias)
    fp32 = ov_core().read_model(str(out / "model.onnx"))
    kept = ov_float_nodes(fp32)
    assert record["float_nodes"] == kept
    ops = {o.get_friendly_name(): o.get_type_name() for o in fp32.get_ops()}
    convs = [o.get_friendly_name() for o in fp32.get_ordered_ops() if o.get_type_name() == "Convolution"]
    assert kept[0] == convs[0] and convs[-1] in kept and convs[1] not in kept
    assert [ops[n] for n in kept].count("Convolution") == 2


@needs_nncf
def test_openvino_int8_runs_in_the_runtime_backends(ov_exported):
    from hemseg.errors import ModelError
    from hemseg.runtime.backends import select
    from hemseg.runtime.backends.openvino import OpenVinoRunner
    from hemseg.runtime.backends.ort import OrtRunner
    from hemseg.runtime.segmenter import Segmenter

    out, _ = ov_exported
    path = out / "model_ov_int8.xml"
    runner = OpenVinoRunner.from_path(path, "auto", cache_dir=False)
    assert runner.precision == "f32" and "INT8 model" in runner.precision_reason
    assert runner.metadata.precision == "int8" and runner.metadata.image_size == 64
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    ov = runner.infer(x)
    fp32 = OrtRunner.from_path(out / "model.onnx", "ort-cpu").infer(x)
    assert np.linalg.norm(ov - fp32) / np.linalg.norm(fp32) < 0.1  # INT8, close to FP32
    # auto on an IR file: OpenVINO, whatever the CPU; ONNX Runtime refuses it clearly
    assert [c.backend for c in select.candidates(path)] == ["openvino"]
    with pytest.raises(ModelError, match="needs an ONNX model"):
        select.open_model(path, "ort-cpu")
    [pred] = Segmenter.from_path(path, backend="auto", workers=0)(np.zeros((64, 64), np.uint8))
    assert pred.mask.shape == (64, 64)
    # a missing .bin is a clear model error
    lonely = out.parent / "lonely.xml"
    lonely.write_bytes(path.read_bytes())
    with pytest.raises(ModelError, match="lonely.bin"):
        OpenVinoRunner.from_path(lonely, "auto", cache_dir=False)


def test_openvino_int8_without_nncf_fails_before_writing_anything(checkpoint, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    out = tmp_path / "out"
    try:
        run_main(export, "hemseg-export", [str(checkpoint), "--out", str(out), "--format", "openvino-int8"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 1 and "--format openvino-int8 needs nncf" in err and "pip install 'hemseg[nncf]'" in err
    assert not out.exists()


@needs_nncf
@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_nncf_progress_bars_go_to_stderr_and_away_under_quiet(level, capsys):
    """hemseg-export's table is its stdout; NNCF's rich progress bars printed there (and under -q too)."""
    from nncf.common.logging.track_progress import track

    from hemseg.export import openvino_int8

    logger = logging.getLogger(openvino_int8.__name__)
    saved = logger.level
    logger.setLevel(level)
    try:
        with openvino_int8._progress_to_stderr():
            assert sum(track(range(3), description="Statistics collection")) == 3
    finally:
        logger.setLevel(saved)
    out, err = capsys.readouterr()
    assert "Statistics collection" not in out
    assert ("Statistics collection" in err) == (level == logging.INFO)


def test_quiet_library_logs_holds_the_cuda_extension_note_at_error():
    """NNCF's torch backend imports torch.utils.cpp_extension, whose 'No CUDA runtime is found' warning reached
    hemseg-export -q on every CPU machine."""
    name = "torch.utils.cpp_extension"
    saved = logging.getLogger(name).level
    with chain.quiet_library_logs():
        assert not logging.getLogger(name).isEnabledFor(logging.WARNING)
        assert logging.getLogger(name).isEnabledFor(logging.ERROR)
        assert not logging.getLogger("torch").isEnabledFor(logging.INFO)
    assert logging.getLogger(name).level == saved


def test_ov_first_convolution_behind_a_pad_stays_float(tmp_path):
    """At a size no multiple of 32 the model pads first: the first Convolution was looked for behind Converts only,
    so it was quantized (22 FakeQuantize ops against 21)."""
    ov = pytest.importorskip("openvino")
    from onnx_graphs import padded_conv_chain

    from hemseg.export.openvino_int8 import ov_float_nodes

    onnx.save(padded_conv_chain(3), str(tmp_path / "pad.onnx"))
    kept = ov_float_nodes(ov.convert_model(str(tmp_path / "pad.onnx")))
    assert "stem" in kept and "body1" not in kept
