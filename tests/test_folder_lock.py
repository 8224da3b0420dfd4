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
