"""Models (output shapes), the checkpoint format (round trip, refusals) and initial weights (none/auto/PATH)."""

from __future__ import annotations

import pickle

import pytest

torch = pytest.importorskip("torch")

from hemseg.errors import ModelError, UsageError  # noqa: E402
from hemseg.runtime.preprocess import PreprocessSpec  # noqa: E402
from hemseg.train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint  # noqa: E402
from hemseg.train.models import build_model, count_parameters  # noqa: E402
from hemseg.train.weights import initialize  # noqa: E402

pytestmark = pytest.mark.torch


def _config(name: str, kwargs: dict) -> dict:
    return {"model": name, "model_kwargs": kwargs, "preprocess": PreprocessSpec(size=64).to_dict(), "image_size": 64,
            "threshold": 0.4, "labels": None, "init": "random", "epoch": 1, "metrics": {}}


@pytest.mark.parametrize("name,kwargs,size", [
    ("fcn_resnet50", {}, 64), ("unet", {"base": 4}, 64), ("attention_unet", {"base": 4}, 64),
    ("unet", {"base": 4, "depth": 3}, 50),  # not a multiple of 2**depth: padded inside, cropped back
])
def test_model_output_shape(name, kwargs, size):
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, size, size))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 1, size, size) and y.dtype == torch.float32


def test_fcn_has_one_channel_head_and_no_aux():
    model = build_model("fcn_resnet50")
    assert model.net.classifier[4].out_channels == 1
    assert model.net.aux_classifier is None
    assert not any(k.startswith("net.aux_classifier") for k in model.state_dict())
    assert 30e6 < count_parameters(model) < 36e6


def test_build_model_rejects_unknown():
    with pytest.raises(ValueError):
        build_model("segformer")
    with pytest.raises(ValueError):
        build_model("fcn_resnet50", base=8)


@pytest.mark.parametrize("name,kwargs", [("unet", {"base": 4}), ("attention_unet", {"base": 4})])
def test_checkpoint_round_trip(tmp_path, name, kwargs):
    torch.manual_seed(1)
    model = build_model(name, **kwargs).eval()
    path = save_checkpoint(tmp_path / "best.pt", model, _config(name, kwargs))
    raw = torch.load(path, weights_only=True, map_location="cpu")  # the contract: plain weights_only loading
    assert raw["format"] == "hemseg-checkpoint" and raw["format_version"] == 1
    loaded, config = load_checkpoint(path)
    assert config["threshold"] == 0.4 and config["model_kwargs"] == kwargs
    assert not loaded.training
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file behind


def test_checkpoint_refuses_plain_state_dict(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(build_model("unet", base=2).state_dict(), path)
    with pytest.raises(ModelError, match="not a hemseg checkpoint"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_refuses_unsafe_pickle(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "hemseg-checkpoint", "payload": _Evil()}, path)
    with pytest.raises(ModelError, match="weights-only"):
        read_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out
    other = tmp_path / "pickle.pt"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelError):
        read_checkpoint(other)


