"""What the native decoders inside OpenCV (libjpeg, libpng) write to the process's stderr while one file is decoded.

libjpeg reports damaged data that it decodes anyway (``Corrupt JPEG data: 174 extraneous bytes before marker 0xd9``:
half an image of garbage, segmented with exit 0) only as a line on file descriptor 2, and libpng its warnings and
errors likewise, unnamed, beside hemseg's own lines. :func:`native_stderr` runs a decode with descriptor 2 pointed at
a temporary file (one decode at a time, under a lock) and hands the decoders' lines to the reader, which names the
file; anything else written to descriptor 2 meanwhile (another thread's log line) is passed on to the real stderr.
Where descriptor 2 cannot be duplicated (a process started without one), the decode runs as it is.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

_LOCK = threading.Lock()


def _new_lock() -> None:  # a child forked while another thread decoded (a DataLoader worker) gets a free lock
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock)
#: how libjpeg's (as OpenCV builds it) lines of damaged data start: a JPEG decoded while one was said is damaged
JPEG_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG file", "Invalid JPEG file structure",
               "Inconsistent progression sequence", "Invalid SOS parameters", "Huffman table", "Bogus ",
               "JPEG datastream contains no image", "Unsupported JPEG process", "Invalid component ID",
               "Quantization table", "Corrupt", "Premature")
#: libjpeg's warnings of odd but harmless headers ("Warning: unknown JFIF revision number 2.01", a thumbnail's size)
JPEG_NOTES = ("Warning: ", "Ignoring ", "Unknown APP", "Adobe APP14")
#: how the lines of all the decoders start: libpng's, and OpenCV's own log ('[ WARN:0@0.078] global grfmt_tiff.cpp:123
#: TIFF_Warning TIFFReadDirectory: Unknown field with tag 65000', a private TIFF tag)
DECODER_LINES = (*JPEG_DAMAGE, *JPEG_NOTES, "libpng warning", "libpng error", "[ WARN", "[ INFO", "[ERROR")


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """A list that, once the block ends, holds the decoders' lines written to descriptor 2 during it."""
    lines: list[str] = []
    with _LOCK:
        try:
            saved = os.dup(2)
        except OSError:
            yield lines
            return
        try:
            with tempfile.TemporaryFile() as tmp:
                _flush()
                os.dup2(tmp.fileno(), 2)
                try:
                    yield lines
                finally:
                    _flush()
                    os.dup2(saved, 2)
                    tmp.seek(0)
                    text = tmp.read().decode("utf-8", "replace")
                    others = []
                    for line in text.splitlines():
                        (lines if line.startswith(DECODER_LINES) else others).append(line)
                    if others:  # not the decoders': where it was going
                        os.write(2, ("\n".join(others) + "\n").encode("utf-8", "replace"))
        finally:
            os.close(saved)


def _flush() -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()
