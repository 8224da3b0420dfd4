"""The hemseg checkpoint: a state_dict plus a JSON-able config, loadable with ``torch.load(weights_only=True)``.

Layout::

    {"format": "hemseg-checkpoint", "format_version": 1, "state_dict": {...}, "config": {...}}

``config`` keys: ``model``, ``model_kwargs``, ``preprocess`` (PreprocessSpec dict), ``image_size``, ``threshold``,
``labels``, ``data_fingerprint``, ``init``, ``versions``, ``epoch``, ``metrics``, ``hemseg_version`` (plus, for
resumable ``last.pt`` files, ``optimizer_state`` and training state kept outside ``config``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hemseg.errors import ModelError, UsageError
from hemseg.runtime.io.hashing import sha256_file as file_sha256  # noqa: F401 (re-exported for callers)
from hemseg.runtime.io.writers import atomic_write_bytes
from hemseg.runtime.preprocess import PreprocessSpec
from hemseg.train.models import build_model

FORMAT = "hemseg-checkpoint"
FORMAT_VERSION = 1
REQUIRED_CONFIG = ("model", "preprocess", "image_size", "threshold")


def save_checkpoint(path: str | Path, model: nn.Module, config: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, synced, then renamed)."""
    path = Path(path)
    json.dumps(config)  # the config must stay JSON-able: fail here, not at load time
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "config": config}
    if extra:
        payload.update(extra)
    buf = io.BytesIO()
    torch.save(payload, buf)  # in memory: torch turns a failed file write (a full disk) into a RuntimeError
    # the file written atomically and synced, an error naming it (OSError: one line from the CLI)
    return atomic_write_bytes(path, buf.getbuffer())


def load_error_reason(exc: BaseException, limit: int = 200) -> str:
    """One line saying why ``torch.load`` failed. torch's weights-only refusal starts with a generic paragraph (on
    loading with ``weights_only=False``, which hemseg never does) and gives the actual reason after ``WeightsUnpickler
    error:``; a pickled object of a class (a whole model, an optimizer) is named as such."""
    import re

    text = str(exc)
    _, found, after = text.partition("WeightsUnpickler error:")
    if not found:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()] or [type(exc).__name__]
        return lines[0][:limit]
    reason = " ".join(after.strip().split("\n\n")[0].split())
    unsafe = re.match(r"Unsupported global: GLOBAL ([\w.]+)", reason)
    if unsafe:
        return (f"it holds a pickled {unsafe.group(1)} object, a whole model or another program's object, which "
                "hemseg never unpickles (tensors only): save the model's state_dict() instead")
    if reason.startswith("Unsupported operand"):
        return "a pickle that torch.save did not write; hemseg loads tensors only, never arbitrary pickles"
    return reason[:limit]


def quiet_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's warning about a pickle protocol it was
    not written with (a stderr line beside hemseg's own error for a file that is not torch's)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def container_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a PyTorch file, judged from its bytes before unpickling, or None. ``torch.save``
    writes a zip archive (a legacy file starts with a pickle protocol byte); a zip without its central directory at
    the end is an interrupted copy or download."""
    import zipfile

    from hemseg.runtime.io.sniff import describe_content, read_head, torch_save_kind

    head = read_head(path)
    kind = torch_save_kind(head)
    if kind == "zip":
        return None if zipfile.is_zipfile(path) else (
            "truncated or corrupt: a zip archive without its directory at the end (an interrupted copy or save?)")
    if kind == "pickle":  # torch's legacy format, for torch.load to judge
        return None
    if _is_onnx(path):
        return "an ONNX model (an export), not a PyTorch checkpoint: give the training run's checkpoint (RUN/best.pt)"
    return f"not a PyTorch file: {describe_content(head)}"


def _is_onnx(path: Path) -> bool:
    from hemseg.runtime.onnx_scan import ScanError, scan_onnx

    try:
        return scan_onnx(path.read_bytes()).has_graph
    except (ScanError, OSError, ValueError):
        return False


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate the raw checkpoint dict (``weights_only=True``); raises ModelError naming the file."""
    path = Path(path)
    if path.is_dir():
        hint = f"; its best.pt is {path / 'best.pt'}" if (path / "best.pt").is_file() else ""
        raise ModelError(path, f"is a folder, not a checkpoint file (a hemseg train run's best.pt){hint}")
    if not path.is_file():
        raise ModelError(path, "not a regular file (a pipe, socket or device)" if path.exists() else "checkpoint not found")
    if path.stat().st_size == 0:
        raise ModelError(path, "checkpoint file is empty")
    problem = container_problem(path)
    if problem:
        raise ModelError(path, problem)
    try:
        payload = quiet_load(path)
    except Exception as exc:  # pickle errors, zip errors, unsafe globals: all mean "not a safe hemseg checkpoint"
        raise ModelError(path, f"cannot be loaded as a weights-only PyTorch checkpoint: {load_error_reason(exc)}") \
            from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(path, "not a hemseg checkpoint (no 'format: hemseg-checkpoint' entry)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ModelError(path, f"hemseg checkpoint format {payload.get('format_version')} is not supported "
                               f"(this hemseg reads {FORMAT_VERSION})")
    config = payload.get("config")
    if not isinstance(config, dict) or any(k not in config for k in REQUIRED_CONFIG):
        raise ModelError(path, f"hemseg checkpoint config lacks one of {REQUIRED_CONFIG}")
    if not isinstance(payload.get("state_dict"), dict):
        raise ModelError(path, "hemseg checkpoint has no state_dict")
    return payload


