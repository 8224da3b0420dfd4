"""Initial weights of a model: ``none`` | ``auto`` | a local file. Never downloads anything.

- ``none``: random initialization (PyTorch defaults). Recorded as ``"random"``.
- ``auto`` (FCN-ResNet50 only; the U-Nets have no pretrained weights and get ``"random"``): torchvision's pretrained
  files *if they are already in the local torch hub cache* (``torch.hub.get_dir()/checkpoints``), in this order:

  1. ``fcn_resnet50_coco-1167a1af.pth`` (``FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1``): everything except the
     auxiliary head (dropped from our model) and ``classifier.4`` (our one-channel head). Recorded as
     ``"coco-cache:<file>"``.
  2. ``resnet50-11ad3fa6.pth`` or ``resnet50-0676ba61.pth`` (ResNet50 ImageNet V2 / V1): the backbone (``fc.*``
     ignored). Recorded as ``"imagenet-cache:<file>"``.

  Nothing cached: random initialization with a logged warning, recorded as ``"random"``. The file names are taken
  from torchvision's weight enums (their URLs), and the files are read with ``torch.load(weights_only=True)``;
  torchvision's own loaders (which download) are never called.
- ``PATH``: a local file, recorded as ``"file:<absolute path>"``. Either a hemseg checkpoint (same architecture and
  model options required; every tensor loaded) or a plain torchvision/PyTorch ``state_dict`` (optionally wrapped in
  ``{"state_dict": ...}`` or ``{"model": ...}``) of the whole network or of the ResNet50 backbone. Keys are matched
  with or without the ``net.`` / ``net.backbone.`` prefixes. Strict about shapes except the replaced head
  (``classifier.4`` of FCN, ``head`` of the U-Nets), whose mismatching tensors are skipped; keys that fit nothing are
  an error (except torchvision's ``aux_classifier.*`` and ResNet's ``fc.*``, which are ignored with a log line).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from hemseg.errors import ModelError, UsageError

log = logging.getLogger(__name__)

#: Keys of foreign state_dicts that are ignored (not an error) when they fit nothing in our models.
IGNORED_PREFIXES = ("aux_classifier.", "fc.")
#: Our replaced output heads: a shape mismatch there is expected and skipped.
HEAD_PREFIXES = ("net.classifier.4.", "head.")


def _url_name(weights_enum_member: Any) -> str:
    return os.path.basename(urlparse(weights_enum_member.url).path)


def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where torchvision caches downloaded weight files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_pretrained_files() -> list[tuple[str, Path]]:
    """``(kind, path)`` of the cached pretrained files usable by FCN-ResNet50, best first; kind is coco|imagenet."""
    from torchvision.models import ResNet50_Weights
    from torchvision.models.segmentation import FCN_ResNet50_Weights

    folder = hub_checkpoint_dir()
    candidates = [("coco", _url_name(FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1)),
                  ("imagenet", _url_name(ResNet50_Weights.IMAGENET1K_V2)),
                  ("imagenet", _url_name(ResNet50_Weights.IMAGENET1K_V1))]
    return [(kind, folder / name) for kind, name in candidates if (folder / name).is_file()]


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    from hemseg.train.checkpoint import container_problem

    problem = container_problem(path)
    if problem:
        raise ModelError(path, problem)
    try:
        from hemseg.train.checkpoint import quiet_load

        obj = quiet_load(path)
    except Exception as exc:
        from hemseg.train.checkpoint import load_error_reason

        raise ModelError(path, f"cannot be loaded as a weights-only PyTorch file: {load_error_reason(exc)}") from None
    if isinstance(obj, dict) and obj.get("format") == "hemseg-checkpoint":
        return obj  # handled by the caller
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(path, "not a state_dict (a mapping of parameter names to tensors) nor a hemseg checkpoint")
    return obj


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: Path,
                  skip_prefixes: tuple[str, ...] = (), quiet: bool = False) -> dict[str, int]:
    """Copy the tensors of a foreign ``state`` into ``model`` (see the module docstring for the matching rules).

    ``skip_prefixes``: source keys to leave out on purpose (e.g. the COCO head). Returns counts
    ``{"loaded", "skipped_head", "ignored"}``; raises ModelError naming ``source`` on any other mismatch.
    """
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(skip_prefixes)}
    prefixes = ("", "net.", "net.backbone.")
    prefix = max(prefixes, key=lambda p: sum((p + k) in own for k in state))
    new: dict[str, torch.Tensor] = {}
    unknown, bad_shape, ignored, skipped_head = [], [], [], []
    for k, v in state.items():
        target = prefix + k
        if target not in own:
            (ignored if k.startswith(IGNORED_PREFIXES) else unknown).append(k)
        elif own[target].shape != v.shape:
            (skipped_head if target.startswith(HEAD_PREFIXES) else bad_shape).append(
                f"{k}: file {tuple(v.shape)} vs model {tuple(own[target].shape)}")
        else:
            new[target] = v
    if unknown:
        raise ModelError(source, f"{len(unknown)} tensor(s) fit nothing in this model, e.g. {unknown[:3]}")
    if bad_shape:
        raise ModelError(source, f"{len(bad_shape)} tensor(s) have the wrong shape, e.g. {bad_shape[:3]}")
    if not new:
        raise ModelError(source, "no tensor of the file matches this model")
    model.load_state_dict(new, strict=False)
    if quiet:  # a check before the run, whose own load says what it loads
        return {"loaded": len(new), "skipped_head": len(skipped_head), "ignored": len(ignored)}
    if ignored:
        log.info("%s: ignored %d tensors of heads this model does not have (%s...)", source, len(ignored), ignored[0])
    if skipped_head:
        log.info("%s: kept the new output head (%d tensors of a different shape skipped)", source, len(skipped_head))
    missing = [k for k in own if k not in new and not k.endswith("num_batches_tracked")]
    if missing:  # most of the network random is not the start the file was given for: a warning, not a note
        log.log(logging.WARNING if len(missing) > len(new) else logging.INFO,
                "%s: loaded %d tensors; %d stay randomly initialized (e.g. %s)", source, len(new), len(missing),
                next((k for k in missing if not k.endswith(("running_mean", "running_var"))), missing[0]))
    return {"loaded": len(new), "skipped_head": len(skipped_head), "ignored": len(ignored)}


def weights_model(path: str | Path) -> tuple[str, dict | None]:
    """(the model a ``--weights`` file is for, its model_kwargs or None when any fit): a hemseg checkpoint's own model
    and kwargs, else FCN-ResNet50 (torchvision's FCN or ResNet-50 state dicts, the only foreign weights hemseg maps).
    A file that is neither raises ModelError."""
    state = _load_state_dict_file(Path(path).expanduser())
    if state.get("format") == "hemseg-checkpoint":
        config = state.get("config") or {}
        return str(config.get("model") or "fcn_resnet50"), dict(config.get("model_kwargs") or {})
    return "fcn_resnet50", None


def inherited_digests(weights: Any) -> list[str]:
    """The pixel digests of the slices a ``--weights`` hemseg checkpoint was trained and validated on (its own
    inherited ones included): a model fine-tuned from it has seen them, and an evaluation on them is optimistic. A
    report fine-tuned from a checkpoint trained on its test images said 'no model was trained on a test image'
    (a QA finding of stop 55). [] for none / auto and foreign weights."""
    if not isinstance(weights, str) or weights in ("none", "random", "auto") or not weights.strip():
        return []
    path = Path(weights).expanduser()
    if not path.is_file():
        return []
    state = _load_state_dict_file(path)
    if state.get("format") != "hemseg-checkpoint":
        return []
    return [str(d) for d in (state.get("config") or {}).get("pixel_digests") or ()]


def _load_hemseg_checkpoint(model: nn.Module, path: Path, model_name: str, model_kwargs: dict) -> None:
    from hemseg.train.checkpoint import read_checkpoint

    payload = read_checkpoint(path)
    cfg = payload["config"]
    if cfg["model"] != model_name or dict(cfg.get("model_kwargs", {})) != dict(model_kwargs):
        raise ModelError(path, f"checkpoint is a {cfg['model']} {cfg.get('model_kwargs', {})}, "
                               f"not the requested {model_name} {model_kwargs}")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        from hemseg.train.checkpoint import load_error_text

        raise ModelError(path, f"weights do not fit: {load_error_text(exc)}") from None


def check_weights(model_name: str, weights: str, model_kwargs: dict | None = None) -> None:
    """ModelError (or UsageError) now when a ``--weights`` file does not load into ``model_name``: said before the
    dataset's slices are prepared (minutes on a large one), not after. Nothing to check for none / auto."""
    if not isinstance(weights, str) or weights in ("none", "random", "auto") or not weights.strip():
        return
    from hemseg.train.models import build_model

    kwargs = dict(model_kwargs or {})
    initialize(build_model(model_name, **kwargs), model_name, weights, kwargs, quiet=True)


def initialize(model: nn.Module, model_name: str, weights: str, model_kwargs: dict | None = None,
               quiet: bool = False) -> str:
    """Initialize ``model`` in place according to ``weights`` (none|auto|PATH); returns the ``init`` record.
    ``quiet``: no log of what was loaded (:func:`check_weights`; errors are raised all the same)."""
    model_kwargs = dict(model_kwargs or {})
    if isinstance(weights, str) and not weights.strip():  # an unset "$WEIGHTS": never silently random
        raise UsageError("--weights is empty (an unset shell variable?); give none, auto or a checkpoint file")
    if weights in (None, "none", "random"):
        return "random"
    if weights == "auto":
        if model_name != "fcn_resnet50":
            log.info("--weights auto: no pretrained weights exist for %s; random initialization", model_name)
            return "random"
        found = cached_pretrained_files()
        if not found:
            log.warning("--weights auto: no pretrained FCN-ResNet50/ResNet50 file in %s (hemseg never downloads); "
                        "training from random initialization", hub_checkpoint_dir())
            return "random"
        kind, path = found[0]
        state = _load_state_dict_file(path)
        skip = ("aux_classifier.", "classifier.4.") if kind == "coco" else ("fc.",)
        load_matching(model, state, path, skip_prefixes=skip)
        log.info("initialized %s from the cached %s weights %s", model_name, kind, path)
        return f"{kind}-cache:{path.name}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UsageError(f"--weights must be none, auto or an existing file; {weights!r} is none of these")
    path = path.resolve()
    state = _load_state_dict_file(path)
    if state.get("format") == "hemseg-checkpoint":
        _load_hemseg_checkpoint(model, path, model_name, model_kwargs)
    else:
        load_matching(model, state, path, quiet=quiet)
    if not quiet:
        log.info("initialized %s from %s", model_name, path)
    return f"file:{path}"
