"""The warning before DataLoader workers start in a process that loaded OpenVINO (``hemseg/train/workers.py``).

The crash itself is not run here (it kills the process; ``benchmarks/diagnostics/openvino_then_workers.py``
reproduces it): these tests check when the warning is given and that training asks for it.
"""

from __future__ import annotations

import logging
import sys

import pytest

pytest.importorskip("torch")

from hemseg.train import workers  # noqa: E402

pytestmark = pytest.mark.torch


def test_warns_only_with_workers_after_openvino_and_without_eager_binding(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", sys.modules.get("openvino") or object())
    monkeypatch.delenv("LD_BIND_NOW", raising=False)
    with caplog.at_level(logging.WARNING, logger="hemseg.train.workers"):
        assert workers.warn_if_crash_prone(2) is True
    assert "LD_BIND_NOW=1" in caplog.text and "workers=0" in caplog.text
    assert workers.warn_if_crash_prone(0) is False
    monkeypatch.setenv("LD_BIND_NOW", "1")
    assert workers.warn_if_crash_prone(2) is False
    monkeypatch.delenv("LD_BIND_NOW")
    monkeypatch.delitem(sys.modules, "openvino")
    assert workers.warn_if_crash_prone(2) is False


def test_training_asks_before_its_loaders_start(small_phantom, tmp_path, monkeypatch):
    from hemseg.train import fit
    from hemseg.train.trainer import run_training

    asked = []
    monkeypatch.setattr(fit, "warn_if_crash_prone", lambda n: asked.append(n) or False)
    run_training(small_phantom, tmp_path / "run", model="unet", unet_base=8, image_size=64, batch_size=4, steps=2,
                 device="cpu", progress=False, weights="none", no_preprocess=True, workers=0)
    assert asked == [0]
