"""Content hashes of files (checkpoints, ONNX models, engines, dataset files)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from hemseg.runtime.io.regular import open_regular


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks. OSError (EINVAL) naming it for anything but a regular file:
    a named pipe is opened without blocking and refused (a dataset image that was a pipe hung eval and train)."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


#: device, inode, size, modification time and change time of a file (:func:`file_version`)
FileVersion = tuple[int, int, int, int, int]


def file_version(path: str | Path) -> FileVersion:
    """What tells one version of a file from the next: device, inode, size, modification time and change time (an
    atomic replacement, as ``hemseg train`` saves ``best.pt`` and ``hemseg-export`` its models, makes a new inode;
    a file rewritten in place at its old size with its old modification time set back, as ``cp -p`` or rsync onto
    it do, keeps both, but not its change time, which no tool sets: a hash cached by version named the old
    content, and the OpenVINO cache ran the old weights)."""
    st = Path(path).stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def sha256_of_version(path: str | Path, version: FileVersion) -> str | None:
    """:func:`sha256_file` of ``path`` if it is still ``version`` (:func:`file_version`, taken when it was loaded)
    before and after hashing, else None: the file was replaced since, and its hash would name a model or data that
    was not the one used. Hashed once per version (:func:`cached_sha256`)."""
    try:
        if file_version(path) != version:
            return None
        digest = _sha256_cached(str(path), version)
        return digest if file_version(path) == version else None
    except OSError:
        return None


def cached_sha256(path: str | Path) -> str:
    """:func:`sha256_file`, computed once per version of the file (:func:`file_version`): a model is hashed when its
    export verification is read and again for a DICOM output's algorithm record, an ensemble's folds more than once."""
    return _sha256_cached(str(path), file_version(path))


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, version: FileVersion) -> str:
    return sha256_file(path)


def versions_under(paths, depth: int = 2) -> dict[str, FileVersion]:
    """:func:`file_version` of every file at or under ``paths`` (folders searched ``depth`` levels: an export
    folder and its ``fold_<k>/``), keyed by absolute path: taken before a model is loaded, so that the file hashed
    later for a provenance record can be checked to be the version that was there when it was read."""
    found: dict[str, FileVersion] = {}

    def visit(p: Path, left: int) -> None:
        try:
            if p.is_file():
                found[str(p.absolute())] = file_version(p)
            elif p.is_dir() and left > 0:
                for child in p.iterdir():
                    visit(child, left - 1)
        except OSError:
            pass

    for path in paths:
        try:
            visit(Path(path), depth)
        except TypeError:  # not a path: whoever loads it says so
            continue
    return found
