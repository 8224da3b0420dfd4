"""File-name-safe text for the names hemseg gives its outputs (predict's stems, sort-dicom's series folders).

Names keep A-Z a-z 0-9 ``.`` ``_`` ``-`` only, so they travel through any file system, archive and PACS tool;
accented Latin letters keep their base letter (``séance`` -> ``seance``, ``Müller`` -> ``Muller``, ``Ødem`` ->
``Odem``, ``Straße`` -> ``Strasse``) instead of
becoming ``_`` (``s_ance``, ``M_ller``: names a reader could no longer match to their inputs); every other run
of characters (other scripts, spaces, punctuation) becomes one ``_``.
"""
from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Latin letters that no decomposition takes to a base letter, written as the languages that use them do
_LETTERS = str.maketrans({"ß": "ss", "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Œ": "OE", "œ": "oe", "Ł": "L",
                          "ł": "l", "Đ": "D", "đ": "d", "Þ": "Th", "þ": "th", "ı": "i"})


def file_safe(text: str) -> str:
    """``text`` with accents dropped (compatibility decomposition, combining marks removed) and each run of
    characters outside ``A-Za-z0-9._-`` replaced by ``_``."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text.translate(_LETTERS)) if not unicodedata.combining(c))
    return _UNSAFE.sub("_", plain)
