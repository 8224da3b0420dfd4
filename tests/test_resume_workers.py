"""A run with DataLoader workers, stopped after a validation and resumed, ends with the weights of a straight run.

With workers the augmentation runs in the worker processes, seeded when a loader starts, and the workers draw
batches ahead of the steps: a resumed run started its loader at the checkpoint's step (other worker seeds) from a
sampler generator the prefetching had moved ahead, and ended with other weights than the straight run (hemseg
train ... --workers 1, stopped and resumed). Training now starts a loader at each validation, with the sampler's
generator where the steps left it.

The runs happen in a fresh interpreter: DataLoader workers started in the pytest process after the OpenVINO tests
crashed it (see ``tests/test_probe_workers.py`` and ``hemseg/train/workers.py``).
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

SCRIPT = r"""
import json, sys
from pathlib import Path
import torch
import hemseg.train.fit as fit_mod
from hemseg.train.checkpoint import read_checkpoint
from hemseg.train.trainer import run_training

data, out = Path(sys.argv[1]), Path(sys.argv[2])
kw = dict(model="unet", unet_base=8, image_size=32, batch_size=4, steps=6, val_every=2, no_preprocess=True,
          crop=0.5, device="cpu", progress=False, seed=0, workers=int(sys.argv[3]))
run_training(data, out / "straight", **kw)
real, calls = fit_mod.train_step, []


def crashing(*a, **k):
    calls.append(1)
    if len(calls) == 5:
        raise KeyboardInterrupt
    return real(*a, **k)


fit_mod.train_step = crashing
try:
    run_training(data, out / "resumed", **kw)
except KeyboardInterrupt:
    pass
stopped_at = read_checkpoint(out / "resumed" / "last.pt")["train_state"]["step"]
fit_mod.train_step = real
run_training(data, out / "resumed", resume=True, **kw)
a = read_checkpoint(out / "straight" / "last.pt")["state_dict"]
b = read_checkpoint(out / "resumed" / "last.pt")["state_dict"]
print(json.dumps({"stopped_at": stopped_at, "same": all(torch.equal(a[k], b[k]) for k in a)}))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_with_workers_resumes_to_the_weights_of_a_straight_run(small_phantom, tmp_path, workers):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(small_phantom), str(tmp_path), str(workers)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"stopped_at": 4, "same": True}, result


STOP_SCRIPT = r"""
import os, signal, sys
from torch.utils.data import dataloader

real, fired = dataloader._MultiProcessingDataLoaderIter._shutdown_workers, []


def shutdown_with_a_sigterm(self):
    # the first time a training loader's workers are ended early (at the first validation), a SIGTERM arrives
    if not fired and not getattr(self, "_shutdown", True) and self._dataset.__class__.__name__ == "SliceDataset" \
            and not self._persistent_workers:
        fired.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
    return real(self)


dataloader._MultiProcessingDataLoaderIter._shutdown_workers = shutdown_with_a_sigterm
from hemseg.cli import entry

sys.argv = ["hemseg", "train", sys.argv[1], "--out", sys.argv[2], "--model", "unet", "--unet-base", "8",
            "--image-size", "32", "--batch-size", "4", "--steps", "8", "--val-every", "2", "--no-preprocess",
            "--weights", "none", "--device", "cpu", "--no-progress", "--workers", "1"]
entry()
"""


def test_a_sigterm_while_a_loaders_workers_end_stops_the_run(small_phantom, tmp_path):
    """With workers a loader starts at each validation; the old one's workers were ended by its __del__, where a
    SIGTERM arriving then was ignored ('Exception ignored in ... __del__ ... Terminated') and the run went on to
    its end with exit 0. The workers are now ended in the loop's own flow: the run stops (exit 143)."""
    out = tmp_path / "run"
    # without the fix the run hangs (its workers never joined): a short timeout
    proc = subprocess.run([sys.executable, "-c", STOP_SCRIPT, str(small_phantom), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-3000:])
    assert "Exception ignored" not in proc.stderr
    rows = (out / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 2, rows  # the header and the first validation: stopped there, not at step 8
