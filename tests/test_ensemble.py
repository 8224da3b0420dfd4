"""Model ensembles (:mod:`hemseg.runtime.backends.ensemble`); torch-free."""

from __future__ import annotations

import numpy as np
import pytest

from hemseg.errors import UsageError
from hemseg.runtime.backends.base import InferTimings, Runner
from hemseg.runtime.backends.ensemble import EnsembleRunner, check_members, ensemble_threshold
from hemseg.runtime.preprocess import PreprocessSpec


class Shifted(Runner):
    """logits = channel 0 of the input + a constant; records its inputs."""

    def __init__(self, shift: float, on_gpu: bool = False) -> None:
        super().__init__()
        self.shift, self.on_gpu, self.name = shift, on_gpu, f"shift{shift:g}"
        self.seen: list[np.ndarray] = []
        self.closed = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append(batch)
        self.last_timings = InferTimings(copy_in=1.0, infer=10.0 * abs(self.shift), copy_out=0.25)
        return batch[:, :1] + self.shift

    def close(self) -> None:
        self.closed = True


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def test_ensemble_is_the_logit_of_the_mean_probability_of_its_members():
    x = np.random.default_rng(0).normal(0, 2, (2, 3, 6, 6)).astype(np.float32)
    members = [Shifted(-2.0), Shifted(1.0), Shifted(4.0)]
    ens = EnsembleRunner(members)
    out = ens.infer(x)
    p = np.mean([sigmoid(x[:, :1] + s) for s in (-2.0, 1.0, 4.0)], axis=0)
    np.testing.assert_allclose(out, np.log(p / (1 - p)), rtol=1e-4, atol=1e-4)
    assert all(len(m.seen) == 1 and m.seen[0] is x for m in members)  # one preprocessing, shared
    t = ens.last_timings
    assert (t.copy_in, t.infer, t.copy_out) == (3.0, 70.0, 0.75)
    assert ens.name == "ensemble(shift-2, shift1, shift4)"
    ens.close()
    assert all(m.closed for m in members)


def test_ensemble_refuses_one_member_and_mixed_devices():
    with pytest.raises(ValueError):
        EnsembleRunner([Shifted(0.0)])
    with pytest.raises(UsageError, match="same device"):
        EnsembleRunner([Shifted(0.0), Shifted(1.0, on_gpu=True)])


def test_members_must_share_the_preprocessing():
    spec = PreprocessSpec(size=64)
    check_members(["a.onnx", "b.onnx"], [spec, PreprocessSpec(size=64)])
    with pytest.raises(UsageError, match=r"^b\.onnx: .*differs \(size\)"):
        check_members(["a.onnx", "b.onnx"], [spec, PreprocessSpec(size=96)])
    with pytest.raises(UsageError, match=r"^c\.onnx: "):
        check_members(["a.onnx", "b.onnx", "c.onnx"], [spec, spec, spec.without(["nlm"])])
    assert ensemble_threshold([0.3, 0.5, 0.7]) == pytest.approx(0.5)


# -- hemseg predict --ensemble-with (needs the onnx package to write the second model) ----------------------------
def _variant(tmp_path, name: str, bias: float, threshold: float, precision: str | None = None, **preprocess):
    """tiny_64.onnx (logits = 10 * x[:, 0]) with another bias, threshold and preprocessing settings."""
    import json
    from pathlib import Path

    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(Path(__file__).resolve().parent / "data" / "tiny_64.onnx"))
    for init in model.graph.initializer:
        if init.name == "b":
            init.CopyFrom(numpy_helper.from_array(np.full(1, bias, np.float32), "b"))
    for prop in model.metadata_props:
        if prop.key == "hemseg.threshold":
            prop.value = repr(threshold)
        if prop.key == "hemseg.precision" and precision is not None:
            prop.value = precision
        if prop.key == "hemseg.preprocess":
            prop.value = json.dumps({**json.loads(prop.value), **preprocess})
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_predict_ensemble_with_averages_two_exported_models(tmp_path):
    import json
    from pathlib import Path

    import cv2
    from click.testing import CliRunner

    from hemseg.cli import main
    from hemseg.runtime.preprocess import PreprocessSpec, preprocess

    tiny = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"
    shifted = _variant(tmp_path, "shifted.onnx", bias=3.0, threshold=0.6)
    img = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (64, 1)).astype(np.uint8)  # a ramp: every logit once
    cv2.imwrite(str(tmp_path / "ramp.png"), img)
    res = CliRunner().invoke(main, ["predict", str(tiny), str(tmp_path / "ramp.png"), "--out", str(tmp_path / "o"),
                                    "--ensemble-with", str(shifted), "--save-prob", "--no-postprocess"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["model"]["threshold"] == pytest.approx(0.5) and s["model"]["ensemble_with"] == [str(shifted)]
    x0 = preprocess(img, PreprocessSpec(size=64))[0].astype(np.float64)
    expected = (1 / (1 + np.exp(-10 * x0)) + 1 / (1 + np.exp(-(10 * x0 + 3)))) / 2
    prob = np.load(tmp_path / "o" / "ramp_prob.npy").astype(np.float64)
    np.testing.assert_allclose(prob, expected, atol=2e-3)  # float16 on disk
    mask = cv2.imread(str(tmp_path / "o" / "ramp_mask.png"), cv2.IMREAD_UNCHANGED) > 0
    np.testing.assert_array_equal(mask, expected > 0.5)
    assert (expected > 0.5).sum() != (1 / (1 + np.exp(-10 * x0)) > 0.4).sum()  # not the first model alone
    assert s["model"]["precision"] == "fp32"
    int8 = _variant(tmp_path, "int8.onnx", bias=0.0, threshold=0.5, precision="int8")
    res = CliRunner().invoke(main, ["predict", str(tiny), str(tmp_path / "ramp.png"), "--out", str(tmp_path / "o8"),
                                    "--ensemble-with", str(int8)])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "o8" / "summary.json").read_text())
    assert s["model"]["precision"] == "fp32+int8"  # it said the first member's, fp32
    import shutil

    shutil.copyfile(tiny, tmp_path / "copy.onnx")  # one model twice: refused, not averaged as two
    res = CliRunner().invoke(main, ["predict", str(tiny), str(tmp_path / "ramp.png"), "--out", str(tmp_path / "o2"),
                                    "--ensemble-with", str(tmp_path / "copy.onnx")])
    assert res.exit_code != 0 and "copy.onnx: the same model as" in str(res.exception), res.output
    assert not (tmp_path / "o2" / "ramp_mask.png").exists()


