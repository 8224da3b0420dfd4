"""Flip test-time augmentation (:mod:`hemseg.runtime.backends.tta`, ``hemseg predict --tta``); torch-free."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hemseg.cli import main
from hemseg.runtime.backends.base import InferTimings, Runner
from hemseg.runtime.backends.tta import FlipTTARunner, mean_probability_logits

TINY = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"  # logits = 10 * x[:, 0], threshold 0.4


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


class Lopsided(Runner):
    """Not mirror-symmetric: logits = channel 0 of the input plus a ramp that rises to the right; records calls."""

    name = "lopsided"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[np.ndarray] = []
        self.closed = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.copy())
        ramp = np.linspace(-3.0, 3.0, batch.shape[-1], dtype=np.float32)
        self.last_timings = InferTimings(copy_in=1.0, infer=2.0 + len(self.calls), copy_out=0.5)
        return batch[:, :1] + ramp

    def close(self) -> None:
        self.closed = True


def test_mean_probability_logits_is_the_logit_of_the_mean_probability():
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(0, 4, (2, 1, 5, 7)).astype(np.float32) for _ in range(3))
    np.testing.assert_allclose(mean_probability_logits([a]), a, atol=1e-5)  # one view: unchanged
    p = (sigmoid(a) + sigmoid(b) + sigmoid(c)) / 3
    np.testing.assert_allclose(mean_probability_logits([a, b, c]), np.log(p / (1 - p)), rtol=1e-4, atol=1e-4)
    # saturated logits stay finite and exact: p = (1 + 0) / 2 -> logit 0; p = (1 + 1) / 2 -> a large positive logit
    out = mean_probability_logits([np.array([200.0, 200.0, -200.0], np.float32),
                                   np.array([-200.0, 150.0, -300.0], np.float32)])
    assert np.all(np.isfinite(out)) and out.dtype == np.float32
    assert out[0] == pytest.approx(0.0, abs=1e-4) and out[1] > 100 and out[2] < -150
    with pytest.raises(ValueError):
        mean_probability_logits([])


def test_flip_tta_averages_the_plain_and_the_mirrored_view():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    inner = Lopsided()
    tta = FlipTTARunner(inner)
    out = tta.infer(x)
    assert len(inner.calls) == 2
    np.testing.assert_array_equal(inner.calls[0], x)
    np.testing.assert_array_equal(inner.calls[1], x[..., ::-1])  # the second view is the mirror
    ramp = np.linspace(-3.0, 3.0, 8)
    # the mirrored view's logits, mirrored back: channel 0 plus the ramp reversed
    p = (sigmoid(x[:, :1] + ramp) + sigmoid(x[:, :1] + ramp[::-1])) / 2
    np.testing.assert_allclose(out, np.log(p / (1 - p)), rtol=1e-4, atol=1e-4)
    assert out.shape == (2, 1, 8, 8) and out.dtype == np.float32 and out.flags.c_contiguous
    t = tta.last_timings
    assert (t.copy_in, t.infer, t.copy_out) == (2.0, 3.0 + 4.0, 1.0)  # both inferences counted
    assert tta.name == "lopsided+flip-tta" and tta.on_gpu is False
    tta.close()
    assert inner.closed
    with pytest.raises(ValueError):
        FlipTTARunner(tta)


def test_flip_tta_of_a_mirror_symmetric_model_changes_nothing():
    """A pixel-wise model (tiny_64.onnx) answers the mirror with the mirrored answer: TTA gives the plain logits."""
    from hemseg.runtime.backends.ort import OrtRunner

    x = np.random.default_rng(2).normal(0, 1, (3, 3, 64, 64)).astype(np.float32)
    with OrtRunner.from_path(TINY) as plain:
        ref = plain.infer(x)
    with FlipTTARunner(OrtRunner.from_path(TINY)) as tta:
        np.testing.assert_allclose(tta.infer(x), ref, atol=1e-4)


def test_predict_tta_keeps_an_off_centre_lesion_where_it_is(tmp_path):
    """End to end: with --tta the mask of a lesion on the left stays on the left (a view not mirrored back would
    add a ghost on the right: mean probability ~0.5 > the model's threshold 0.4), and summary.json says so."""
    img = np.full((64, 96), 30, np.uint8)
    cv2.circle(img, (24, 32), 10, 220, -1)
    path = tmp_path / "left.png"
    cv2.imwrite(str(path), img)
    for name, extra in (("plain", []), ("tta", ["--tta"])):
        res = CliRunner().invoke(main, ["predict", str(TINY), str(path), "--out", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
    plain = cv2.imread(str(tmp_path / "plain" / "left_mask.png"), cv2.IMREAD_UNCHANGED)
    tta = cv2.imread(str(tmp_path / "tta" / "left_mask.png"), cv2.IMREAD_UNCHANGED)
    assert plain[:, 48:].max() == 0 and plain[32, 24] == 255
    np.testing.assert_array_equal(tta, plain)
    s = json.loads((tmp_path / "tta" / "summary.json").read_text())
    assert s["options"]["tta"] == "flip"
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["options"]["tta"] is None


class _LeftBrightNan(Runner):
    """NaN logits for a slice whose left half is brighter than its right half, else its first channel."""

    name, path = "left-nan", Path("left-nan.onnx")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        w = batch.shape[-1]
        out = batch[:, :1].copy()
        out[batch[:, 0, :, : w // 2].mean(axis=(1, 2)) > batch[:, 0, :, w // 2:].mean(axis=(1, 2))] = np.nan
        return out


def test_logits_not_finite_on_the_mirrored_view_only_say_so():
    """An input whose plain view segments and whose mirror overflows failed with --tta only, its message the same as
    a plain failure's, so without --tta the user could not reproduce it (QA, stop 54)."""
    from hemseg.errors import NonFiniteLogits

    right_bright = np.zeros((1, 3, 8, 8), np.float32)
    right_bright[..., 4:] = 1.0
    with pytest.raises(NonFiniteLogits, match=r"left-nan.onnx: left-nan on the left-right mirrored image \(flip TTA\) "
                                              r"produced 64 non-finite logits \(64 NaN, 0 infinite\)"):
        FlipTTARunner(_LeftBrightNan()).infer(right_bright)
    with pytest.raises(NonFiniteLogits, match=r"left-nan.onnx: left-nan produced 64"):  # the plain view: as without TTA
        FlipTTARunner(_LeftBrightNan()).infer(right_bright[..., ::-1].copy())
