"""One writer per output folder: ``hemseg train``, ``hemseg-export`` and ``hemseg predict`` hold an exclusive lock
on ``FOLDER/.hemseg.lock`` while they write there (two runs into one folder left a mix of both, each reporting
success), and ``hemseg serve`` one on ``.hemseg-node.lock`` while it runs (two nodes would process one inbox). The
operating system releases a lock when its process ends, killed or not; the file is removed when it is released.
Where the platform has no ``fcntl`` (Windows) no lock is taken."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from hemseg.errors import UsageError

log = logging.getLogger(__name__)

LOCK_NAME = ".hemseg.lock"


class FolderLock:
    """An exclusive, non-blocking lock on ``folder/name``: :meth:`acquire` raises UsageError(``refusal``) at once
    when another process holds it; :meth:`release` frees it (and removes the file)."""

    def __init__(self, folder: str | Path, refusal: str, name: str = LOCK_NAME):
        self.folder, self.refusal = Path(folder), refusal
        self.path = self.folder / name
        self._fh = None

    def acquire(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        for _ in range(20):
            try:
                fh = open(self.path, "a+")  # noqa: SIM115 - held open while the lock is held
            except OSError as exc:  # a read-only folder, no permission: said of the folder, not of the lock file
                raise UsageError(f"{self.folder}: cannot write into this folder ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise UsageError(self.refusal) from None
            if self._still_there(fh):
                self._fh = fh
                return self
            # the file was opened just before its holder released it (release unlinks it): the lock taken is of a
            # file no longer at the path, which another command may have made anew and locked; try the path again
            fh.close()
        raise UsageError(self.refusal)

    def _still_there(self, fh) -> bool:
        """Whether the locked file ``fh`` is the one at :attr:`path` now."""
        try:
            at_path, held = os.stat(self.path), os.fstat(fh.fileno())
        except OSError:
            return False
        return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        if self._fh is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still held: a command that opened it before fails its own lock attempt
        self._fh.close()
        self._fh = None


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[None]:
    """Hold the lock of the existing ``folder`` for ``command`` (e.g. ``"hemseg train"``); UsageError at once when
    another command holds it."""
    lock = FolderLock(folder, f"{folder}: another hemseg command is writing into this folder (a second {command} "
                              "into it would leave a mix of both); wait for it to end or choose another folder")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def staging_folder(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A new folder ``parent/<prefix><random>`` in which a command builds its output before moving it into place,
    with a lock held beside it (``<folder>.lock``) while the command runs; removed on leaving (if still there:
    a command may have moved it into place). Folders of the same ``prefix`` that killed commands left (their lock
    free: the operating system released it with the process) are removed first: a SIGKILL or a power cut left
    them for good (12 MB of a half-rendered phantom, a half-written report). A live command's folder is kept."""
    import secrets
    import shutil

    parent = Path(parent)
    _remove_stale_staging(parent, prefix)
    for _ in range(100):  # the lock first, then the folder: another command's clean-up never sees it unlocked
        folder = parent / f"{prefix}{secrets.token_hex(6)}"
        lock = FolderLock(parent, f"{folder}: in use", name=folder.name + ".lock").acquire()
        try:
            folder.mkdir(mode=0o700)
            break
        except FileExistsError:
            lock.release()
        except BaseException:
            lock.release()
            raise
    else:
        raise FileExistsError(f"{parent}: no free name for a staging folder {prefix}...")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.release()


def _remove_stale_staging(parent: Path, prefix: str) -> None:
    import shutil

    try:
        names = [p for p in parent.iterdir() if p.name.startswith(prefix)]
        entries = [p for p in names if not p.name.endswith(".lock") and p.is_dir() and not p.is_symlink()]
    except OSError:
        return
    # a lock whose folder is gone (a killed command had moved its folder into place): removed once free (a stale
    # '.X.tmp-*.lock' stayed beside a phantom for good: QA, stop 57)
    for path in names:
        if path.name.endswith(".lock") and path.is_file() and not (parent / path.name[:-len(".lock")]).exists():
            lock = FolderLock(parent, "", name=path.name)
            try:
                lock.acquire()
            except UsageError:  # a running command's (it makes its folder just after taking its lock)
                continue
            lock.release()  # (release removes the file)
    for folder in entries:
        lock = FolderLock(parent, "", name=folder.name + ".lock")
        try:
            lock.acquire()
        except UsageError:  # a running command's
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("%s: removed, left by an interrupted run", folder)
        finally:
            lock.release()
