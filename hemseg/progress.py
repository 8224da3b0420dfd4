"""Whether a progress bar is drawn: one rule for every bar (training, evaluation, slice preparation, phantoms)."""

from __future__ import annotations

import logging
import sys


def stderr_is_terminal() -> bool:
    """Whether stderr, where the bars go, is a terminal (a file, pipe or a test's capture is not)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


def shown(wanted: bool) -> bool:
    """A bar asked for (``--progress``) is drawn only on a terminal and while hemseg logs INFO records: ``-q``
    (warnings and errors only) hides the bars too. Both kept tqdm's carriage returns and redrawn blocks out of log
    files (``2> err.txt`` held one line of ~50 bar frames with the warnings glued to its end)."""
    return bool(wanted) and stderr_is_terminal() and logging.getLogger("hemseg").isEnabledFor(logging.INFO)
