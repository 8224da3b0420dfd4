"""PNG / JPEG / TIFF / NPY readers, masks, to_uint8, format sniffing and find_inputs (all files built in tmp_path)."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from hemseg.errors import InputError
from hemseg.runtime.io import (
    MAX_SIDE,
    find_inputs,
    read_image,
    read_mask,
    stem_of,
    to_uint8,
)


# ------------------------------------------------------------------------------------------------- helpers
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, color_type: int, bit_depth: int, rows: bytes | None,
            plte: bytes | None = None, trns: bytes | None = None) -> bytes:
    """A PNG from raw scanlines (filter byte 0 included by the caller), with valid CRCs."""
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    if plte is not None:
        out += _chunk(b"PLTE", plte)
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    if rows is not None:
        out += _chunk(b"IDAT", zlib.compress(rows))
    return out + _chunk(b"IEND", b"")


def write_cv2(path: Path, arr: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def ramp(h: int = 32, w: int = 40, dtype=np.uint8, top: int = 255) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % (top + 1)).astype(dtype)


def luma(b, g, r) -> np.ndarray:
    return np.rint(0.299 * r.astype(float) + 0.587 * g.astype(float) + 0.114 * b.astype(float))


def reason_of(exc_info) -> str:
    return exc_info.value.reason


# ------------------------------------------------------------------------------------------------ PNG reading
def test_png_gray_8bit(tmp_path):
    img = ramp()
    vol = read_image(write_cv2(tmp_path / "a.png", img))
    assert vol.kind == "png" and vol.data.shape == (1, 32, 40) and vol.data.dtype == np.uint8
    assert np.array_equal(vol.data[0], img)
    assert vol.spacing is None and vol.affine is None


def test_png_16bit_kept(tmp_path):
    img = ramp(dtype=np.uint16, top=4000) * 16
    vol = read_image(write_cv2(tmp_path / "a.png", img))
    assert vol.data.dtype == np.uint16 and np.array_equal(vol.data[0], img)
    u8 = to_uint8(vol.data)
    assert u8.dtype == np.uint8 and u8.min() == 0 and u8.max() == 255


def test_png_rgb_to_bt601_luma(tmp_path):
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    vol = read_image(write_cv2(tmp_path / "c.png", bgr))
    expected = luma(bgr[..., 0], bgr[..., 1], bgr[..., 2])
    assert vol.data.shape == (1, 16, 24)
    assert np.abs(vol.data[0].astype(int) - expected).max() <= 1


def test_png_rgba_alpha_dropped(tmp_path):
    rng = np.random.default_rng(1)
    bgra = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    same_color = bgra.copy()
    same_color[..., 3] = 0  # fully transparent: the rule drops alpha, so the gray value must not change
    a = read_image(write_cv2(tmp_path / "a.png", bgra)).data
    b = read_image(write_cv2(tmp_path / "b.png", same_color)).data
    assert np.array_equal(a, b)
    assert np.abs(a[0].astype(int) - luma(bgra[..., 0], bgra[..., 1], bgra[..., 2])).max() <= 1


def test_png_16bit_rgba(tmp_path):
    bgra = np.zeros((12, 12, 4), np.uint16)
    bgra[..., 2] = 60000  # red
    bgra[..., 3] = 65535
    vol = read_image(write_cv2(tmp_path / "a.png", bgra))
    assert vol.data.dtype == np.uint16
    assert abs(int(vol.data[0, 0, 0]) - round(0.299 * 60000)) <= 1


def test_png_palette_and_gray_alpha(tmp_path):
    rows = b"".join(b"\x00" + bytes([0, 1] * 5) for _ in range(10))
    pal = tmp_path / "pal.png"
    pal.write_bytes(raw_png(10, 10, 3, 8, rows, plte=bytes([255, 0, 0, 0, 0, 255]), trns=bytes([10])))
    vol = read_image(pal)
    assert vol.data.shape == (1, 10, 10)
    assert vol.data[0, 0, 0] == round(0.299 * 255)  # red entry, alpha ignored
    assert vol.data[0, 0, 1] == round(0.114 * 255)  # blue entry
    ga = tmp_path / "ga.png"
    ga.write_bytes(raw_png(10, 10, 4, 8, b"".join(b"\x00" + bytes([77, 3] * 10) for _ in range(10))))
    assert np.all(read_image(ga).data == 77)


# ----------------------------------------------------------------------------------------- JPEG, TIFF, NPY
def test_jpeg_gray_and_color(tmp_path):
    img = cv2.GaussianBlur(ramp(64, 64), (5, 5), 0)
    vol = read_image(write_cv2(tmp_path / "a.jpg", img))
    assert vol.kind == "jpeg" and vol.data.shape == (1, 64, 64)
    assert np.abs(vol.data[0].astype(int) - img).mean() < 4
    color = np.dstack([img, img, img])
    assert read_image(write_cv2(tmp_path / "c.jpeg", color)).data.shape == (1, 64, 64)


def test_decoder_messages_are_the_files_not_lines_on_stderr(tmp_path, capfd):
    """libjpeg decoded a JPEG with 200 damaged bytes into an image half garbage, said only on stderr ('Corrupt JPEG
    data: ... extraneous bytes'), and it was segmented with exit 0: refused now, naming libjpeg's words. libpng's
    lines ('libpng warning: tEXt: CRC error', 'libpng error: bad adaptive filter value') came unnamed on stderr: a
    warning of a decoded PNG goes to the debug log, an error into the file's one-line refusal."""
    image = (ramp(128, 128) // 2 + 40).astype(np.uint8)
    cv2.circle(image, (60, 70), 20, 230, -1)
    good = write_cv2(tmp_path / "good.jpg", image)
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200] = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    (tmp_path / "damaged.jpg").write_bytes(bytes(data))
    assert read_image(good).data.shape == (1, 128, 128)
    with pytest.raises(InputError, match=r"corrupt JPEG data, decoded with damage \(libjpeg: Corrupt JPEG data"):
        read_image(tmp_path / "damaged.jpg")
    rows = b"".join(b"\0" + bytes(range(16)) for _ in range(8))
    png = raw_png(16, 8, 0, 8, rows)
    text = struct.pack(">I", 7) + b"tEXtabc\0def" + b"\0\0\0\0"  # a text chunk with a wrong CRC
    (tmp_path / "text.png").write_bytes(png[:33] + text + png[33:])
    assert read_image(tmp_path / "text.png").data.shape == (1, 8, 16)
    bad_filter = b"".join(b"\x07" + bytes(16) for _ in range(8))  # filter type 7 does not exist
    (tmp_path / "filter.png").write_bytes(raw_png(16, 8, 0, 8, bad_filter))
    with pytest.raises(InputError, match="cannot decode the PNG data .*libpng error: .*filter"):
        read_image(tmp_path / "filter.png")
    # a progressive JPEG whose third scan's spectral range is damaged: 'Inconsistent progression sequence', an image
    # decoded off by up to 197 grey levels; a JFIF revision 2.01 header is harmless; so is a TIFF's private tag
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    data = bytearray(buf.tobytes())
    scans = [k for k in range(len(data) - 1) if data[k] == 0xFF and data[k + 1] == 0xDA]
    length = data[scans[2] + 2] * 256 + data[scans[2] + 3]
    data[scans[2] + 2 + length - 3:scans[2] + 2 + length - 1] = bytes([1, 5])  # Ss, Se
    (tmp_path / "progressive.jpg").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"decoded with damage \(libjpeg: Inconsistent progression sequence"):
        read_image(tmp_path / "progressive.jpg")
    data = bytearray(good.read_bytes())
    data[data.find(b"JFIF\0") + 5] = 2
    (tmp_path / "jfif2.jpg").write_bytes(bytes(data))
    assert read_image(tmp_path / "jfif2.jpg").data.shape == (1, 128, 128)
    from PIL import Image, TiffImagePlugin

    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[65000] = "private"
    Image.fromarray(image).save(tmp_path / "tags.tif", tiffinfo=tags)
    assert read_image(tmp_path / "tags.tif").data.shape == (1, 128, 128)
    err = capfd.readouterr().err
    assert "libpng" not in err and "JPEG" not in err and "JFIF" not in err and "WARN" not in err, err