def test_checkpoint_refuses_missing_and_empty(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        read_checkpoint(tmp_path / "empty.pt")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ModelError, match="is a folder, not a checkpoint file") as exc:
        read_checkpoint(run)
    assert "its best.pt" not in str(exc.value)
    (run / "best.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match=f"its best.pt is {run / 'best.pt'}"):
        read_checkpoint(run)  # a hemseg train --out folder: say which file to give


def test_checkpoint_refuses_wrong_architecture(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", build_model("unet", base=4), _config("unet", {"base": 8}))
    with pytest.raises(ModelError, match="do not fit"):
        load_checkpoint(path)


def test_a_checkpoint_whose_preprocessing_makes_other_channels_than_the_model_takes_is_refused(tmp_path):
    """An edited config (preprocess.channels 1 for a 3-channel model) failed inside torch.onnx.export with no reason."""
    config = _config("unet", {"base": 4})
    config["preprocess"] = {**config["preprocess"], "channels": 1}
    path = save_checkpoint(tmp_path / "c.pt", build_model("unet", base=4), config)
    with pytest.raises(ModelError, match="makes 1-channel images .* the model's weights take 3 channels"):
        load_checkpoint(path)
    for bad in (4, "3", 3.0):  # 3.0 passed, then failed deep in preprocessing with a traceback; the others said
        config["preprocess"] = {**config["preprocess"], "channels": bad}  # nothing of the file
        path = save_checkpoint(tmp_path / "c.pt", build_model("unet", base=4), config)
        with pytest.raises(ModelError, match="preprocessing settings .* not usable") as exc:
            load_checkpoint(path)
        assert exc.value.path == path


# -- initial weights -----------------------------------------------------------------------------------------------
def test_weights_none_and_auto_without_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    model = build_model("fcn_resnet50")
    assert initialize(model, "fcn_resnet50", "none") == "random"
    assert initialize(model, "fcn_resnet50", "auto") == "random"
    assert initialize(build_model("unet", base=2), "unet", "auto", {"base": 2}) == "random"


def test_weights_auto_uses_cached_imagenet_backbone(tmp_path, monkeypatch):
    """A ResNet50 file under the hub cache name is used (backbone only, fc ignored), without any download."""
    from torchvision.models import resnet50

    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    torch.manual_seed(3)
    backbone = resnet50(weights=None).state_dict()
    torch.save(backbone, hub / "checkpoints" / "resnet50-0676ba61.pth")
    model = build_model("fcn_resnet50")
    init = initialize(model, "fcn_resnet50", "auto")
    assert init == "imagenet-cache:resnet50-0676ba61.pth"
    assert torch.equal(model.state_dict()["net.backbone.layer4.2.conv3.weight"], backbone["layer4.2.conv3.weight"])


def test_weights_path_hemseg_checkpoint_and_state_dict(tmp_path):
    torch.manual_seed(5)
    src = build_model("unet", base=4)
    ckpt = save_checkpoint(tmp_path / "src.pt", src, _config("unet", {"base": 4}))
    dst = build_model("unet", base=4)
    assert initialize(dst, "unet", str(ckpt), {"base": 4}) == f"file:{ckpt.resolve()}"
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    # a plain state_dict of the same model, with a different head shape: loaded except the head
    sd = dict(src.state_dict())
    sd["head.weight"] = torch.zeros(3, 4, 1, 1)
    sd["head.bias"] = torch.zeros(3)
    torch.save(sd, tmp_path / "sd.pt")
    dst2 = build_model("unet", base=4)
    head_before = dst2.head.weight.clone()
    initialize(dst2, "unet", str(tmp_path / "sd.pt"), {"base": 4})
    assert torch.equal(dst2.down[0][0].weight, src.down[0][0].weight)
    assert torch.equal(dst2.head.weight, head_before)


def test_weights_path_refusals(tmp_path):
    with pytest.raises(UsageError, match="none, auto or an existing file"):
        initialize(build_model("unet", base=2), "unet", str(tmp_path / "missing.pt"), {"base": 2})
    # a checkpoint of another architecture
    ckpt = save_checkpoint(tmp_path / "u.pt", build_model("unet", base=2), _config("unet", {"base": 2}))
    with pytest.raises(ModelError, match="not the requested"):
        initialize(build_model("attention_unet", base=2), "attention_unet", str(ckpt), {"base": 2})
    # a state_dict whose body tensors have the wrong shape
    torch.save(build_model("unet", base=2).state_dict(), tmp_path / "small.pt")
    with pytest.raises(ModelError, match="wrong shape"):
        initialize(build_model("unet", base=4), "unet", str(tmp_path / "small.pt"), {"base": 4})
    # a state_dict of something else entirely
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "foo.pt")
    with pytest.raises(ModelError, match="fit nothing"):
        initialize(build_model("unet", base=2), "unet", str(tmp_path / "foo.pt"), {"base": 2})


def test_checkpoint_that_is_text_or_cut_short_says_so(tmp_path):
    """A text file (an HTML error page saved as .pt) and an interrupted copy are named as such, not as torch's
    internal error ("(105)", "[Errno 22] Invalid argument")."""
    (tmp_path / "page.pt").write_text("<html>404 Not Found</html>\n")
    with pytest.raises(ModelError, match="not a PyTorch file: the file looks like text"):
        read_checkpoint(tmp_path / "page.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_model("unet", base=2), _config("unet", {"base": 2}))
    read_checkpoint(good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        read_checkpoint(cut)


def test_foreign_pickles_and_onnx_models_are_named_in_one_whole_line(tmp_path, recwarn):
    """A plain pickle gave torch's paragraph cut at 200 characters ('... Re-running torch.load with weights_only
    set to False)'), a pickled whole model 'add_safe_globals([torchvision.models.resnet.Re)', with torch's pickle
    protocol warning beside it; an exported ONNX model 'starts with unrecognized binary data'."""
    import pickle

    import onnx
    from onnx import TensorProto, helper

    with open(tmp_path / "p.pkl", "wb") as fh:
        pickle.dump({"a": 1}, fh, protocol=4)
    torch.save(build_model("unet", base=2), tmp_path / "whole.pt")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    for name, why in (("p.pkl", "a pickle that torch.save did not write; hemseg loads tensors only"),
                      ("whole.pt", r"it holds a pickled hemseg\.train\.models\.UNet object, a whole model"),
                      ("model.onnx", r"an ONNX model \(an export\), not a PyTorch checkpoint")):
        with pytest.raises(ModelError, match=why) as err:
            read_checkpoint(tmp_path / name)
        assert "weights_only set to False" not in str(err.value) and "\n" not in str(err.value)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_a_checkpoint_of_another_width_names_the_mismatch(tmp_path):
    """The error kept only torch's first line, 'Error(s) in loading state_dict for UNet:', and nothing after it."""
    from hemseg.errors import ModelError
    from hemseg.train.checkpoint import load_checkpoint, save_checkpoint
    from hemseg.train.models import build_model

    path = tmp_path / "wrong.pt"
    save_checkpoint(path, build_model("unet", base=8), {"model": "unet", "model_kwargs": {"base": 16},
                                                        "preprocess": {"size": 64}, "image_size": 64,
                                                        "threshold": 0.5})
    with pytest.raises(ModelError, match="size mismatch for .*weight: copying a param with shape") as exc:
        load_checkpoint(path)
    assert "\n" not in str(exc.value)


def test_a_checkpoint_that_cannot_be_written_is_an_oserror_naming_it(tmp_path, monkeypatch):
    """torch.save onto a full disk raised RuntimeError ('unexpected pos ...'): hemseg train printed a traceback.
    Now an OSError naming the checkpoint (one line from the CLI), no temporary file left, an earlier one kept."""
    import os

    model = build_model("unet", base=4, depth=2)
    config = {"model": "unet", "model_kwargs": {"base": 4, "depth": 2}}
    path = save_checkpoint(tmp_path / "best.pt", model, config)
    before = path.read_bytes()

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as exc:
        save_checkpoint(path, model, config)
    assert exc.value.filename == str(path) and exc.value.errno == 28
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_a_checkpoint_replaced_while_it_is_loaded_is_refused_not_hashed_as_the_other(tmp_path, monkeypatch):
    """hemseg-export and hemseg eval loaded best.pt, then hashed it again: a running hemseg train that saved a new
    best.pt in between gave an export recording one checkpoint's SHA-256 beside the other's weights."""
    import os

    import hemseg.train.checkpoint as ckpt_mod
    from hemseg.runtime.io.hashing import sha256_file
    from hemseg.train.checkpoint import load_checkpoint_hashed

    a = save_checkpoint(tmp_path / "best.pt", build_model("unet", base=4), _config("unet", {"base": 4}))
    b = save_checkpoint(tmp_path / "other.pt", build_model("unet", base=4), {**_config("unet", {"base": 4}),
                                                                             "threshold": 0.3})
    model, config, digest = load_checkpoint_hashed(a)
    assert digest == sha256_file(a) and config["threshold"] != 0.3
    real = ckpt_mod.load_checkpoint

    def train_saves_meanwhile(path):
        loaded = real(path)
        os.replace(b, a)  # a new best.pt, saved the way hemseg train saves it
        return loaded

    monkeypatch.setattr(ckpt_mod, "load_checkpoint", train_saves_meanwhile)
    with pytest.raises(ModelError, match="was replaced while it was read"):
        load_checkpoint_hashed(a)


def test_weights_that_do_not_fit_say_why_and_mostly_random_weights_warn(tmp_path, caplog):
    """A hemseg checkpoint of doubled tensors was refused with 'Error(s) in loading state_dict for UNet:' and no
    reason; a file covering 5 of the network's tensors trained with an INFO line only (nothing with -q)."""
    from hemseg.train.weights import initialize

    good = tmp_path / "good.pt"
    save_checkpoint(good, build_model("unet", base=2), _config("unet", {"base": 2}))
    payload = torch.load(good, weights_only=True)
    payload["state_dict"] = {k: torch.cat([v, v]) if v.ndim else v for k, v in payload["state_dict"].items()}
    torch.save(payload, tmp_path / "wide.pt")
    with pytest.raises(ModelError, match=r"weights do not fit: .*size mismatch for \w"):
        initialize(build_model("unet", base=2), "unet", str(tmp_path / "wide.pt"), {"base": 2})
    state = build_model("unet", base=2).state_dict()
    torch.save(dict(list(state.items())[:5]), tmp_path / "partial.pt")
    with caplog.at_level("WARNING", logger="hemseg.train.weights"):
        initialize(build_model("unet", base=2), "unet", str(tmp_path / "partial.pt"), {"base": 2})
    assert "loaded 5 tensors" in caplog.text and "stay randomly initialized" in caplog.text
