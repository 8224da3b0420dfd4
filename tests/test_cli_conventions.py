"""Conventions shared by every command that writes a folder: ``-o`` is ``--out`` (as in nnU-Net's and
TotalSegmentator's command lines)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from hemseg.cli import main
from hemseg.cli.export_cmd import export as export_main

COMMANDS = [["predict"], ["eval"], ["train"], ["report"], ["quickstart"], ["serve"], ["baseline", "kmeans"]]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_o_is_out(args):
    res = CliRunner().invoke(main, [*args, "--help"])
    assert res.exit_code == 0, res.output
    assert "-o, --out" in res.output


def test_o_is_out_for_hemseg_export():
    res = CliRunner().invoke(export_main, ["--help"])
    assert res.exit_code == 0 and "-o, --out" in res.output


def test_o_sets_the_output_folder(tmp_path):
    """Not only listed: ``hemseg predict ... -o DIR`` writes into DIR."""
    from pathlib import Path

    import cv2
    import numpy as np

    tiny = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"
    img = tmp_path / "scan.png"
    cv2.imwrite(str(img), np.full((64, 64), 200, np.uint8))
    res = CliRunner().invoke(main, ["predict", str(tiny), str(img), "-o", str(tmp_path / "short")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "short" / "summary.json").is_file() and (tmp_path / "short" / "scan_mask.png").is_file()
