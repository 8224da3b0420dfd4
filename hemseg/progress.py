"""Whether a progress bar is drawn: one rule for every bar (training, evaluation, slice preparation, phantoms)."""

from __future__ import annotations

import logging


def shown(wanted: bool) -> bool:
    """A bar asked for (``--progress``) is drawn only while hemseg logs INFO records: ``-q`` (warnings and errors
    only) hides the bars too, which drew carriage returns and blocks into a log file."""
    return bool(wanted) and logging.getLogger("hemseg").isEnabledFor(logging.INFO)
