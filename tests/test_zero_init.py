"""--zero-init-residual: FCN-ResNet50's residual blocks start as the identity when it trains from random weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from hemseg.cli import main  # noqa: E402
from hemseg.errors import UsageError  # noqa: E402
from hemseg.train.models import build_model, zero_init_residual  # noqa: E402
from hemseg.train.trainer import run_training  # noqa: E402

pytestmark = pytest.mark.torch

FCN = dict(model="fcn_resnet50", image_size=64, batch_size=2, device="cpu", progress=False, no_preprocess=True,
           val_every=1, steps=1)


@pytest.fixture
def phantom(small_phantom) -> Path:
    return small_phantom


def test_every_bottleneck_of_fcn_resnet50_starts_as_the_identity():
    from torchvision.models.resnet import Bottleneck

    torch.manual_seed(0)
    model = build_model("fcn_resnet50").eval()
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert all(b.bn3.weight.abs().sum() > 0 for b in blocks)  # PyTorch's default scale is 1
    assert zero_init_residual(model) == len(blocks) == 16
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    # a block without a downsampling branch now passes its input through: relu(x + 0) == x for x >= 0
    plain = next(b for b in blocks if b.downsample is None)
    x = torch.rand(1, plain.conv1.in_channels, 8, 8)
    assert torch.equal(plain(x), x)
    assert zero_init_residual(build_model("unet", base=4, depth=2)) == 0


def _spy(monkeypatch) -> list[int]:
    import hemseg.train.fit as fit_mod

    calls = []

    def spy(model):
        calls.append(zero_init_residual(model))
        return calls[-1]

    monkeypatch.setattr(fit_mod, "zero_init_residual", spy)
    return calls


def test_the_option_zeroes_random_weights_only_and_is_recorded(phantom, tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    run_training(phantom, tmp_path / "zero", weights="none", zero_init_residual=True, **FCN)
    assert calls == [16]
    config = json.loads((tmp_path / "zero" / "config.json").read_text())
    assert config["recipe"]["zero_init_residual"] is True

    run_training(phantom, tmp_path / "off", weights="none", zero_init_residual=False, **FCN)
    assert calls == [16]
    assert json.loads((tmp_path / "off" / "config.json").read_text())["recipe"]["zero_init_residual"] is False

    # weights from a file keep their scales
    run_training(phantom, tmp_path / "file", weights=str(tmp_path / "zero" / "best.pt"), zero_init_residual=True,
                 **FCN)
    assert calls == [16]


def test_refused_for_models_without_residual_blocks(phantom, tmp_path):
    with pytest.raises(UsageError, match="zero-init-residual.*'unet' has none"):
        run_training(phantom, tmp_path / "u", model="unet", zero_init_residual=True, steps=1, device="cpu",
                     progress=False)
    assert not (tmp_path / "u").exists()
    result = CliRunner().invoke(main, ["train", str(phantom), "--out", str(tmp_path / "c"), "--model", "unet",
                                       "--zero-init-residual", "--steps", "1", "--device", "cpu", "--no-progress"])
    assert isinstance(result.exception, UsageError) and "--zero-init-residual" in str(result.exception)
    assert not (tmp_path / "c").exists()
