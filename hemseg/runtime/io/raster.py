"""PNG, JPEG and TIFF reading through OpenCV, with header checks before decoding.

Conventions:

- Sizes are read from the file header (PNG ``IHDR``, JPEG ``SOFn``, TIFF IFDs) and checked against
  :mod:`hemseg.runtime.io.limits` before OpenCV decodes a single pixel; a PNG must also be able to hold the image
  its header announces (:func:`check_png_size`: at most 1032 raw bytes per file byte, the deflate limit) and
  every chunk must lie inside the file (:func:`check_png_chunks`).
- Pixels are decoded by ``cv2.IMREAD_UNCHANGED``: 8- or 16-bit, float32 for float TIFFs. A JPEG's EXIF
  Orientation is not applied (pixels as stored); a TIFF's is (OpenCV's TIFF decoder turns the page as viewers show
  it). Either way a tag that rotates or mirrors the image is warned of (:func:`orientation_tag`), for images and
  masks alike.
- Color to gray, the documented rule: palette images are expanded to their RGB(A) colors by the decoder, gray+alpha is
  reduced to its gray channel, alpha is DROPPED (not composited over any background), and RGB is reduced to ITU-R
  BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (``cv2.cvtColor``), keeping the dtype (8-bit stays 8-bit, 16-bit
  stays 16-bit).
- A multi-page TIFF gives one slice per page (all pages must have the same size and type).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from hemseg.errors import InputError
from hemseg.runtime.io.limits import check_dims
from hemseg.runtime.io.native_messages import JPEG_DAMAGE, native_stderr
from hemseg.runtime.io.once import warn_once
from hemseg.runtime.io.volume import ImageVolume

log = logging.getLogger(__name__)

_NAMES = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
_MAX_TIFF_PAGES = 100_000


def png_dims(path: Path, data: bytes) -> tuple[int, int]:
    """(height, width) from the PNG ``IHDR`` chunk."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise InputError(path, "corrupt PNG: missing or truncated IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