def load_error_text(exc: BaseException, limit: int = 300) -> str:
    """torch's load_state_dict error on one line: its first line ends with a colon and the reasons follow on the
    next lines ('size mismatch for inc.0.weight: ...'), so the first reasons are kept, joined."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0] if len(lines) == 1 else (lines[0].rstrip(":") + ": " + "; ".join(lines[1:]))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint on the CPU in eval mode; returns ``(model, config)``."""
    payload = read_checkpoint(path)
    config = payload["config"]
    try:
        model = build_model(config["model"], **config.get("model_kwargs", {}))
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ModelError(path, f"weights do not fit model {config['model']!r}: {load_error_text(exc)}") from None
    takes = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    try:
        makes = spec_of(config).channels
    except (UsageError, TypeError, ValueError) as exc:
        raise ModelError(path, f"its preprocessing settings (config preprocess) are not usable: "
                               f"{getattr(exc, 'reason', None) or exc}") from None
    if takes is not None and makes != takes:  # export and inference would fail deep inside torch / the runtime
        raise ModelError(path, f"its preprocessing makes {makes}-channel images (config preprocess.channels), but "
                               f"the model's weights take {takes} channels")
    check_config_consistency(path, config)
    broken = _non_finite(model)
    if broken:  # its every output is NaN: an export blamed the exporter ('missed parity gate: rel_l2_max nan')
        raise ModelError(path, f"its weights hold NaN or infinite values ({broken[0]}"
                               f"{f' and {len(broken) - 1} more tensor(s)' if len(broken) > 1 else ''}): a training "
                               "that diverged; use an earlier checkpoint")
    model.eval()
    return model, config


def _non_finite(model: nn.Module) -> list[str]:
    """The names of the parameters and buffers of ``model`` that hold a NaN or an infinity."""
    import torch

    return [name for name, t in (*model.named_parameters(), *model.named_buffers())
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def threshold_was_tuned(config: dict[str, Any]) -> bool:
    """Whether a checkpoint's threshold was tuned: hemseg train records ``threshold_tuning`` when its run ends, with
    ``skipped`` (the reason) when there was nothing to tune on (a validation split without a lesion: 0.5 kept)."""
    tuning = config.get("threshold_tuning")
    return isinstance(tuning, dict) and not tuning.get("skipped")


def untuned_threshold_note(path: str | Path, config: dict[str, Any]) -> str | None:
    """What to say of a checkpoint whose threshold was never tuned: hemseg train records ``threshold_tuning`` when
    its run ends, so a checkpoint without it is an interrupted run's interim ``best.pt`` (or an earlier hemseg's);
    one whose tuning was skipped ended with a lesion-free validation split. Said by hemseg-export and hemseg eval,
    which use its threshold as it is. None when tuned."""
    if threshold_was_tuned(config):
        return None
    threshold = float(config.get("threshold", 0.5))
    skipped = (config.get("threshold_tuning") or {}).get("skipped") if isinstance(config.get("threshold_tuning"),
                                                                                  dict) else None
    if skipped:  # a finished run: it said so at its end (export and eval said nothing; a QA finding of stop 52)
        return (f"{path}: its threshold {threshold:.4g} was not tuned ({skipped}); train with validation images "
                "that have lesions (--splits FILE, a larger --val-fraction)")
    if Path(path).name == "last.pt" and (Path(path).parent / "best.pt").is_file():
        # a finished run's last.pt too: --resume advice was wrong there
        return (f"{path} is the run's last step, kept for --resume, not its selected model: its threshold "
                f"{threshold:.4g} was never tuned; use {Path(path).parent / 'best.pt'}")
    return (f"{path} records no threshold tuning (a training run that did not finish, or an earlier hemseg's): its "
            f"threshold {threshold:.4g} was never tuned; `hemseg train ... --resume` "
            "finishes an interrupted run and tunes it")


def load_checkpoint_hashed(path: str | Path) -> tuple[nn.Module, dict[str, Any], str]:
    """:func:`load_checkpoint` and the SHA-256 of the very file version it read: ModelError when the file was
    replaced meanwhile (a running ``hemseg train`` saves each new best ``best.pt`` over the old), where an export
    or an evaluation recorded one checkpoint's hash beside another's weights."""
    from hemseg.runtime.io.hashing import file_version, sha256_of_version

    path = Path(path)
    try:
        version = file_version(path)
    except OSError:
        version = None  # missing or unreadable: load_checkpoint says so
    model, config = load_checkpoint(path)
    digest = sha256_of_version(path, version) if version is not None else None
    if digest is None:
        raise ModelError(path, "was replaced while it was read (a hemseg train still running saves a new best.pt "
                               "over it); run again when the training is done")
    return model, config, digest


def check_config_consistency(path: str | Path, config: dict[str, Any]) -> None:
    """ModelError naming ``path`` when its config contradicts itself: ``image_size`` against the preprocessing size,
    a threshold outside (0, 1). hemseg-export refused such a checkpoint while hemseg eval evaluated it at the
    preprocessing size, or failed naming no file (a QA finding of stop 56); both call this now."""
    size = spec_of(config).size
    image_size = config.get("image_size", size)
    if isinstance(image_size, bool) or not isinstance(image_size, (int, float)) or image_size != size:
        raise ModelError(path, f"checkpoint config image_size {image_size!r:.40} disagrees with its preprocessing "
                               f"size {size}")
    try:
        threshold = float(config["threshold"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(path, f"checkpoint config has no usable threshold ({config.get('threshold')!r:.40})") from None
    if not 0.0 < threshold < 1.0:  # (a NaN fails too)
        raise ModelError(path, f"checkpoint threshold must be in (0, 1), got {threshold}")


def spec_of(config: dict[str, Any]) -> PreprocessSpec:
    return PreprocessSpec.from_dict(config["preprocess"])
