"""The small exception hierarchy of hemseg.

Library code raises these; the command-line entry points turn them into one-line messages and exit codes.
Every error that concerns a file names the file.
"""

from __future__ import annotations

from pathlib import Path


class HemsegError(Exception):
    """Base class of every error hemseg raises on purpose."""

    exit_code = 1


class UsageError(HemsegError):
    """Bad options or arguments given by the user."""


class DependencyError(HemsegError):
    """An optional dependency needed for the requested action is not installed (never silently replaced)."""


class InputError(HemsegError):
    """An input file (image, mask, DICOM, NIfTI, dataset folder) is unusable. Names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class GeometryError(InputError):
    """A mask and its image place their voxels differently (another origin, voxel size, rotation or grid)."""


class DatasetError(HemsegError):
    """A dataset as a whole is unusable (no pairs, nothing to train on, ...)."""


class ModelError(HemsegError):
    """A model file (checkpoint, ONNX, TensorRT engine) is unusable or does not match this installation."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class EngineNotPortable(ModelError):
    """A TensorRT engine, whole and matching its sidecar, that cannot run here: built by another TensorRT, or for
    another GPU architecture (NVIDIA's engines are not portable). ``--backend auto`` moves on to the ONNX model
    beside it and hemseg-bench skips it; a damaged engine or sidecar stays a plain :class:`ModelError`."""


class NonFiniteLogits(ModelError):
    """A model produced NaN or infinite logits for a batch (a damaged model, or a numeric overflow on some inputs):
    no mask is made from them. hemseg predict fails only the inputs whose own logits are not finite."""


class BackendUnavailable(HemsegError):
    """A requested inference backend cannot run here. Raised instead of falling back to another backend."""


class VerificationError(HemsegError):
    """An exported model missed a parity gate."""


def os_error_line(exc: OSError) -> str:
    """``path: reason`` of an OSError (the reason alone when it names no file): how the CLI and the DICOM node's
    events say that the file system refused."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename is not None:
        named = Path(exc.filename)
        if named.is_symlink() and not named.exists():  # mkdir on a dangling link: no file is there to see
            reason += " (a symbolic link to nothing stands where a folder is needed)"
        else:
            reason += " (a file stands where a folder is needed)"
    if exc.filename is None:
        return reason
    other = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
    return f"{exc.filename}{other}: {reason}"
