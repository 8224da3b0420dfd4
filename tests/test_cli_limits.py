"""Command-line values checked before anything runs or is written (QA round of the CLI): bounds that kept a
command from crashing or filling the memory, a file given as a report folder, a GPU asked for where there is none,
an option that does nothing said so."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hemseg.cli import main

TINY = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_synth_refuses_more_images_per_category_than_its_file_names_hold(tmp_path):
    """-n 10**20 built its task list until the kernel killed it (21 GB), leaving a staging folder."""
    res = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "s"), "-n", "10000"])
    assert res.exit_code == 2 and "--per-category" in res.output and "1<=x<=9999" in res.output
    assert not (tmp_path / "s").exists()


def test_bench_threads_are_bounded(tmp_path):
    """--threads 100000 crashed the interpreter (segfault) while the thread pools were made."""
    from hemseg.cli.bench_cmd import bench

    res = CliRunner().invoke(bench, [str(tmp_path), "--threads", "100000"])
    assert res.exit_code == 2 and "--threads" in res.output and "0<=x<=1024" in res.output


@pytest.mark.parametrize("command", [["eval", str(TINY)], ["eval-masks", "PRED"]])
def test_eval_refuses_a_file_as_its_report_folder_before_evaluating(tmp_path, command):
    """-o pointing at a file was refused only after the whole evaluation (32 s on the phantom)."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "data").mkdir()
    args = [*command, str(tmp_path / "data"), "-o", str(tmp_path / "afile")]
    res = CliRunner().invoke(main, [a if a != "PRED" else str(tmp_path / "data") for a in args])
    assert res.exit_code == 2 and "is a file" in res.output
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.skipif(_cuda(), reason="a GPU is available here")
@pytest.mark.parametrize("command", [["report", "DATA", "-o", "OUT", "--image-size", "32", "--epochs", "1"],
                                     ["quickstart", "-o", "OUT", "--per-category", "2", "--steps", "3"]])
def test_cuda_without_a_gpu_is_refused_before_anything_is_written(tmp_path, command):
    """report wrote its split and steps.json, quickstart its phantoms, before the training step refused the device;
    the corrected rerun was then refused for the folder they left."""
    pytest.importorskip("torch")
    from hemseg.phantom.generate import generate

    generate(tmp_path / "data", per_category=2, seed=0, size_range=(64, 96))
    out = tmp_path / "out"
    args = [str(tmp_path / "data") if a == "DATA" else str(out) if a == "OUT" else a for a in command]
    res = CliRunner().invoke(main, [*args, "--device", "cuda"])
    assert res.exit_code != 0 and "CUDA is not available" in str(res.exception or res.output)
    assert not out.exists()


def test_quickstart_says_that_unet_base_does_nothing_for_fcn(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from hemseg.cli import quickstart_cmd

    class Stop(Exception):
        pass

    def first_step(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(quickstart_cmd, "_step", first_step)
    res = CliRunner().invoke(main, ["quickstart", "-o", str(tmp_path / "q"), "--device", "cpu", "--model",
                                    "fcn_resnet50", "--unet-base", "8"])
    assert isinstance(res.exception, Stop)
    assert "--unet-base is not used" in res.output


def test_bench_checks_a_given_checkpoint_also_when_no_torch_path_runs(tmp_path):
    """--checkpoint of another model (or an empty file) was recorded in the result as the reference, unchecked."""
    from hemseg.cli.bench_cmd import bench

    export = tmp_path / "exp"
    export.mkdir()
    (export / "model.onnx").write_bytes(TINY.read_bytes())
    (tmp_path / "other.pt").write_bytes(b"")
    res = CliRunner().invoke(bench, [str(export), "--paths", "ort", "--checkpoint", str(tmp_path / "other.pt"),
                                     "--iters", "1", "--batch-sizes", "1", "--json", str(tmp_path / "b.json")])
    assert res.exit_code != 0 and "is not the checkpoint" in str(res.exception)
    assert not (tmp_path / "b.json").exists()


def test_serve_help_says_that_sends_have_a_thread_of_their_own():
    res = CliRunner().invoke(main, ["serve", "--help"])
    assert res.exit_code == 0 and "by a thread of their own" in " ".join(res.output.split())
