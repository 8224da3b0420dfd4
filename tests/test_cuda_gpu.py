"""GPU parity of the CUDA preprocessing against OpenCV (``pytest -m gpu tests/test_cuda_gpu.py``).

Skipped without CuPy or without a CUDA device. Checks, per stage and for the whole chain:
resize / CLAHE / normalize within 1 gray level of OpenCV, NLM / bilateral mean abs diff <= 0.5, the kernels bit
for bit equal to the numpy mirror (``hemseg.runtime.cuda.reference``), and the normalized (N, 3, S, S) tensor
against ``hemseg.runtime.preprocess.preprocess_batch`` (what the CPU backends feed the network), on synthetic and
phantom slices and on real MR slices: pydicom's ``MR_small.dcm`` when pydicom is installed, and the volumes in
``$HEMSEG_REAL_DATA`` or ``../shared/data/spine-generic-sub-unf01`` when present.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from hemseg.runtime.cuda import reference as R
from hemseg.runtime.preprocess import PreprocessSpec, filter_uint8, preprocess_batch

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")


def _has_device() -> bool:
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


if not _has_device():
    pytest.skip("no CUDA device", allow_module_level=True)

from hemseg.runtime.cuda.gpu_preprocess import GpuPreprocessor  # noqa: E402


def synth(h: int, w: int, seed: int, noise: float = 12.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 40.0 + 120.0 * (x / max(w - 1, 1)) + 40.0 * np.sin(y / max(h, 1) * 6.0 + seed)
    cv2.circle(img, (w // 3, h // 2), max(2, min(h, w) // 6), 225.0, -1)
    cv2.rectangle(img, (w // 2, h // 5), (w * 3 // 4, h // 2), 25.0, -1)
    img += rng.normal(0.0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def images() -> list[np.ndarray]:
    out = [synth(512, 512, 1), synth(300, 200, 2, noise=20.0), synth(256, 256, 3), synth(123, 457, 4),
           synth(512, 512, 5, noise=30.0)]
    try:
        from hemseg.phantom.case import render_case

        for k, cat in enumerate(("sagittal_t2", "sagittal_stir", "axial_t1_thoracolumbar")):
            out.append(render_case(cat, 40 + k)[0])
    except ImportError:
        pass
    return out


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "spine-generic-sub-unf01"
REAL_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".png", ".npy")


def real_slices(per_volume: int = 6) -> tuple[list[np.ndarray], list[str]]:
    """Real MR slices as the runtime sees them (uint8 by its intensity rule) and where they came from."""
    from hemseg.runtime.io.images import read_image
    from hemseg.runtime.io.intensity import to_uint8

    files: list[Path] = []
    try:
        from pydicom.data import get_testdata_file

        files.append(Path(get_testdata_file("MR_small.dcm")))
    except Exception:   # pydicom missing, or its test files not installed
        pass
    for folder in (os.environ.get("HEMSEG_REAL_DATA"), SHARED):
        if folder and Path(folder).is_dir():
            files += sorted(p for p in Path(folder).iterdir()
                            if p.name.endswith(REAL_SUFFIXES) and "seg" not in p.name and "mask" not in p.name)
    out, names = [], []
    for f in files:
        data = to_uint8(read_image(f).data, f)
        for k in np.unique(np.linspace(0, data.shape[0] - 1, min(per_volume, data.shape[0])).astype(int)):
            out.append(np.ascontiguousarray(data[k]))
            names.append(f"{f.name}[{k}]")
    return out, names


def _mad(a, b) -> float:
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


def _maxdiff(a, b) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def _gpu_u8(spec: PreprocessSpec, imgs) -> np.ndarray:
    return cp.asnumpy(GpuPreprocessor(spec).filter_uint8_batch(imgs))


def test_resize_matches_cv2():
    imgs = images()
    for size in (256, 64, 200):
        got = _gpu_u8(PreprocessSpec(size=size).without(["all"]), imgs)
        for g, img in zip(got, imgs):
            cv = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
            assert _maxdiff(g, cv) <= 1
            assert np.array_equal(g, R.resize_u8(img, size, size))


def test_clahe_matches_cv2():
    imgs = images()
    for clip, tiles in ((2.0, 8), (3.0, 6)):
        spec = PreprocessSpec(size=256, clahe_clip=clip, clahe_tiles=tiles, nlm=False, bilateral=False)
        got = _gpu_u8(spec, imgs)
        for g, img in zip(got, imgs):
            assert _maxdiff(g, filter_uint8(img, spec)) <= 1
            assert np.array_equal(g, R.filter_uint8(img, spec))


def test_nlm_matches_cv2():
    imgs = images()[:4]
    spec = PreprocessSpec(size=256, clahe=False, bilateral=False)
    got = _gpu_u8(spec, imgs)
    for g, img in zip(got, imgs):
        assert _mad(g, filter_uint8(img, spec)) <= 0.5
    small = PreprocessSpec(size=96, clahe=False, bilateral=False, nlm_h=7.0, nlm_template=5, nlm_search=15)
    for g, img in zip(_gpu_u8(small, imgs), imgs):
        assert np.array_equal(g, R.filter_uint8(img, small))


def test_bilateral_matches_cv2():
    imgs = images()
    spec = PreprocessSpec(size=256, clahe=False, nlm=False)
    got = _gpu_u8(spec, imgs)
    for g, img in zip(got, imgs):
        assert _mad(g, filter_uint8(img, spec)) <= 0.5
        assert np.array_equal(g, R.filter_uint8(img, spec))


def _check_chain(imgs, dtype):
    spec = PreprocessSpec()
    pre = GpuPreprocessor(spec)
    x = pre.run(imgs, dtype=dtype)
    assert isinstance(x, cp.ndarray) and x.dtype == dtype and x.shape == (len(imgs), 3, 256, 256)
    cpu = preprocess_batch(imgs, spec)
    gpu = cp.asnumpy(x).astype(np.float32)
    one_level = 1.0 / 255.0 / spec.std
    tol = one_level if dtype == np.float32 else one_level + 2e-3      # + float16 rounding of values in [-1, 1]
    diff = np.abs(gpu - cpu)
    assert float(diff.mean()) <= 0.5 * one_level
    assert float((diff > tol).mean()) <= 0.001
    assert float(diff.max()) <= 3 * tol
    assert set(pre.last_timings) >= {"upload", "resize", "clahe", "nlm", "bilateral", "normalize", "total"}
    assert all(v >= 0 for v in pre.last_timings.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_full_chain_tensor_matches_cpu(dtype):
    _check_chain(images(), dtype)


def test_real_slices_match_cpu():
    imgs, names = real_slices()
    if not imgs:
        pytest.skip("no real MR slices (pydicom's test files, $HEMSEG_REAL_DATA or ../shared)")
    _check_chain(imgs, np.float32)
    spec = PreprocessSpec()
    got = _gpu_u8(spec, imgs)
    for g, img, name in zip(got, imgs, names):
        assert _mad(g, filter_uint8(img, spec)) <= 0.5, name


def test_normalize_exact_and_written_into_given_buffer():
    imgs = images()[:3]
    spec = PreprocessSpec(size=128, mean=0.485, std=0.229).without(["all"])
    pre = GpuPreprocessor(spec)
    out = cp.full((3, 3, 128, 128), cp.nan, dtype=cp.float32)
    res = pre.run(imgs, out=out)
    assert res is out
    assert np.array_equal(cp.asnumpy(out), preprocess_batch(imgs, spec))     # resize exact + normalize exact
    out16 = cp.empty((3, 3, 128, 128), dtype=cp.float16)
    pre.run(imgs, out=out16)
    assert np.array_equal(cp.asnumpy(out16), preprocess_batch(imgs, spec).astype(np.float16))


def test_device_resident_inputs():
    imgs = [synth(200, 160, k) for k in range(4)]
    spec = PreprocessSpec(size=128)
    pre = GpuPreprocessor(spec)
    host = cp.asnumpy(pre.run(imgs))
    stacked = pre.run(cp.asarray(np.stack(imgs)))
    listed = pre.run([cp.asarray(i) for i in imgs])
    assert np.array_equal(cp.asnumpy(stacked), host) and np.array_equal(cp.asnumpy(listed), host)