@pytest.mark.parametrize("ext, name", [(".bmp", "BMP"), (".webp", "WebP"), (".jp2", "JPEG 2000"), (".gif", "GIF")])
def test_an_image_format_hemseg_does_not_read_is_named(tmp_path, ext, name):
    """A BMP, GIF, WebP or JPEG 2000 file was 'unrecognized binary data'."""
    path = tmp_path / f"x{ext}"
    if ext == ".gif":
        path.write_bytes(b"GIF89a" + bytes(64))
    else:
        ok, buf = cv2.imencode(ext, ramp())
        if not ok:
            pytest.skip(f"OpenCV here cannot write {ext}")
        path.write_bytes(buf.tobytes())
    with pytest.raises(InputError, match=f"the file is a {name} image, a format hemseg does not read: save it as PNG"):
        read_image(path)


def test_tiff_16bit_and_multipage(tmp_path):
    img = ramp(dtype=np.uint16, top=65535) * 3
    vol = read_image(write_cv2(tmp_path / "a.tif", img))
    assert vol.kind == "tiff" and vol.data.dtype == np.uint16 and np.array_equal(vol.data[0], img)
    pages = [np.full((20, 30), i * 10, np.uint8) for i in range(3)]
    ok, buf = cv2.imencodemulti(".tiff", pages)
    assert ok
    (tmp_path / "m.tiff").write_bytes(buf.tobytes())
    vol = read_image(tmp_path / "m.tiff")
    assert vol.data.shape == (3, 20, 30) and list(vol.data[:, 0, 0]) == [0, 10, 20]


