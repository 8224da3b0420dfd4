"""--aux-loss: FCN-ResNet50's training-only auxiliary head on layer3 (hemseg.train.deep_supervision)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from hemseg.cli import main  # noqa: E402
from hemseg.errors import UsageError  # noqa: E402
from hemseg.train.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from hemseg.train.deep_supervision import DeepSupervised, training_loss  # noqa: E402
from hemseg.train.loop import SegmentationLoss  # noqa: E402
from hemseg.train.models import build_model  # noqa: E402
from hemseg.train.trainer import run_training  # noqa: E402

pytestmark = pytest.mark.torch

FCN = dict(model="fcn_resnet50", image_size=64, batch_size=4, device="cpu", progress=False, weights="none",
           no_preprocess=True, val_every=2)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from hemseg.phantom import generate

    root = tmp_path_factory.mktemp("phantom") / "data"
    generate(root, per_category=2, seed=0, size_range=(64, 80), progress=False)
    return root


def test_the_layer3_path_computes_the_models_own_logits():
    torch.manual_seed(0)
    model = build_model("fcn_resnet50").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, layer3 = model.forward_with_layer3(x)
        assert torch.equal(logits, model(x))
    assert layer3.shape == (2, 1024, 8, 8)


def test_training_returns_both_heads_and_the_loss_adds_the_weighted_aux_term():
    torch.manual_seed(0)
    wrapped = DeepSupervised(build_model("fcn_resnet50"), weight=0.4)
    x, y = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.9).float()
    criterion = SegmentationLoss(dice="batch")
    wrapped.train()
    logits, aux = wrapped(x)
    assert logits.shape == aux.shape == (2, 1, 64, 64)
    loss, main = training_loss(wrapped, (logits, aux), y, criterion)
    assert main is logits
    assert loss.item() == pytest.approx((criterion(logits, y) + 0.4 * criterion(aux, y)).item(), rel=1e-6)
    loss.backward()
    assert wrapped.head[0].weight.grad.abs().sum() > 0  # the head is trained by the aux term
    wrapped.eval()
    with torch.no_grad():
        assert torch.equal(wrapped(x), wrapped.model(x))  # validation sees the plain model
    plain = build_model("fcn_resnet50").train()
    out = plain(x)
    assert training_loss(plain, out, y, criterion)[0].item() == pytest.approx(criterion(out, y).item(), rel=1e-6)


def test_only_fcn_resnet50_has_a_layer3_head():
    with pytest.raises(TypeError, match="FCN-ResNet50"):
        DeepSupervised(build_model("unet", base=4, depth=2), 0.5)


def test_aux_run_trains_the_head_keeps_it_out_of_best_pt_and_resumes_exactly(phantom, tmp_path, monkeypatch):
    import hemseg.train.fit as fit_mod

    initial_heads = []

    class Recording(DeepSupervised):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            initial_heads.append(self.head[0].weight.detach().clone())

    monkeypatch.setattr(fit_mod, "DeepSupervised", Recording)
    straight = run_training(phantom, tmp_path / "straight", steps=4, aux_loss=0.5, **FCN)
    assert straight["aux_loss"] == 0.5
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["recipe"]["aux_weight"] == 0.5
    # best.pt is the deployable model alone: it loads into a plain FCN-ResNet50 (strict state_dict)
    model, _ = load_checkpoint(tmp_path / "straight" / "best.pt")
    assert not any(k.startswith("head.") or k.startswith("model.") for k in model.state_dict())
    last = read_checkpoint(tmp_path / "straight" / "last.pt")
    assert not torch.equal(last["aux_state"]["0.weight"], initial_heads[0])  # the optimizer moved the head

    # the auxiliary loss changes what the backbone learns
    plain = run_training(phantom, tmp_path / "plain", steps=4, **FCN)
    assert plain["aux_loss"] == 0.0
    a = read_checkpoint(tmp_path / "plain" / "last.pt")["state_dict"]
    b = last["state_dict"]
    assert not all(torch.equal(a[k], b[k]) for k in a)

    # interrupted after the validation at step 2 and resumed: the weights of the straight run
    real, calls = fit_mod.train_step, []

    def crash_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_mod, "train_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_training(phantom, tmp_path / "resumed", steps=4, aux_loss=0.5, **FCN)
    monkeypatch.setattr(fit_mod, "train_step", real)
    run_training(phantom, tmp_path / "resumed", steps=4, aux_loss=0.5, resume=True, **FCN)
    c = read_checkpoint(tmp_path / "resumed" / "last.pt")
    assert all(torch.equal(b[k], c["state_dict"][k]) for k in b)
    assert all(torch.equal(last["aux_state"][k], c["aux_state"][k]) for k in last["aux_state"])


def test_aux_loss_refusals(phantom, tmp_path):
    with pytest.raises(UsageError, match="aux-loss.*'unet' has none"):
        run_training(phantom, tmp_path / "u", model="unet", aux_loss=0.5, steps=1, device="cpu", progress=False)
    with pytest.raises(UsageError, match="aux-loss must be >= 0"):
        run_training(phantom, tmp_path / "n", aux_loss=-1.0, steps=1, device="cpu", progress=False)
    assert not (tmp_path / "u").exists() and not (tmp_path / "n").exists()


def test_the_cli_option_reaches_the_trainer(phantom, tmp_path):
    result = CliRunner().invoke(main, ["train", str(phantom), "--out", str(tmp_path / "u"), "--model", "unet",
                                       "--aux-loss", "0.5", "--steps", "1", "--device", "cpu", "--no-progress"])
    assert isinstance(result.exception, UsageError) and "--aux-loss" in str(result.exception)
    assert not (tmp_path / "u").exists()
