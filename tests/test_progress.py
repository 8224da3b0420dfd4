"""Progress bars follow the log level: -q (warnings and errors only) hides them too."""

from __future__ import annotations

import logging

import pytest

from hemseg.phantom import generate
from hemseg.progress import shown


@pytest.mark.parametrize("level, drawn", [(logging.INFO, True), (logging.WARNING, False)])
def test_a_bar_asked_for_is_drawn_only_while_info_is_logged(tmp_path, capsys, level, drawn):
    """hemseg -q eval / train drew tqdm's carriage returns and blocks into a non-terminal stderr."""
    logger = logging.getLogger("hemseg")
    saved = logger.level
    logger.setLevel(level)
    try:
        assert shown(True) is drawn and shown(False) is False
        generate(tmp_path / "ph", per_category=1, seed=0, size_range=(32, 40), progress=True)
    finally:
        logger.setLevel(saved)
    assert ("phantom" in capsys.readouterr().err) is drawn