def _tiff_ifd_first(pixels: np.ndarray, compression: int = 1) -> bytes:
    """An 8-bit gray TIFF with its page header (IFD) before the pixel data, as many writers lay it out."""
    h, w = pixels.shape
    n = 8
    data_at = 8 + 2 + 12 * n + 4
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, 8), (259, 3, 1, compression), (262, 3, 1, 1),
               (273, 4, 1, data_at), (278, 3, 1, h), (279, 4, 1, h * w)]
    ifd = struct.pack("<H", n) + b"".join(struct.pack("<HHI", t, typ, c) + (struct.pack("<HH", v, 0) if typ == 3
                                          else struct.pack("<I", v)) for t, typ, c, v in entries) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 8) + ifd + pixels.astype(np.uint8).tobytes()


def test_a_tiff_whose_pixels_cannot_be_there_is_refused(tmp_path):
    """A TIFF cut short after its page header, or with a compression code the decoder does not know, was read as a
    page of zeros and segmented (exit 0)."""
    img = (np.arange(40 * 48) % 251).astype(np.uint8).reshape(40, 48)
    whole = _tiff_ifd_first(img)
    (tmp_path / "ok.tif").write_bytes(whole)
    np.testing.assert_array_equal(read_image(tmp_path / "ok.tif").data[0], img)
    (tmp_path / "cut.tif").write_bytes(whole[: len(whole) - 500])
    with pytest.raises(InputError, match="truncated TIFF: page 1's pixel data runs past the end of the file"):
        read_image(tmp_path / "cut.tif")
    (tmp_path / "c99.tif").write_bytes(_tiff_ifd_first(img, compression=99))
    with pytest.raises(InputError, match="compression code 99, which cannot be decoded here"):
        read_image(tmp_path / "c99.tif")


def test_a_link_loop_or_a_dangling_link_given_as_input_says_so(tmp_path):
    """A symbolic link loop given as an input was 'no such file or directory' (inside a folder it was named)."""
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "dang.png").symlink_to(tmp_path / "nowhere.png")
    for name, reason in (("loop.png", "a symbolic link loop"), ("dang.png", "a symbolic link to nothing")):
        with pytest.raises(InputError, match=reason):
            read_image(tmp_path / name)
        with pytest.raises(InputError, match=reason):
            find_inputs([tmp_path / name])
    with pytest.raises(InputError, match="no such file or directory"):
        read_image(tmp_path / "absent.png")


def test_tiff_float32(tmp_path):
    img = np.linspace(-1, 1, 400, dtype=np.float32).reshape(20, 20)
    vol = read_image(write_cv2(tmp_path / "f.tiff", img))
    assert vol.data.dtype == np.float32 and np.allclose(vol.data[0], img)


