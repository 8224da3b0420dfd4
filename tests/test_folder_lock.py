"""The output folder lock: one writer per folder, released when done, refusals in one line."""

from __future__ import annotations

import pytest

from hemseg.errors import UsageError
from hemseg.runtime.io.lock import LOCK_NAME, folder_lock


def test_a_held_folder_refuses_a_second_writer_and_is_free_again_after(tmp_path):
    with folder_lock(tmp_path, "hemseg predict"):
        assert (tmp_path / LOCK_NAME).exists()
        with pytest.raises(UsageError, match="another hemseg command is writing into this folder"):
            with folder_lock(tmp_path, "hemseg predict"):
                pass
    assert not (tmp_path / LOCK_NAME).exists()
    with folder_lock(tmp_path, "hemseg predict"):
        pass


def test_a_folder_that_cannot_be_written_is_named_not_its_lock_file(tmp_path):
    missing = tmp_path / "gone"  # (root may write anywhere: a folder that does not exist cannot take the file)
    with pytest.raises(UsageError, match=r"gone: cannot write into this folder"):
        with folder_lock(missing, "hemseg-export"):
            pass


def test_a_staging_folder_a_killed_command_left_is_removed_and_a_live_ones_kept(tmp_path):
    """Staging folders a SIGKILL left (a half-rendered phantom, a half-written eval report) stayed for good; the
    next command removes those whose lock is free, never one a running command holds."""
    from hemseg.runtime.io.lock import FolderLock, staging_folder

    dead = tmp_path / ".x.tmp-dead"
    dead.mkdir()
    (dead / "half.png").write_bytes(b"x")
    live = tmp_path / ".x.tmp-live"
    live.mkdir()
    held = FolderLock(tmp_path, "held", name=live.name + ".lock").acquire()
    other = tmp_path / ".y.tmp-other"  # another prefix: not this command's
    other.mkdir()
    try:
        with staging_folder(tmp_path, ".x.tmp-") as stage:
            assert stage.is_dir() and (tmp_path / (stage.name + ".lock")).exists()
            (stage / "f").write_text("work")
        assert not dead.exists() and live.is_dir() and other.is_dir()
        assert not stage.exists() and not (tmp_path / (stage.name + ".lock")).exists()
    finally:
        held.release()


def test_a_lock_file_opened_just_before_its_holder_released_it_is_not_a_second_lock(tmp_path, monkeypatch):
    """release() unlinks the lock file: a command that had opened it just before could then lock the nameless file,
    while a third made the file anew and locked that one: two commands writing one folder. acquire() now checks
    that the file it locked is still the one at the path."""
    import fcntl

    from hemseg.runtime.io.lock import FolderLock

    first = FolderLock(tmp_path, "held").acquire()
    third = FolderLock(tmp_path, "held (third)")
    real, calls = fcntl.flock, []

    def descheduled(fh, op):  # the second command is descheduled between its open and its flock
        if not calls:
            calls.append(1)
            first.release()  # the holder ends: unlinks the file the second command has open
            third.acquire()  # a third command makes the file anew and locks it
        return real(fh, op)

    monkeypatch.setattr(fcntl, "flock", descheduled)
    with pytest.raises(UsageError, match="second refused"):
        FolderLock(tmp_path, "second refused").acquire()
    third.release()


def test_a_staging_folder_is_locked_before_it_exists(tmp_path, monkeypatch):
    """The staging folder was made first and locked after: in between, another command's clean-up found it
    unlocked and removed it under the running command (or made it fail with 'in use')."""
    from pathlib import Path

    from hemseg.runtime.io.lock import FolderLock, staging_folder

    real_mkdir, seen = Path.mkdir, []

    def mkdir(self, *args, **kwargs):
        if self.name.startswith(".x.tmp-"):  # the moment the folder appears, its lock must be held
            with pytest.raises(UsageError):
                FolderLock(self.parent, "held", name=self.name + ".lock").acquire()
            seen.append(self.name)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with staging_folder(tmp_path, ".x.tmp-") as stage:
        assert stage.is_dir()
    assert seen == [stage.name]
