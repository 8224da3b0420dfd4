"""The float16 training step with a gradient scaler (``--precision fp16`` / ``auto`` on GPUs without bf16).

hemseg creates the scaler on CUDA only, and no GPU ran float16 training here; this exercises the step's scaler
branch on the CPU (``torch.amp.GradScaler("cpu")``, float16 autocast), so that the calls it makes are the right
ones: an ordinary step updates the weights, a step whose scaled gradients overflow is skipped (weights unchanged,
scale backed off) rather than written into the weights as inf/NaN.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch


def _setup(init_scale: float):
    from torch import nn

    from hemseg.train.device import Precision

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(2, 3, 16, 16)
    y = (torch.rand(2, 1, 16, 16) > 0.7).float()
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return model, optimizer, x, y, scaler, Precision("fp16", torch.float16, False)


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_a_scaled_fp16_step_updates_the_weights():
    from torch import nn

    from hemseg.train.loop import train_step

    model, optimizer, x, y, scaler, precision = _setup(2.0 ** 8)
    before = _weights(model)
    loss, logits = train_step(model, x, y, nn.BCEWithLogitsLoss(), optimizer, torch.device("cpu"), precision, scaler)
    assert logits.shape == y.shape and loss > 0
    after = _weights(model)
    assert all(torch.isfinite(w).all() for w in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert scaler.get_scale() == 2.0 ** 8  # no overflow: the scale is kept


def test_an_overflowing_fp16_step_is_skipped_not_applied():
    from torch import nn

    from hemseg.train.loop import train_step

    model, optimizer, x, y, scaler, precision = _setup(2.0 ** 100)  # float16 gradients overflow
    before = _weights(model)
    train_step(model, x, y, nn.BCEWithLogitsLoss(), optimizer, torch.device("cpu"), precision, scaler)
    after = _weights(model)
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # skipped, not inf/NaN written in
    assert scaler.get_scale() < 2.0 ** 100  # backed off for the next step