def test_npy_2d_3d_and_refusals(tmp_path):
    np.save(tmp_path / "a.npy", ramp(16, 20, np.int16))
    vol = read_image(tmp_path / "a.npy")
    assert vol.kind == "npy" and vol.data.shape == (1, 16, 20) and vol.data.dtype == np.int16
    np.save(tmp_path / "b.npy", np.zeros((4, 16, 20), np.float16))
    vol = read_image(tmp_path / "b.npy")
    assert vol.data.shape == (4, 16, 20) and vol.data.dtype == np.float32
    np.save(tmp_path / "c.npy", np.zeros((2, 2, 16, 16)))
    with pytest.raises(InputError, match=r"expected \(H, W\) or \(N, H, W\)"):
        read_image(tmp_path / "c.npy")
    np.save(tmp_path / "d.npy", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(InputError, match="color"):
        read_image(tmp_path / "d.npy")
    np.save(tmp_path / "hw1.npy", ramp(16, 20, np.uint8)[..., None])  # channel last: one slice, was "1 x 20 px"
    vol = read_image(tmp_path / "hw1.npy")
    assert vol.data.shape == (1, 16, 20) and np.array_equal(vol.data[0], ramp(16, 20, np.uint8))
    np.save(tmp_path / "e.npy", np.array([[{"a": 1}] * 10] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="dtype"):
        read_image(tmp_path / "e.npy")
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_image(tmp_path / "t.npy")
    nan = np.zeros((16, 16), np.float32)
    nan[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(InputError, match="NaN") as exc:
        read_image(tmp_path / "nan.npy")
    assert exc.value.path == tmp_path / "nan.npy"


# --------------------------------------------------------------------------------------------- bad files
def test_missing_and_zero_byte(tmp_path):
    with pytest.raises(InputError, match="no such file") as exc:
        read_image(tmp_path / "nope.png")
    assert exc.value.path == tmp_path / "nope.png"
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.png")


def test_truncated_png(tmp_path):
    data = write_cv2(tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).read_bytes()
    (tmp_path / "bad.png").write_bytes(data[:100])
    with pytest.raises(InputError, match="truncated or corrupt") as exc:
        read_image(tmp_path / "bad.png")
    assert "\n" not in str(exc.value)


def test_truncated_jpeg(tmp_path):
    data = write_cv2(tmp_path / "good.jpg", np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).read_bytes()
    (tmp_path / "bad.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_image(tmp_path / "bad.jpg")


def test_a_12_bit_jpeg_is_named_not_called_corrupt(tmp_path):
    """A valid 12-bit JPEG (SOF1, precision 12; OpenCV decodes 8-bit only) was 'truncated or corrupt'."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    (tmp_path / "j12.jpg").write_bytes(next(generate_frames(ds.PixelData, number_of_frames=1)))
    with pytest.raises(InputError, match="a 12-bit JPEG, which cannot be decoded here"):
        read_image(tmp_path / "j12.jpg")


def test_text_with_image_extension(tmp_path):
    for name, fmt in (("notes.png", "PNG"), ("notes.jpg", "JPEG"), ("notes.tif", "TIFF"), ("notes.nii", "NIfTI")):
        (tmp_path / name).write_text("this is not an image\n" * 5)
        with pytest.raises(InputError, match=f"not a {fmt} file: the file looks like text"):
            read_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported file type"):
        read_image(tmp_path / "notes.txt")


def test_png_named_dcm_read_by_content(tmp_path, caplog):
    write_cv2(tmp_path / "x.png", ramp())
    (tmp_path / "x.png").rename(tmp_path / "x.dcm")
    with caplog.at_level(logging.WARNING):
        vol = read_image(tmp_path / "x.dcm")
    assert vol.kind == "png" and vol.data.shape == (1, 32, 40)
    assert "content is PNG" in caplog.text


def test_decompression_bomb_png_refused_before_decoding(tmp_path):
    # valid signature + IHDR (valid CRC) announcing 100000 x 100000, and a tiny IDAT: must be refused from the header
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(raw_png(100_000, 100_000, 0, 8, b"\x00" * 64))
    with pytest.raises(InputError, match="decompression bomb") as exc:
        read_image(bomb)
    assert "100000 x 100000" in exc.value.reason
    wide = tmp_path / "wide.png"
    wide.write_bytes(raw_png(MAX_SIDE + 1, 8, 0, 8, None))
    with pytest.raises(InputError, match="limit"):
        read_image(wide)


def test_decompression_bomb_jpeg_and_tiff(tmp_path):
    data = bytearray(write_cv2(tmp_path / "a.jpg", ramp(16, 16)).read_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    (tmp_path / "bomb.jpg").write_bytes(bytes(data))
    with pytest.raises(InputError, match="decompression bomb"):
        read_image(tmp_path / "bomb.jpg")
    tif = bytearray(write_cv2(tmp_path / "a.tif", ramp(16, 16)).read_bytes())
    assert tif[:2] == b"II"
    (ifd,) = struct.unpack("<I", tif[4:8])
    (count,) = struct.unpack("<H", tif[ifd:ifd + 2])
    for i in range(count):
        off = ifd + 2 + 12 * i
        tag, typ = struct.unpack("<HH", tif[off:off + 4])
        if tag in (256, 257):
            fmt = "<H" if typ == 3 else "<I"
            tif[off + 8:off + 8 + struct.calcsize(fmt)] = struct.pack(fmt, 50000)
    (tmp_path / "bomb.tif").write_bytes(bytes(tif))
    with pytest.raises(InputError, match="decompression bomb"):
        read_image(tmp_path / "bomb.tif")


def test_tiny_image_refused(tmp_path):
    with pytest.raises(InputError, match="too small: 1 x 1"):
        read_image(write_cv2(tmp_path / "one.png", np.zeros((1, 1), np.uint8)))
    with pytest.raises(InputError, match="too small"):
        read_image(write_cv2(tmp_path / "thin.png", np.zeros((7, 100), np.uint8)))
    assert read_image(write_cv2(tmp_path / "ok.png", np.zeros((8, 8), np.uint8))).data.shape == (1, 8, 8)


# --------------------------------------------------------------------------------------------------- masks
def test_mask_png_binary_and_labels(tmp_path):
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 2:5] = 255
    m[10:12, 10:12] = 2
    path = write_cv2(tmp_path / "m.png", m)
    mask = read_mask(path)
    assert mask.dtype == np.uint8 and mask.shape == (1, 16, 16) and set(np.unique(mask)) == {0, 1}
    assert mask.sum() == 9 + 4
    assert read_mask(path, labels=[2]).sum() == 4
    assert read_mask(path, labels=[2, 255]).sum() == 13
    assert read_mask(path, labels=[7]).sum() == 0
    assert read_mask(path, labels=()).sum() == 13  # empty labels = nonzero


def test_mask_color_png(tmp_path):
    m = np.zeros((16, 16, 3), np.uint8)
    m[1:3, 1:3, 2] = 255  # red annotation
    path = write_cv2(tmp_path / "m.png", m)
    assert read_mask(path).sum() == 4
    with pytest.raises(InputError, match="gray"):
        read_mask(path, labels=[1])
    gray3 = np.dstack([m[..., 2]] * 3)
    assert read_mask(write_cv2(tmp_path / "g.png", gray3), labels=[255]).sum() == 4


def test_mask_indexed_png_is_read_by_palette_index(tmp_path):
    """An indexed-color mask (VOC, CVAT, labelme) stores label indices; index 0 is the background whatever its color.
    Read by color, a white index 0 made every pixel a lesion and two classes merged."""
    idx = np.zeros((10, 10), np.uint8)
    idx[2:5, 2:5] = 1
    idx[7, 7:9] = 2
    rows = b"".join(b"\x00" + bytes(r) for r in idx)
    white_bg = tmp_path / "white.png"  # 0 white, 1 red, 2 green
    white_bg.write_bytes(raw_png(10, 10, 3, 8, rows, plte=bytes([255, 255, 255, 255, 0, 0, 0, 128, 0])))
    assert read_mask(white_bg).sum() == 11
    assert read_mask(white_bg, labels=[1]).sum() == 9 and read_mask(white_bg, labels=[2]).sum() == 2
    with_alpha = tmp_path / "alpha.png"
    with_alpha.write_bytes(raw_png(10, 10, 3, 8, rows, plte=bytes([255, 255, 255, 255, 0, 0, 0, 128, 0]),
                                   trns=bytes([0, 255, 255])))
    assert read_mask(with_alpha, labels=[1]).sum() == 9
    grays = tmp_path / "grays.png"  # a palette of grays, index 0 not black
    grays.write_bytes(raw_png(10, 10, 3, 8, rows, plte=bytes([200, 200, 200, 0, 0, 0, 90, 90, 90])))
    assert read_mask(grays).sum() == 11
    repeated = tmp_path / "repeated.png"  # indices 1 and 2 share a color: the stored indices still tell them apart
    repeated.write_bytes(raw_png(10, 10, 3, 8, rows, plte=bytes([0, 0, 0, 255, 0, 0, 255, 0, 0])))
    assert read_mask(repeated, labels=[2]).sum() == 2 and read_mask(repeated, labels=[1]).sum() == 9
    assert read_image(white_bg).data[0, 0, 0] == 255  # as an image it is still the colors' luma


def _filtered(idx: np.ndarray, bits: int, kinds) -> bytes:
    """Scanlines of ``idx`` packed at ``bits`` per pixel, row r filtered with ``kinds[r % len(kinds)]`` (PNG spec 9)."""
    per = 8 // bits
    padded = np.zeros((idx.shape[0], -(-idx.shape[1] // per) * per), np.int64)
    padded[:, :idx.shape[1]] = idx
    packed = (padded.reshape(idx.shape[0], -1, per) << ((8 - bits) - bits * np.arange(per))).sum(-1)
    out, prev = b"", [0] * packed.shape[1]
    for r, line in enumerate(packed.tolist()):
        kind = kinds[r % len(kinds)]
        enc = []
        for i, x in enumerate(line):
            a, b, c = (line[i - 1] if i else 0), prev[i], (prev[i - 1] if i else 0)
            p = a + b - c
            paeth = a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else b if abs(p - b) <= abs(p - c) else c
            enc.append((x - (0, a, b, (a + b) // 2, paeth)[kind]) % 256)
        out += bytes([kind] + enc)
        prev = line
    return out


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_indexed_png_indices_are_read_from_the_file_with_every_filter(tmp_path, bits):
    """OpenCV gives colors; the stored indices are decoded here, whatever filter and bit depth the writer chose."""
    rng = np.random.default_rng(bits)
    idx = rng.integers(0, 1 << bits, (9, 13)).astype(np.uint8)
    plte = bytes(rng.permutation(256 * 3).astype(np.uint8)[:3 * (1 << bits)]) if bits < 8 else bytes(range(256)) * 3
    path = tmp_path / f"m{bits}.png"
    path.write_bytes(raw_png(13, 9, 3, bits, _filtered(idx, bits, [0, 1, 2, 3, 4]), plte=plte))
    from hemseg.runtime.io.png_indexed import png_indices

    assert np.array_equal(png_indices(path, path.read_bytes()), idx)


@pytest.mark.parametrize("bits, size", [(8, (64, 64)), (1, (13, 9)), (4, (5, 3)), (2, (1, 1))])
def test_interlaced_indexed_png_indices_are_put_back_in_place(tmp_path, bits, size):
    """Adam7 files kept the color route, so a short palette still erased the lesions; small images have empty
    passes, which hold no rows at all."""
    import struct as st

    w, h = size
    rng = np.random.default_rng(w)
    idx = rng.integers(0, 1 << bits, (h, w)).astype(np.uint8)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    data = b"".join(_filtered(idx[y0::dy, x0::dx], bits, [1, 4, 3]) for x0, y0, dx, dy in passes
                    if idx[y0::dy, x0::dx].size)
    png = bytearray(raw_png(w, h, 3, bits, data, plte=bytes([0, 0, 0])))  # a one-entry palette
    png[28] = 1  # IHDR interlace method: Adam7
    png[29:33] = st.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    path = tmp_path / "il.png"
    path.write_bytes(bytes(png))
    from hemseg.runtime.io.png_indexed import png_indices

    assert np.array_equal(png_indices(path, path.read_bytes()), idx)
    if min(size) >= 8:  # the readers' minimum size
        assert np.array_equal(read_mask(path)[0], (idx > 0).astype(np.uint8))  # any nonzero label is lesion


def test_a_palette_tiff_mask_is_refused_not_read_as_colors(tmp_path):
    """Pillow's fromarray(mask, 'P').save('m.tif') stores an all-black colormap: read by color, every lesion was
    background."""
    pil = pytest.importorskip("PIL.Image")
    idx = np.zeros((16, 16), np.uint8)
    idx[4:8, 4:8] = 1
    pil.fromarray(idx, "P").save(tmp_path / "m.tif")
    with pytest.raises(InputError, match="indexed-color \\(palette\\) TIFF mask"):
        read_mask(tmp_path / "m.tif")
    pil.fromarray(idx * 255, "L").save(tmp_path / "g.tif")  # a gray TIFF mask is read as before
    assert read_mask(tmp_path / "g.tif").sum() == 16


def test_indexed_png_with_an_index_beyond_a_short_palette_keeps_its_lesion(tmp_path):
    """Pillow's Image.fromarray(mask01, 'P') stores one palette entry and indices 0/1: index 1 decoded as black,
    index 0's color, so every lesion pixel was read as background."""
    idx = np.zeros((8, 8), np.uint8)
    idx[2:6, 3:5] = 1
    path = tmp_path / "short.png"
    path.write_bytes(raw_png(8, 8, 3, 8, b"".join(b"\x00" + bytes(r) for r in idx), plte=bytes([0, 0, 0])))
    assert read_mask(path).sum() == 8
    pil = pytest.importorskip("PIL.Image")
    pil.fromarray(idx, "P").save(tmp_path / "pillow.png")
    assert np.array_equal(read_mask(tmp_path / "pillow.png")[0], idx)


def test_mask_npy_and_missing(tmp_path):
    np.save(tmp_path / "m.npy", np.array([[0, 1, 2] * 4] * 10))
    assert read_mask(tmp_path / "m.npy").sum() == 80
    assert read_mask(tmp_path / "m.npy", labels=[1]).sum() == 40
    with pytest.raises(InputError, match="no such file"):
        read_mask(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------------------ to_uint8
def test_to_uint8_rules():
    u8 = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert to_uint8(u8) is u8
    assert not to_uint8(np.full((2, 8, 8), 1234.5)).any()  # constant -> zeros
    vals = np.linspace(0, 1000, 10000).reshape(1, 100, 100)
    out = to_uint8(vals)
    assert out.shape == vals.shape and out.min() == 0 and out.max() == 255
    lo, hi = np.percentile(vals, [0.5, 99.5])
    mid = (lo + hi) / 2
    idx = np.argmin(np.abs(vals - mid))
    assert abs(int(out.flat[idx]) - 128) <= 1
    spiky = np.zeros((64, 64), np.int16)
    spiky[0, 0] = 30000  # one hot pixel: percentiles clip it
    spiky[1:33, :] = 100
    out = to_uint8(spiky)
    assert out[0, 0] == 255 and out[5, 5] == 255 and out[40, 40] == 0
    sparse = np.zeros((100, 100), np.float32)
    sparse[0, :3] = 7.0  # < 0.5 % foreground: percentiles coincide, the min..max range is used
    assert to_uint8(sparse)[0, 0] == 255 and to_uint8(sparse).sum() == 3 * 255
    # whole volume: slices share one mapping
    vol = np.stack([np.full((8, 8), 10.0), np.full((8, 8), 20.0)])
    out = to_uint8(vol)
    assert out[0].max() == 0 and out[1].min() == 255


def test_to_uint8_nan_inf_refused_naming_file():
    bad = np.ones((8, 8), np.float32)
    bad[0, 0] = np.inf
    with pytest.raises(InputError, match="NaN/Inf") as exc:
        to_uint8(bad, path="scan.nii.gz")
    assert str(exc.value).startswith("scan.nii.gz:")


# ----------------------------------------------------------------------------------------- stems, inputs
def test_stem_of():
    assert stem_of("a/b.nii.gz") == "b" and stem_of("x.PNG") == "x" and stem_of("1.2.3") == "1.2.3"


def _dicom_like(path: Path) -> Path:
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    return path


def test_find_inputs(tmp_path):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for name in ("b.png", "a.png", "c.nii.gz", ".hidden.png", "notes.txt"):
        (pngs / name).write_bytes(b"x")
    (pngs / "sub").mkdir()
    assert find_inputs([pngs]) == [pngs / "a.png", pngs / "b.png", pngs / "c.nii.gz"]
    series = tmp_path / "series"
    series.mkdir()
    _dicom_like(series / "IM0001")
    _dicom_like(series / "IM0002")
    (series / "x.dcm").write_bytes(b"x")
    (series / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    (series / "readme.txt").write_text("not an image")
    single = tmp_path / "one.jpg"
    single.write_bytes(b"x")
    assert find_inputs([series, single, series]) == [series, single]  # a series is one input; repeats dropped
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _dicom_like(mixed / "IM1")
    (mixed / "a.png").write_bytes(b"x")
    assert find_inputs([mixed]) == [mixed / "IM1", mixed / "a.png"]


def test_find_inputs_names_the_folder_entries_it_cannot_read(tmp_path, caplog):
    """A dangling link, a link loop and a pipe in an input folder were dropped without a word (data check lists
    them as errors)."""
    import os

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    os.symlink(tmp_path / "nothing.png", folder / "b.png")
    os.symlink(folder / "c2.png", folder / "c1.png")
    os.symlink(folder / "c1.png", folder / "c2.png")
    os.mkfifo(folder / "d.png")
    with caplog.at_level(logging.WARNING, logger="hemseg.runtime.io.images"):
        assert find_inputs([folder]) == [folder / "a.png"]
    assert "skipped 4 entries that are neither a regular file nor a folder (e.g. b.png: a symbolic link to " \
           "nothing)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hemseg.runtime.io.images"):
        find_inputs([folder / "a.png"])
    assert "skipped" not in caplog.text


def test_find_inputs_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        find_inputs([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no images found") as exc:
        find_inputs([empty])
    assert exc.value.path == empty
    (empty / "nested").mkdir()
    with pytest.raises(InputError, match="sub-folders are searched for DICOM series only"):
        find_inputs([empty])
    (empty / "DICOMDIR").write_bytes(b"\0" * 132)  # a CD / DVD export: DICOMDIR + DICOM/P/S/SER/...
    with pytest.raises(InputError, match="this is a DICOM export .*hemseg data sort-dicom"):
        find_inputs([empty])


def test_read_image_on_folder_without_dicom(tmp_path):
    write_cv2(tmp_path / "a.png", ramp())
    with pytest.raises(InputError, match="no DICOM files"):
        read_image(tmp_path)


def test_a_npy_volume_saved_slices_last_is_named_as_such(tmp_path):
    """An (H, W, N) volume read as H slices of W x N strips, with no word (96 x 120 x 16: 96 slices of 120 x 16 px);
    with 5 slices the error said 'too small: 5 x 159 px', hiding the cause."""
    from hemseg.runtime.io import read_image

    np.save(tmp_path / "hwn.npy", np.zeros((96, 120, 16), np.uint8))
    vol = read_image(tmp_path / "hwn.npy")
    assert vol.data.shape == (96, 120, 16)  # still read as documented, (N, H, W)
    assert len(vol.geometry_warnings) == 1 and "np.moveaxis(a, -1, 0)" in vol.geometry_warnings[0]
    np.save(tmp_path / "hwn5.npy", np.zeros((142, 159, 5), np.uint8))
    with pytest.raises(InputError, match=r"too small: 5 x 159 px.*reads as 142 slices of 159 x 5 px"):
        read_image(tmp_path / "hwn5.npy")
    np.save(tmp_path / "nhw.npy", np.zeros((16, 96, 120), np.uint8))
    assert read_image(tmp_path / "nhw.npy").geometry_warnings == ()


def _with_exif_orientation(jpeg: bytes, value: int) -> bytes:
    """``jpeg`` with an APP1 EXIF block holding Orientation ``value`` right after SOI (big-endian TIFF header)."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 274, 3, 1, value, 0) + struct.pack(">I", 0)
    payload = b"Exif\0\0" + b"MM\0*" + struct.pack(">I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.mark.parametrize("value, said", [(6, "rotated 90 degrees clockwise"), (3, "rotated 180 degrees"),
                                         (1, None)])
def test_an_orientation_tag_that_turns_the_image_in_a_viewer_is_warned_of(tmp_path, caplog, value, said):
    """A JPEG whose EXIF Orientation has viewers rotate it was read as stored without a word: its mask did not line
    up with what the user saw, and a mask drawn in a viewer that applies the tag (labelme does) was paired with
    the unrotated pixels (QA, stop 59). The pixels stay as stored (images and masks alike); the tag is warned of."""
    from hemseg.runtime.io.raster import orientation_tag

    img = ramp(24, 40)
    ok, enc = cv2.imencode(".jpg", img)
    path = tmp_path / f"o{value}.jpg"
    path.write_bytes(_with_exif_orientation(enc.tobytes(), value))
    assert orientation_tag(path, path.read_bytes(), "jpeg") == value
    with caplog.at_level(logging.WARNING):
        vol = read_image(path)
    assert vol.data.shape == (1, 24, 40)  # as stored
    if said is None:
        assert "Orientation" not in caplog.text
    else:
        assert f"its Orientation tag ({value}) has viewers show it {said}" in caplog.text
    PIL = pytest.importorskip("PIL.Image")
    tif = tmp_path / f"o{value}.tif"
    PIL.fromarray(img).save(tif, tiffinfo={274: value})
    assert orientation_tag(tif, tif.read_bytes(), "tiff") == value
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        vol = read_image(tif)
    # OpenCV turns a TIFF by its tag (QA, stop 59: the warning said "as stored" where it was turned)
    assert vol.data.shape == ((1, 40, 24) if value == 6 else (1, 24, 40))
    if said is None:
        assert "Orientation" not in caplog.text
    else:
        assert f"its Orientation tag ({value}) turns it: read {said}, as viewers show it" in caplog.text
    long_tag = bytearray(path.read_bytes())  # the tag stored as LONG, as some writers do: read all the same
    at = long_tag.index(struct.pack(">HHIHH", 274, 3, 1, value, 0))
    long_tag[at:at + 12] = struct.pack(">HHII", 274, 4, 1, value)
    assert orientation_tag(path, bytes(long_tag), "jpeg") == value


def test_the_orientation_of_files_without_one_is_none(tmp_path):
    from hemseg.runtime.io.raster import orientation_tag

    ok, enc = cv2.imencode(".jpg", ramp())
    assert orientation_tag(tmp_path / "x.jpg", enc.tobytes(), "jpeg") is None
    ok, enc = cv2.imencode(".tif", ramp())
    assert orientation_tag(tmp_path / "x.tif", enc.tobytes(), "tiff") is None
    ok, enc = cv2.imencode(".jpg", ramp())
    cut = _with_exif_orientation(enc.tobytes(), 6)[:24]  # the EXIF block cut short: none read, no error
    assert orientation_tag(tmp_path / "x.jpg", cut, "jpeg") is None
