"""The one-off filtering of a training set (``hemseg.train.slices.prepare_samples``) runs in a thread pool: the
same slices in the same order as in one thread, really on the pool's threads, and a bad file still fails with its
name. (The module is torch-free: these tests run in the runtime venv too.)"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from hemseg.errors import InputError
from hemseg.runtime.dataset import discover
from hemseg.runtime.preprocess import PreprocessSpec
from hemseg.train import slices as slices_mod
from hemseg.train.slices import prepare_items, prepare_samples

SPEC = PreprocessSpec(size=64)


def _samples(root):
    return discover(root).samples


def test_threads_give_the_same_slices_in_the_same_order(small_phantom):
    samples = _samples(small_phantom)
    serial = prepare_samples(samples, SPEC, [255], threads=0, progress=False)
    threaded = prepare_samples(samples, SPEC, [255], threads=3, progress=False)
    assert [len(s) for s in serial] == [len(s) for s in threaded] and len(serial) == len(samples)
    for a_items, b_items in zip(serial, threaded):
        for a, b in zip(a_items, b_items):
            assert (a.stem, a.category, a.slice_index) == (b.stem, b.category, b.slice_index)
            np.testing.assert_array_equal(a.image, b.image)
            np.testing.assert_array_equal(a.mask, b.mask)
    assert sum(int(it.mask.any()) for it in prepare_items(samples, SPEC, [255], threads=3, progress=False)) > 0


def test_filtering_runs_on_the_pool_threads(small_phantom, monkeypatch):
    seen: set[str] = set()
    real = slices_mod.filter_uint8

    def recording(image, spec):
        seen.add(threading.current_thread().name)
        return real(image, spec)

    monkeypatch.setattr(slices_mod, "filter_uint8", recording)
    monkeypatch.setattr(slices_mod, "usable_cpus", lambda: 4)  # the default: every usable CPU
    prepare_samples(_samples(small_phantom), SPEC, [255], progress=False)
    assert seen and all(name.startswith("hemseg-filter") for name in seen), seen


def test_a_bad_file_fails_with_its_name_in_threads(small_phantom, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_phantom, data)
    bad = sorted((data).rglob("images/*.png"))[5]
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError) as info:
        prepare_samples(_samples(data), SPEC, [255], threads=3, progress=False)
    assert bad.name in str(info.value)


@pytest.mark.parametrize("cpus, expected", [(4, 4), (64, slices_mod.MAX_FILTER_THREADS), (1, None)])
def test_default_thread_count_follows_the_usable_cpus_up_to_the_cap(small_phantom, monkeypatch, cpus, expected):
    sizes: list[int] = []
    real_pool = slices_mod.ThreadPoolExecutor

    def recording_pool(n, **kw):
        sizes.append(n)
        return real_pool(n, **kw)

    monkeypatch.setattr(slices_mod, "ThreadPoolExecutor", recording_pool)
    monkeypatch.setattr(slices_mod, "usable_cpus", lambda: cpus)
    prepare_samples(_samples(small_phantom), SPEC, [255], progress=False)
    assert sizes == ([] if expected is None else [expected])  # one CPU: no pool, filtered in this thread
