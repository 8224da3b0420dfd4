"""Fuzzed readers: mutated PNG, JPEG, TIFF, NPY, NIfTI and DICOM files either read or raise hemseg's one-line
InputError naming the file: no other exception, no hang, no memory blow-up.

- ``test_mutated_files_read_or_raise_one_line_input_error``: hypothesis draws a seed file from the corpus
  (tests/fuzz_harness.py) and byte-level mutations (bit flips, interesting integers, truncation, insertion,
  deletion, duplication; most of them inside the first KiB, where headers are); a worker process reads the result
  under an address-space cap (2 GiB above its imports) with a per-input timeout (10 s). CI runs
  ``HEMSEG_FUZZ_EXAMPLES`` cases (default 1200, derandomized so a failure reproduces); ``HEMSEG_FUZZ_RANDOM=1``
  draws fresh ones. Longer campaigns: ``python tests/fuzz_harness.py --minutes 15`` (README has the figures).
- The other tests replay, in-process, one file for each reader bug the fuzzer found (all fixed).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

hypothesis = pytest.importorskip("hypothesis")

from fuzz_harness import (  # noqa: E402
    INTERESTING_BYTES,
    INTERESTING_INTS,
    ReaderWorker,
    build_corpus,
    failure_of,
    write_case,
)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hemseg.errors import InputError  # noqa: E402
from hemseg.runtime.io import read_image, read_mask  # noqa: E402

EXAMPLES = int(os.environ.get("HEMSEG_FUZZ_EXAMPLES", "1200"))
RANDOM = os.environ.get("HEMSEG_FUZZ_RANDOM") == "1"
MR_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def worker():
    w = ReaderWorker(mem_mb=2048, timeout=10.0)
    w.start()
    yield w
    w.close()


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("case")


_pos = st.integers(0, 1 << 20)
_op = st.one_of(
    st.tuples(st.just("flip"), _pos, st.integers(0, 7)),
    st.tuples(st.just("byte"), _pos, st.one_of(st.sampled_from(INTERESTING_BYTES), st.integers(0, 255))),
    st.tuples(st.just("int"), _pos, st.sampled_from((1, 2, 4)),
              st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(0, 2**32 - 1)), st.booleans()),
    st.tuples(st.just("truncate"), _pos),
    st.tuples(st.just("insert"), _pos, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), _pos, st.integers(1, 256)),
    st.tuples(st.just("dup"), _pos, st.integers(1, 512), _pos),
)
_ops = st.lists(st.one_of(_op, _op.map(lambda op: ("head", op)), _op.map(lambda op: ("head", op))),
                min_size=1, max_size=8)


def test_every_seed_reads_unmutated(corpus, worker):
    assert len(corpus) >= 20
    for seed in corpus:
        result = worker.read(seed.path, seed.mask)
        assert result["kind"] == "ok", (seed.name, result)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data(), ops=_ops)
def test_mutated_files_read_or_raise_one_line_input_error(corpus, worker, case_dir, data, ops):
    seed = data.draw(st.sampled_from(corpus), label="seed")
    path, as_mask = write_case(seed, ops, case_dir)
    result = worker.read(path, as_mask)
    problem = failure_of(result, path)
    assert problem is None, f"{seed.name} with {ops!r}: {problem}\n{result.get('trace', '')}"


def test_the_harness_reports_crashes_hangs_and_other_exceptions(tmp_path):
    """failure_of itself: anything but an image or a one-line InputError naming the file is a failure."""
    path = tmp_path / "x.png"
    assert failure_of({"kind": "ok"}, path) is None
    assert failure_of({"kind": "input_error", "messages": [f"{path}: bad"]}, path) is None
    assert failure_of({"kind": "input_error", "messages": [f"{path}: bad\nline two"]}, path).startswith("multiline")
    assert failure_of({"kind": "input_error", "messages": ["elsewhere: bad"]}, path).startswith("unnamed")
    for kind in ("other", "memory", "crash", "hang"):
        assert failure_of({"kind": kind}, path).startswith(kind)


# -- replays of what the fuzzer found ------------------------------------------------------------------------------
def _one_line_error(path, reader=read_image, fragment: str = "") -> str:
    with pytest.raises(InputError) as exc:
        reader(path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(path)) and fragment in message, message
    return message


def _npy_bytes(arr: np.ndarray, version=(1, 0)) -> bytearray:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version)
    return bytearray(buf.getvalue())


def test_npy_header_length_beyond_the_file(tmp_path):
    data = _npy_bytes(np.zeros((16, 16), np.uint8), version=(2, 0))
    data[8:12] = struct.pack("<I", 0xFFFFFFF0)  # numpy would try to read 4 GiB of header
    (tmp_path / "a.npy").write_bytes(data)
    _one_line_error(tmp_path / "a.npy", fragment="header is longer than the file")


def test_npy_header_that_does_not_tokenize(tmp_path):
    data = _npy_bytes(np.zeros((16, 16), np.uint8))
    text = bytes(data[10:]).split(b"\n")[0]
    broken = text.replace(b"(16, 16)", b"(16, 16 ").replace(b"}", b" ")
    data[10:10 + len(broken)] = broken
    (tmp_path / "b.npy").write_bytes(data)
    _one_line_error(tmp_path / "b.npy", fragment="corrupt .npy header")
    _one_line_error(tmp_path / "b.npy", reader=read_mask)


def test_npy_shape_larger_than_the_data(tmp_path):
    data = _npy_bytes(np.zeros((16, 16), np.float64))
    text = bytes(data[10:]).split(b"\n")[0]
    grown = text.replace(b"(16, 16)", b"(9999, 9999)")
    header = grown.ljust(len(text) + 2)[: len(text)] if len(grown) > len(text) else grown.ljust(len(text))
    data[10:10 + len(text)] = header
    (tmp_path / "c.npy").write_bytes(data)
    _one_line_error(tmp_path / "c.npy", fragment="header announces")


def _dicom_bytes(**changes) -> bytearray:
    ds = pydicom.dcmread(MR_SMALL)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return bytearray(buf.getvalue())


def test_dicom_transfer_syntax_uid_mangled(tmp_path):
    data = _dicom_bytes()
    ts = b"1.2.840.10008.1.2.1"
    i = data.index(ts)
    data[i:i + len(ts)] = b"1.2.840.10008.7.2.1"  # not a transfer syntax
    (tmp_path / "ts.dcm").write_bytes(data)
    _one_line_error(tmp_path / "ts.dcm")


def test_dicom_pixel_spacing_that_is_not_a_number(tmp_path):
    data = _dicom_bytes()
    i = data.index(b"0.3125\\0.3125")
    data[i:i + 6] = b"0\x838000"[:6]
    (tmp_path / "ds.dcm").write_bytes(data)
    _one_line_error(tmp_path / "ds.dcm", fragment="PixelSpacing")


def test_dicom_unknown_value_representation(tmp_path):
    data = _dicom_bytes()
    i = data.index(b"\x08\x00\x16\x00UI")  # (0008,0016) SOP Class UID, explicit VR
    data[i + 4:i + 6] = b"Ud"
    (tmp_path / "vr.dcm").write_bytes(data)
    _one_line_error(tmp_path / "vr.dcm", fragment="cannot parse")


def test_dicom_non_image_with_control_characters_in_its_header(tmp_path):
    data = _dicom_bytes(PixelData=None)
    i = data.index(b"\x08\x00\x60\x00CS\x02\x00MR")  # (0008,0060) Modality
    data[i + 8:i + 10] = b"\n\x01"
    (tmp_path / "np.dcm").write_bytes(data)
    message = _one_line_error(tmp_path / "np.dcm", fragment="no pixel data")
    assert all(" " <= c <= "~" for c in message.split(": ", 1)[1])


def test_nifti_nan_voxel_size(tmp_path):
    img = nib.Nifti1Image(np.ones((16, 16, 3), np.int16), None)
    img.header["pixdim"][1] = np.nan
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    nib.save(img, tmp_path / "nan.nii")
    _one_line_error(tmp_path / "nan.nii", fragment="NaN or Inf")
    _one_line_error(tmp_path / "nan.nii", reader=read_mask)


def test_nifti_shorter_than_its_header_says(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((32, 32, 8), np.float32), np.eye(4)), tmp_path / "v.nii")
    data = (tmp_path / "v.nii").read_bytes()
    (tmp_path / "v.nii").write_bytes(data[: len(data) - 100])
    _one_line_error(tmp_path / "v.nii", fragment="truncated NIfTI")


def _png_bytes() -> bytearray:
    import cv2

    ok, buf = cv2.imencode(".png", np.full((40, 48, 4), 90, np.uint8))
    assert ok
    return bytearray(buf.tobytes())


def test_png_chunk_length_beyond_the_file(tmp_path):
    data = _png_bytes()
    data[33:37] = struct.pack(">I", 0x58000150)  # IDAT length: OpenCV allocated 1.4 GiB and waited seconds
    (tmp_path / "l.png").write_bytes(data)
    _one_line_error(tmp_path / "l.png", fragment="beyond the end")


def test_png_header_size_the_file_cannot_hold(tmp_path):
    data = _png_bytes()
    data[16:24] = struct.pack(">II", 9000, 11000)  # within the size limits, impossible for a ~100-byte file
    (tmp_path / "s.png").write_bytes(data)
    _one_line_error(tmp_path / "s.png", fragment="can hold")


def test_tiff_without_photometric_interpretation(tmp_path):
    import cv2

    path = tmp_path / "p.tif"
    assert cv2.imwrite(str(path), np.full((16, 16), 7, np.uint16))
    data = bytearray(path.read_bytes())
    endian = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(endian + "I", data[4:8])
    (count,) = struct.unpack(endian + "H", data[offset:offset + 2])
    for k in range(count):
        entry = offset + 2 + 12 * k
        if struct.unpack(endian + "H", data[entry:entry + 2])[0] == 262:  # PhotometricInterpretation
            data[entry:entry + 2] = struct.pack(endian + "H", 0)
    path.write_bytes(data)
    try:
        vol = read_image(path)
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
    else:
        assert vol.data.shape[1:] == (16, 16)  # a decoder that copes is fine too
