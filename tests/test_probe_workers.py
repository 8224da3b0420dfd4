"""The ``--minutes`` probe with DataLoader workers: it times batches through a loader with those workers, so the
step time it plans with is the overlapped one the loop gets, not data preparation plus compute one after the other.

The data here is slow by sleeping (0.04 s per sample), which costs no CPU: on any machine a batch of 4 takes 0.16 s
to prepare in one process and 4 workers deliver at most one per 0.04 s. The bounds are that arithmetic with wide
margins, not speed targets.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hemseg.runtime.preprocess import PreprocessSpec  # noqa: E402
from hemseg.train import fit as fit_mod  # noqa: E402
from hemseg.train.device import resolve_precision  # noqa: E402
from hemseg.train.loop import SegmentationLoss  # noqa: E402
from hemseg.train.models import build_model  # noqa: E402
from hemseg.train.recipes import get_recipe  # noqa: E402

pytestmark = pytest.mark.torch

SAMPLE_S = 0.04
BATCH = 4


class SlowData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        time.sleep(SAMPLE_S)
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 32, 32, generator=g), (torch.rand(1, 32, 32, generator=g) > 0.8).float()


def settings(tmp_path: Path, workers: int) -> fit_mod.FitSettings:
    return fit_mod.FitSettings(
        run_dir=tmp_path, model="unet", model_kwargs={"base": 8}, spec=PreprocessSpec(size=32), base_config={},
        device=torch.device("cpu"), recipe=get_recipe("hemseg", batch_size=BATCH),
        precision=resolve_precision("fp32", torch.device("cpu")), workers=workers, progress=False)


class SlowFirstStep(torch.nn.Module):
    """A model whose first forward pass takes 0.5 s, as a GPU's first step does (lazy initialization, cuDNN's
    algorithm search): meanwhile the workers fill the loader's prefetch queue."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            time.sleep(0.5)
        return self.model(x)


def probe(tmp_path: Path, workers: int) -> tuple[float, torch.nn.Module]:
    torch.manual_seed(0)
    model = SlowFirstStep(build_model("unet", base=8))
    step_s, _ = fit_mod._probe_seconds(settings(tmp_path, workers), model, SegmentationLoss(None, "batch"),
                                       SlowData())
    return step_s, model


def test_probe_with_workers_times_the_overlap_and_keeps_the_weights(tmp_path):
    serial, _ = probe(tmp_path, 0)
    assert serial >= BATCH * SAMPLE_S  # the batch is prepared in this process, then the model computes
    torch.manual_seed(0)
    before = SlowFirstStep(build_model("unet", base=8)).state_dict()
    pipelined, model = probe(tmp_path, 4)
    # 4 workers deliver a batch per 0.04 s at best: timing the batches they prefetched during the slow first step
    # would read the model's time alone, less than that (the untimed warm-up drains the queue)
    assert pipelined >= 0.8 * BATCH * SAMPLE_S / 4
    assert pipelined < 0.6 * serial  # serial timing would add preparation and compute
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_probe_restores_the_global_rng(tmp_path):
    torch.manual_seed(123)
    model = build_model("unet", base=8)
    state = torch.get_rng_state()
    fit_mod._probe_seconds(settings(tmp_path, 2), model, SegmentationLoss(None, "batch"), SlowData())
    assert torch.equal(state, torch.get_rng_state())
