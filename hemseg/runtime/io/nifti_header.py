"""Checks of a single-file NIfTI header's raw bytes that nibabel does not make, or reports by another cause.

- ``dim[0]`` (the number of dimensions) outside 1..7: nibabel takes that as the mark of a byte-swapped header, reads
  it swapped and fails on some other field ("vox offset 0 too low for single file nifti1").
- Header extensions: the flag after the header (bytes 348-351 in NIfTI-1, 540-543 in NIfTI-2) says extensions
  follow, each with its size first. A voxel offset that leaves no room for them made nibabel read no extension and
  the voxels from the extension's bytes: the volume shifted by the extension's length, segmented without a word (a
  QA finding of stop 53). A first extension whose size is not a positive multiple of 16 made nibabel fail with
  "read length must be non-negative".

Only single-file headers (magic ``n+1`` / ``n+2``) are checked; anything this cannot parse is left to nibabel.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

from hemseg.errors import InputError
from hemseg.runtime.io.sniff import GZIP_MAGIC

#: (header size, offset of dim, dim's struct code, offset of vox_offset, its struct code, single-file magic)
_LAYOUTS = {1: (348, 40, "h", 108, "f", b"n+1\0"), 2: (540, 16, "q", 168, "q", b"n+2\0")}
_HEAD = 560  # every field read below lies in a NIfTI-2 header plus its first extension's size and code


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        gz = fh.read(2) == GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            return fh.read(_HEAD)
    except (OSError, EOFError, zlib.error):
        return b""  # a damaged stream: nibabel says what is wrong with it


def check_raw_header(path: Path) -> None:
    """InputError for the faults in the module docstring; nothing for a header it cannot parse."""
    head = _head(path)
    if len(head) < 8:
        return
    for version, (size, dim_at, dim_code, vox_at, vox_code, magic) in _LAYOUTS.items():
        for order in "<>":
            if struct.unpack_from(order + "i", head)[0] == size:
                break
        else:
            continue
        if len(head) < size + 4:
            return  # truncated: nibabel says so
        magic_at = 344 if version == 1 else 4
        if head[magic_at:magic_at + 4] != magic:
            return
        ndim = struct.unpack_from(order + dim_code, head, dim_at)[0]
        if not 1 <= ndim <= 7:
            raise InputError(path, f"invalid NIfTI header: dim[0] (the number of dimensions) is {ndim}, not 1 to 7")
        vox_offset = struct.unpack_from(order + vox_code, head, vox_at)[0]
        if head[size] == 0 or len(head) < size + 12:
            return  # no extensions
        first = size + 4
        esize, ecode = struct.unpack_from(order + "ii", head, first)
        plausible = esize >= 16 and esize % 16 == 0 and 0 <= ecode < 1 << 16
        if plausible and vox_offset < first + esize:
            raise InputError(path, f"invalid NIfTI header: the voxel data starts at byte {vox_offset:g} (vox_offset), "
                                   f"inside the {esize}-byte header extension that begins at byte {first}: the voxels "
                                   "would be read from the extension's bytes")
        if vox_offset <= first:
            return  # a stray extension flag and no room for extensions: none
        if esize < 16 or esize % 16:
            raise InputError(path, f"invalid NIfTI header extension at byte {first}: its size is {esize} (a "
                                   "multiple of 16, at least 16)")
        return
