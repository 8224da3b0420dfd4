"""Format detection: by magic bytes first, by file name extension second.

The content decides when it is recognizable (a PNG named ``.dcm`` is read as a PNG, with a warning in the log); the
extension is used only for content without a reliable signature (DICOM files without the 128-byte preamble).
"""

from __future__ import annotations

import errno
import gzip
import struct
import zlib
from pathlib import Path

from hemseg.errors import InputError
from hemseg.runtime.io.regular import NOT_REGULAR, read_regular_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
BIGTIFF_MAGICS = (b"II+\x00", b"MM\x00+")
NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"

#: Extension -> format. ``.nii.gz`` is handled by :func:`format_from_name`.
EXTENSIONS = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".nii": "nifti",
    ".dcm": "dicom",
    ".dicom": "dicom",
}
NAMES = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "npy": "NumPy .npy", "nifti": "NIfTI", "dicom": "DICOM"}

_HEAD_BYTES = 552  # enough for a DICOM preamble + "DICM" and a NIfTI-1/2 header's magic


def format_from_name(path: str | Path) -> str | None:
    """The format its file name suggests (``'png'``, ..., ``'nifti'``, ``'dicom'``), or None."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return EXTENSIONS.get(Path(name).suffix)


def stem_of(path: str | Path) -> str:
    """The file name without its image extension (``a.nii.gz`` -> ``a``; ``a.png`` -> ``a``)."""
    name = Path(path).name
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")]
    if Path(name).suffix.lower() in EXTENSIONS:
        return Path(name).stem
    return name


def read_head(path: str | Path, n: int = _HEAD_BYTES) -> bytes:
    """The first ``n`` bytes of ``path``; InputError for what is not a regular file (opening a named pipe blocks
    until something writes into it: a dataset check hung on a FIFO named like a mask)."""
    try:
        return read_regular_bytes(path, n)
    except OSError as exc:
        if exc.errno == errno.EINVAL and exc.strerror == NOT_REGULAR:
            raise InputError(path, NOT_REGULAR) from None
        raise


def _is_nifti_header(head: bytes) -> bool:
    if len(head) >= 348:
        size_le, size_be = struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]
        if 348 in (size_le, size_be) and head[344:348] in (b"n+1\x00", b"ni1\x00"):
            return True
    if len(head) >= 8:
        size_le, size_be = struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]
        if 540 in (size_le, size_be) and head[4:8] in (b"n+2\x00", b"ni2\x00"):
            return True
    return False


def _gunzip_head(path: str | Path, n: int = _HEAD_BYTES) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read(n)
    except (OSError, EOFError, zlib.error):
        return b""


def sniff(path: str | Path, head: bytes | None = None) -> str | None:
    """The format the file's content shows, or None when no known signature is found.

    Returns ``'png'``, ``'jpeg'``, ``'tiff'``, ``'bigtiff'``, ``'npy'``, ``'nifti'``, ``'dicom'`` or ``'gzip'``
    (gzip data that is not a NIfTI header).
    """
    if head is None:
        head = read_head(path)
    # DICOM first: the 128-byte preamble is free-form and may itself hold another format's signature (TIFF).
    if looks_like_dicom(head):
        return "dicom"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head[:4] in TIFF_MAGICS:
        return "tiff"
    if head[:4] in BIGTIFF_MAGICS:
        return "bigtiff"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if _is_nifti_header(head):
        return "nifti"
    if head.startswith(GZIP_MAGIC):
        return "nifti" if _is_nifti_header(_gunzip_head(path)) else "gzip"
    return None


_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US "
                  b"UT UV".split())


def bare_dicom_dataset(head: bytes) -> bool:
    """Whether ``head`` starts like a DICOM data set written without the 128-byte preamble and ``DICM`` (older
    scanners and ACR-NEMA-era archives write such files, often under names like ``I.001``): a little-endian tag of
    the file meta group (0002) or the identifying group (0008), then an explicit VR, or an implicit VR's short even
    length. Such a file in a series folder was passed over without a word, and half the series was segmented."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008):
        return False
    if head[4:6] in _VRS:
        return True
    (length,) = struct.unpack("<I", head[4:8])
    return group == 0x0008 and element <= 0x0020 and length <= 256 and length % 2 == 0


def looks_like_dicom(head: bytes) -> bool:
    """``DICM`` at byte 128, or a bare data set (:func:`bare_dicom_dataset`)."""
    return head[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC or bare_dicom_dataset(head)


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` file or a file with ``DICM`` at byte 128 or that starts as a bare data set
    (:func:`looks_like_dicom`; ``DICOMDIR`` index files excluded)."""
    path = Path(path)
    if path.name.upper() == "DICOMDIR":
        return False
    if format_from_name(path) == "dicom":
        return True
    try:
        head = read_head(path, DICOM_MAGIC_OFFSET + 4)
    except (OSError, InputError):  # unreadable, or no regular file (a named pipe is not opened)
        return False
    return looks_like_dicom(head)


def torch_save_kind(head: bytes) -> str | None:
    """``'zip'`` or ``'pickle'`` when the first bytes are those of a file ``torch.save`` writes (a zip archive; a
    legacy file starts with a pickle protocol byte), else None."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    return None


def describe_content(head: bytes) -> str:
    """A few words on what unrecognized content looks like, for error messages."""
    if not head:
        return "the file is empty"
    sample = head[:256]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample)
    if printable == len(sample):
        return "the file looks like text"
    if head.startswith(GZIP_MAGIC):
        return "the file is gzip data but not a NIfTI image"
    for test, name in _OTHER_FORMATS:
        if test(head):
            return f"the file is a {name} image, a format hemseg does not read: save it as PNG or TIFF"
    return "the file starts with unrecognized binary data"


#: image formats hemseg does not read, named in the refusal instead of 'unrecognized binary data'
_OTHER_FORMATS = (
    (lambda h: h.startswith(b"BM") and len(h) >= 26 and h[14] in (12, 40, 52, 56, 64, 108, 124), "BMP"),
    (lambda h: h.startswith((b"GIF87a", b"GIF89a")), "GIF"),
    (lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP", "WebP"),
    (lambda h: h.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or h.startswith(b"\xff\x4f\xff\x51"), "JPEG 2000"),
    (lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"heic", b"heix", b"mif1", b"avif"), "HEIF / AVIF"),
)