def test_predict_ensemble_member_with_other_preprocessing_is_a_one_line_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    other = _variant(tmp_path, "other_clahe.onnx", bias=0.0, threshold=0.4, clahe_clip=3.0)
    img = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(img), np.full((64, 64), 200, np.uint8))
    proc = subprocess.run([sys.executable, "-c", "from hemseg.cli import entry; entry()", "-q", "predict",
                           str(root / "tests" / "data" / "tiny_64.onnx"), str(img), "--out", str(tmp_path / "o"),
                           "--ensemble-with", str(other)], capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "other_clahe.onnx" in lines[0] and "clahe_clip" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o" / "a_mask.png").exists()


def test_dicom_seg_names_every_member_of_an_ensemble(tmp_path):
    import hashlib
    from pathlib import Path
    from types import SimpleNamespace

    from hemseg.runtime.io.dicom_seg import AlgorithmInfo
    from hemseg.runtime.model_meta import ModelMetadata

    a, b = tmp_path / "fold0.onnx", tmp_path / "fold1.onnx"
    a.write_bytes(b"model a")
    b.write_bytes(b"model b")
    meta = ModelMetadata(preprocess=PreprocessSpec(size=64), threshold=0.45, model="fcn_resnet50")
    single = AlgorithmInfo.for_model(SimpleNamespace(path=Path(a), metadata=meta))
    assert single.model_name == "fold0.onnx" and single.model_sha256 == hashlib.sha256(b"model a").hexdigest()
    both = AlgorithmInfo.for_model(SimpleNamespace(path=Path(a), metadata=meta, members=(Path(b),)))
    digests = "+".join(hashlib.sha256(x).hexdigest() for x in (b"model a", b"model b"))
    assert both.model_name == "fold0.onnx+fold1.onnx"
    assert both.model_sha256 == hashlib.sha256(digests.encode()).hexdigest() and both.threshold == 0.45


def test_members_exported_from_one_checkpoint_are_warned_of(caplog):
    """model.onnx with its own model_int8.onnx was recorded as a two-model ensemble without a word (QA, stop 56)."""
    from hemseg.runtime.backends.ensemble import warn_same_checkpoint

    with caplog.at_level("WARNING", logger="hemseg.runtime.backends.ensemble"):
        warn_same_checkpoint(["a.onnx", "b.onnx"], ["1" * 64, "2" * 64])
        warn_same_checkpoint(["a.onnx", "b.onnx"], ["", ""])  # exports that record none: nothing to say
        assert not caplog.records
        warn_same_checkpoint(["model.onnx", "other.onnx", "model_int8.onnx"], ["1" * 64, "2" * 64, "1" * 64])
    assert "model.onnx and model_int8.onnx are exports of one checkpoint (111111111111): an ensemble of one model in 2 forms" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hemseg.runtime.backends.ensemble"):
        warn_same_checkpoint(["m.onnx", "m_fp16.onnx", "m_int8.onnx"], ["1" * 64] * 3)
    assert "m.onnx and m_fp16.onnx and m_int8.onnx are exports of one checkpoint" in caplog.text
