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
