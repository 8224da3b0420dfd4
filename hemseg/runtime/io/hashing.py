"""Content hashes of files (checkpoints, ONNX models, engines, dataset files)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_version(path: str | Path) -> tuple[int, int, int, int]:
    """What tells one version of a file from the next: device, inode, size and modification time (an atomic
    replacement, as ``hemseg train`` saves ``best.pt`` and ``hemseg-export`` its models, makes a new inode)."""
    st = Path(path).stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def sha256_of_version(path: str | Path, version: tuple[int, int, int, int]) -> str | None:
    """:func:`sha256_file` of ``path`` if it is still ``version`` (:func:`file_version`, taken when it was loaded)
    before and after hashing, else None: the file was replaced since, and its hash would name a model or data that
    was not the one used."""
    try:
        if file_version(path) != version:
            return None
        digest = sha256_file(path)
        return digest if file_version(path) == version else None
    except OSError:
        return None