#: Deflate expands at most 1032:1, so a PNG's raw (filtered) image data cannot exceed its file size by more than that.
DEFLATE_MAX_RATIO = 1032
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def check_png_size(path: Path, data: bytes, height: int, width: int) -> None:
    """Refuse a PNG whose ``IHDR`` size could not come from its compressed data (a corrupt header or a bomb):
    raw bytes = rows x (1 filter byte + ceil(width x channels x bit depth / 8)) must not exceed
    :data:`DEFLATE_MAX_RATIO` x the file size. Checked before anything is allocated or decoded."""
    bits, color = data[24], data[25]
    channels = _PNG_CHANNELS.get(color)
    if channels is None or bits not in (1, 2, 4, 8, 16):
        raise InputError(path, f"corrupt PNG: unknown color type {color} / bit depth {bits} in IHDR")
    raw = height * (1 + -(-width * channels * bits // 8))
    if raw > DEFLATE_MAX_RATIO * len(data):
        raise InputError(path, f"corrupt PNG: the header says {width} x {height} px ({raw} bytes of image data), "
                               f"more than a {len(data)}-byte file can hold (deflate expands at most "
                               f"{DEFLATE_MAX_RATIO}x); not decoded")


def check_png_chunks(path: Path, data: bytes) -> None:
    """Every chunk up to ``IEND`` must lie inside the file: a corrupt chunk length would otherwise make the
    decoder allocate (and wait for) up to 2 GiB for a chunk that is not there."""
    pos, n = 8, len(data)
    while pos + 8 <= n:
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if length > 0x7FFFFFFF or pos + 12 + length > n:
            name = kind.decode("latin-1") if kind.isalpha() else repr(kind)
            raise InputError(path, f"truncated or corrupt PNG: chunk {name} at byte {pos} claims {length} bytes, "
                                   f"beyond the end of the {n}-byte file")
        if kind == b"IEND":
            return
        pos += 12 + length
    raise InputError(path, "truncated PNG: the file ends before the IEND chunk")


def png_palette(path: Path, data: bytes) -> np.ndarray | None:
    """The ``PLTE`` colors (K, 3) RGB of an indexed-color PNG (IHDR color type 3), else None."""
    if len(data) < 33 or data[25] != 3:
        return None
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"PLTE":
            body = data[pos + 8:pos + 8 + length]
            if length % 3 or len(body) != length:
                raise InputError(path, f"corrupt PNG: a PLTE chunk of {length} bytes")
            return np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    raise InputError(path, "corrupt PNG: indexed color without a PLTE chunk")


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_dims(path: Path, data: bytes) -> tuple[int, int]:
    """(height, width) from the first JPEG ``SOFn`` frame header."""
    return _jpeg_frame_header(path, data)[1:]


def jpeg_precision(path: Path, data: bytes) -> int:
    """The sample precision (bits) of the first JPEG frame header: 8 for nearly every JPEG, 12 for extended ones."""
    return _jpeg_frame_header(path, data)[0]


def _jpeg_segments(path: Path, data: bytes) -> Iterator[tuple[int, int, int]]:
    """``(marker, position, length)`` of each JPEG header segment before the first scan (or the end)."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise InputError(path, f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan
            return
        seg_len = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        yield marker, pos, seg_len
        pos += 2 + seg_len


def _jpeg_frame_header(path: Path, data: bytes) -> tuple[int, int, int]:
    """(precision, height, width) from the first JPEG ``SOFn`` frame header."""
    for marker, pos, _ in _jpeg_segments(path, data):
        if marker in _SOF_MARKERS:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return data[pos + 4], height, width
    raise InputError(path, "corrupt or truncated JPEG: no frame header (SOF) found")


#: how a viewer that applies a file's EXIF / TIFF Orientation (tag 274) shows the stored pixels
_ORIENTATIONS = {2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
                 5: "transposed (mirrored and rotated)", 6: "rotated 90 degrees clockwise",
                 7: "transversed (mirrored and rotated)", 8: "rotated 90 degrees counter-clockwise"}


def orientation_tag(path: Path, data: bytes, fmt: str) -> int | None:
    """The Orientation (TIFF tag 274) of a JPEG's EXIF block or a TIFF's first page, or None (absent, unreadable)."""
    if fmt == "tiff":
        return _first_page_value(data, 274)
    if fmt == "jpeg":
        for marker, pos, seg_len in _jpeg_segments(path, data):
            if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\0\0":
                return _first_page_value(data[pos + 10:pos + 2 + seg_len], 274)
    return None


def tiff_is_palette(data: bytes) -> bool:
    """Whether the first page of a TIFF is indexed color (PhotometricInterpretation, tag 262, = 3 "palette")."""
    return _first_page_value(data, 262) == 3


def _first_page_value(tiff: bytes, tag: int) -> int | None:
    """The value of a SHORT (or, as some writers store one, LONG) ``tag`` of a TIFF's first page, or None (absent,
    another type, or the header cut short)."""
    endian = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if endian is None or len(tiff) < 8:
        return None
    (offset,) = struct.unpack(endian + "I", tiff[4:8])
    if offset + 2 > len(tiff):
        return None
    (count,) = struct.unpack(endian + "H", tiff[offset:offset + 2])
    for i in range(count):
        entry = tiff[offset + 2 + 12 * i:offset + 14 + 12 * i]
        if len(entry) < 12:
            return None
        found, typ = struct.unpack(endian + "HH", entry[:4])
        if found == tag and typ in (3, 4):  # SHORT, as the standard says; LONG
            return int(struct.unpack(endian + ("H" if typ == 3 else "I"), entry[8:10 if typ == 3 else 12])[0])
    return None


#: TIFF Compression values (tag 259) libtiff decodes: none, CCITT (2-4), LZW, JPEG (6, 7), Deflate (8, 32946),
#: PackBits, LZMA, Zstd, WebP. Another value (0, a private or JPEG 2000 code) gave a page of zeros with exit 0.
_TIFF_COMPRESSIONS = {1, 2, 3, 4, 5, 6, 7, 8, 32773, 32946, 34925, 50000, 50001}
_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8: the types of offsets, counts and codes


def _tiff_values(data: bytes, endian: str, entry: bytes) -> list[int] | None:
    """The integer values of an IFD entry (inline, or at the offset it gives), or None for another type or values
    beyond the end of the file."""
    typ, count = struct.unpack(endian + "HI", entry[2:8])
    fmt = _TIFF_TYPES.get(typ)
    if fmt is None or count > len(data):
        return None
    size = struct.calcsize(fmt) * count
    if size <= 4:
        raw = entry[8:8 + size]
    else:
        (at,) = struct.unpack(endian + "I", entry[8:12])
        raw = data[at:at + size]
        if len(raw) < size:
            return None
    return list(struct.unpack(f"{endian}{count}{fmt}", raw))


def _check_tiff_page(path: Path, data: bytes, endian: str, entries: dict[int, bytes], page: int) -> None:
    """InputError for a page whose pixel data the decoder would replace by zeros: an unknown compression, or strips
    (tiles) that lie beyond the end of the file (a truncated copy)."""
    if 259 in entries:
        values = _tiff_values(data, endian, entries[259])
        if values and values[0] not in _TIFF_COMPRESSIONS:
            raise InputError(path, f"TIFF page {page + 1} uses compression code {values[0]}, which cannot be decoded "
                                   "here (corrupt, or a private / JPEG 2000 scheme); save it uncompressed, LZW or "
                                   "Deflate")
    for offsets_tag, counts_tag in ((273, 279), (324, 325)):
        if offsets_tag not in entries or counts_tag not in entries:
            continue
        offsets = _tiff_values(data, endian, entries[offsets_tag])
        counts = _tiff_values(data, endian, entries[counts_tag])
        if offsets is None or counts is None:
            raise InputError(path, f"corrupt TIFF: page {page + 1}'s strip or tile table lies beyond the end of "
                                   "the file (truncated?)")
        if any(o + c > len(data) for o, c in zip(offsets, counts)):
            raise InputError(path, f"truncated TIFF: page {page + 1}'s pixel data runs past the end of the file "
                                   f"({len(data)} bytes)")


def tiff_dims(path: Path, data: bytes) -> list[tuple[int, int]]:
    """(height, width) of every page, walking the TIFF IFD chain; InputError for a page whose pixel data cannot be
    there or be decoded (:func:`_check_tiff_page`)."""
    endian = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        raise InputError(path, "corrupt TIFF: truncated header")
    (offset,) = struct.unpack(endian + "I", data[4:8])
    pages: list[tuple[int, int]] = []
    seen: set[int] = set()
    type_fmt = {3: "H", 4: "I"}
    while offset:
        if offset in seen or len(pages) >= _MAX_TIFF_PAGES:
            raise InputError(path, "corrupt TIFF: the page (IFD) chain loops or is too long")
        seen.add(offset)
        if offset + 2 > len(data):
            raise InputError(path, "truncated TIFF: a page header (IFD) lies beyond the end of the file")
        (count,) = struct.unpack(endian + "H", data[offset:offset + 2])
        end = offset + 2 + 12 * count
        if end + 4 > len(data):
            raise InputError(path, "truncated TIFF: a page header (IFD) is cut off")
        width = height = None
        entries: dict[int, bytes] = {}
        for i in range(count):
            entry = data[offset + 2 + 12 * i: offset + 14 + 12 * i]
            tag, typ = struct.unpack(endian + "HH", entry[:4])
            entries[tag] = entry
            if tag in (256, 257) and typ in type_fmt:
                (value,) = struct.unpack(endian + type_fmt[typ], entry[8:8 + struct.calcsize(type_fmt[typ])])
                if tag == 256:
                    width = value
                else:
                    height = value
        if width is None or height is None:
            raise InputError(path, "corrupt TIFF: a page has no ImageWidth/ImageLength")
        _check_tiff_page(path, data, endian, entries, len(pages))
        pages.append((int(height), int(width)))
        (offset,) = struct.unpack(endian + "I", data[end:end + 4])
    if not pages:
        raise InputError(path, "corrupt TIFF: no pages")
    return pages


def decode_raster(path: Path, fmt: str) -> np.ndarray:
    """The stored pixels of a PNG/JPEG/TIFF as (N, H, W) or (N, H, W, C), after the header checks. No color rule."""
    data = path.read_bytes()
    name = _NAMES[fmt]
    if fmt == "png":
        h, w = png_dims(path, data)
        check_dims(path, h, w)
        check_png_size(path, data, h, w)
        check_png_chunks(path, data)
    elif fmt == "jpeg":
        h, w = jpeg_dims(path, data)
        check_dims(path, h, w)
        if data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) < 0:
            raise InputError(path, "truncated JPEG: no end-of-image marker")
    else:
        pages = tiff_dims(path, data)
        for h, w in pages:
            check_dims(path, h, w, len(pages))
    orientation = orientation_tag(path, data, fmt)
    if orientation in _ORIENTATIONS and fmt == "jpeg":  # OpenCV's IMREAD_UNCHANGED ignores it for a JPEG (QA,
        # stop 59: it went without a word)
        warn_once(log, path, "%s: its Orientation tag (%d) has viewers show it %s; hemseg reads a JPEG's pixels as "
                  "stored (rows and columns as in the file), so a mask drawn in a viewer that applies the tag, or a "
                  "mask hemseg writes for it shown there, will not line up", path, orientation,
                  _ORIENTATIONS[orientation])
    elif orientation in _ORIENTATIONS:  # a TIFF: OpenCV's decoder applies it
        warn_once(log, path, "%s: its Orientation tag (%d) turns it: read %s, as viewers show it (OpenCV applies "
                  "a TIFF's tag), so a mask drawn on the pixels as stored will not line up", path, orientation,
                  _ORIENTATIONS[orientation])
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        with native_stderr() as said:
            if fmt == "tiff":
                ok, decoded = cv2.imdecodemulti(buf, cv2.IMREAD_UNCHANGED)
                frames = list(decoded) if ok and decoded else []
            else:
                img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
                frames = [] if img is None else [img]
    except cv2.error as exc:  # OpenCV raises for some damaged headers instead of returning nothing
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise InputError(path, f"cannot decode the {name} data (truncated or corrupt file): "
                               f"{lines[-1] if lines else 'OpenCV error'}") from None
    _decoder_said(path, name, said, bool(frames))
    if not frames:
        if fmt == "jpeg" and jpeg_precision(path, data) != 8:  # OpenCV's libjpeg decodes 8-bit samples only
            raise InputError(path, f"a {jpeg_precision(path, data)}-bit JPEG, which cannot be decoded here (8-bit "
                                   "JPEG only); convert it to a 16-bit PNG or TIFF")
        raise InputError(path, f"cannot decode the {name} data (truncated or corrupt file)")
    first = frames[0]
    for frame in frames[1:]:
        if frame.shape != first.shape or frame.dtype != first.dtype:
            raise InputError(path, f"multi-page TIFF pages differ in size or type ({first.shape} {first.dtype} vs "
                                   f"{frame.shape} {frame.dtype}); cannot stack them into one volume")
    if first.ndim == 3 and first.shape[2] == 1:
        frames = [f[:, :, 0] for f in frames]
    return np.stack(frames, axis=0)


def _decoder_said(path: Path, name: str, said: list[str], decoded: bool) -> None:
    """What libjpeg / libpng wrote while ``path`` was decoded: corrupt JPEG data (an image decoded with garbage where
    the data is damaged) is refused naming libjpeg's words; a decode that failed names the decoder's error; libpng's
    warnings of a decoded PNG (an odd colour profile or text chunk: the pixels are intact) are logged at debug."""
    if not said:
        return
    damage = [s.strip() for s in said if s.startswith(JPEG_DAMAGE)] if name == "JPEG" else []
    if damage and decoded:
        raise InputError(path, f"corrupt JPEG data, decoded with damage (libjpeg: {damage[0]}); re-export the image")
    if not decoded:
        raise InputError(path, f"cannot decode the {name} data (truncated or corrupt file): {said[0].strip()}")
    log.debug("%s: %s", path, "; ".join(s.strip() for s in said))


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W[, C]) stored pixels -> (N, H, W) gray by the module's rule (drop alpha, then BT.601 luma)."""
    if pixels.ndim == 3:
        return pixels
    channels = pixels.shape[3]
    if channels == 2:  # gray + alpha
        return np.ascontiguousarray(pixels[..., 0])
    if channels == 3:
        code = cv2.COLOR_BGR2GRAY
    elif channels == 4:
        code = cv2.COLOR_BGRA2GRAY
    else:
        raise ValueError(f"unsupported channel count {channels}")
    return np.stack([cv2.cvtColor(np.ascontiguousarray(p), code) for p in pixels], axis=0)


def read_raster(path: Path, fmt: str) -> ImageVolume:
    """Read a PNG/JPEG/TIFF as an :class:`ImageVolume` of gray slices."""
    pixels = decode_raster(path, fmt)
    if pixels.ndim == 4 and pixels.shape[3] not in (2, 3, 4):
        raise InputError(path, f"unsupported {_NAMES[fmt]} with {pixels.shape[3]} channels")
    try:
        gray = to_gray(pixels)
    except cv2.error as exc:
        raise InputError(path, f"unsupported {_NAMES[fmt]} pixel type {pixels.dtype} with {pixels.shape[3]} "
                               f"channels: {str(exc).strip().splitlines()[-1]}") from None
    if pixels.ndim == 4:
        log.debug("%s: %d-channel %s converted to gray (alpha dropped, BT.601 luma)", path, pixels.shape[3], fmt)
    return ImageVolume(path=path, data=gray, kind=fmt, spacing=None)
