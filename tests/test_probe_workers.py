"""The ``--minutes`` probe with DataLoader workers: it times batches through a loader with those workers, so the
step time it plans with is the overlapped one the loop gets, not data preparation plus compute one after the other.

The data here is slow by sleeping (0.1 s per sample), which costs no CPU: on any machine a batch of 4 takes 0.4 s
to prepare in one process and 4 workers deliver at most one per 0.1 s. The bounds are that arithmetic with wide
margins, not speed targets. The probe times whole rounds of the workers, from one batch's arrival to another's: a
batch's arrival lags its preparation by a varying few tens of milliseconds on a busy 2-core machine, so the sleep is
long enough to make that lag small beside a round (with 0.04 s per sample a round of 4 workers took 0.16 s, and
one run in three read 30 % under it).

The probes run in a fresh interpreter: starting DataLoader workers in the pytest process after the OpenVINO tests
crashed it with a segmentation fault (glibc's lazy binding; see ``hemseg/train/workers.py``); ``hemseg train`` never
loads OpenVINO.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_S = 0.1
BATCH = 4

SCRIPT = r"""
import json, sys, time
from pathlib import Path
import torch
from hemseg.runtime.preprocess import PreprocessSpec
from hemseg.train import budget as budget_mod
from hemseg.train import fit as fit_mod
from hemseg.train.device import resolve_precision
from hemseg.train.loop import SegmentationLoss
from hemseg.train.models import build_model
from hemseg.train.recipes import get_recipe

SAMPLE_S, BATCH = %(sample_s)r, %(batch)r


class SlowData(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        time.sleep(SAMPLE_S)
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 32, 32, generator=g), (torch.rand(1, 32, 32, generator=g) > 0.8).float()


class SlowFirstStep(torch.nn.Module):
    # the first forward pass takes 0.5 s, as a GPU's first step does (lazy initialization, cuDNN's algorithm
    # search): meanwhile the workers fill the loader's prefetch queue
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            time.sleep(0.5)
        return self.model(x)


def probe(workers):
    torch.manual_seed(0)
    model = SlowFirstStep(build_model("unet", base=8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    s = fit_mod.FitSettings(
        run_dir=Path(%(run_dir)r), model="unet", model_kwargs={"base": 8}, spec=PreprocessSpec(size=32),
        base_config={}, device=torch.device("cpu"), recipe=get_recipe("hemseg", batch_size=BATCH),
        precision=resolve_precision("fp32", torch.device("cpu")), workers=workers, progress=False)
    step_s, _ = budget_mod.probe_seconds(s, model, SegmentationLoss(None, "batch"), SlowData())
    same_weights = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return {"step_s": step_s, "same_weights": same_weights, "same_rng": bool(torch.equal(rng, torch.get_rng_state()))}


print(json.dumps({str(w): probe(w) for w in (0, 4, 2)}))
"""


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict:
    # the runs' folders live under pytest's temporary folder (a tempfile.mkdtemp() here left three behind in /tmp)
    code = SCRIPT % {"sample_s": SAMPLE_S, "batch": BATCH, "run_dir": str(tmp_path_factory.mktemp("probe_runs"))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_probe_with_workers_times_the_overlap(probes):
    serial, pipelined = probes["0"]["step_s"], probes["4"]["step_s"]
    assert serial >= BATCH * SAMPLE_S  # the batch is prepared in this process, then the model computes
    # 4 workers deliver a batch per 0.04 s at best: timing the batches they prefetched during the slow first step
    # would read the model's time alone, less than that (the untimed warm-up drains the queue)
    assert pipelined >= 0.8 * BATCH * SAMPLE_S / 4
    assert pipelined < 0.6 * serial  # serial timing would add preparation and compute
    assert probes["2"]["step_s"] >= 0.8 * BATCH * SAMPLE_S / 2


def test_probe_keeps_the_weights_and_the_global_rng(probes):
    for workers in ("0", "2", "4"):
        assert probes[workers]["same_weights"] and probes[workers]["same_rng"], workers
