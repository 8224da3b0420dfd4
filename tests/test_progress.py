"""Progress bars follow the log level and the terminal: -q (warnings and errors only) and a stderr that is no
terminal (a log file, a pipe) hide them."""

from __future__ import annotations

import logging

import pytest

from hemseg import progress
from hemseg.phantom import generate
from hemseg.progress import shown


@pytest.mark.parametrize("level, terminal, drawn", [(logging.INFO, True, True), (logging.WARNING, True, False),
                                                    (logging.INFO, False, False)])
def test_a_bar_asked_for_is_drawn_only_on_a_terminal_while_info_is_logged(tmp_path, capsys, monkeypatch, level,
                                                                           terminal, drawn):
    """hemseg -q eval / train drew tqdm's carriage returns and blocks into a non-terminal stderr; so did a plain run
    with stderr redirected to a file (one line of bar frames with the warnings glued to its end)."""
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: terminal)
    logger = logging.getLogger("hemseg")
    saved = logger.level
    logger.setLevel(level)
    try:
        assert shown(True) is drawn and shown(False) is False
        generate(tmp_path / "ph", per_category=1, seed=0, size_range=(32, 40), progress=True)
    finally:
        logger.setLevel(saved)
    assert ("phantom" in capsys.readouterr().err) is drawn


def test_a_redirected_stderr_is_no_terminal(tmp_path, monkeypatch):
    with open(tmp_path / "err.txt", "w") as f:
        monkeypatch.setattr("sys.stderr", f)
        assert progress.stderr_is_terminal() is False
