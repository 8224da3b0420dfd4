"""Warnings about a file said once per process: evaluation and training read a file several times (overlays,
folds, a second pass), and the same line repeated for every read buried the others."""

from __future__ import annotations

import logging

_SAID: set[tuple[str, str]] = set()


def warn_once(log: logging.Logger, key: object, msg: str, *args: object) -> None:
    """``log.warning(msg, *args)`` the first time ``(key, msg)`` comes by in this process; later ones at DEBUG."""
    said = (str(key), msg)
    if said in _SAID:
        log.debug(msg, *args)
        return
    _SAID.add(said)
    log.warning(msg, *args)
