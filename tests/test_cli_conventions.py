"""Conventions shared by every command that writes a folder: ``-o`` is ``--out`` (as in nnU-Net's and
TotalSegmentator's command lines)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from hemseg.cli import main
from hemseg.cli.export_cmd import export as export_main

COMMANDS = [["predict"], ["eval"], ["eval-masks"], ["train"], ["report"], ["quickstart"], ["serve"], ["baseline", "kmeans"]]


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


def test_i_gives_inputs_like_totalsegmentator_and_nnunet(tmp_path):
    """``hemseg predict MODEL -i A -i B -o DIR`` segments A and B (with or without positional inputs); no input at
    all is a one-line usage error, exit 1."""
    import subprocess
    import sys
    from pathlib import Path

    import cv2
    import numpy as np

    tiny = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"
    for name in ("a", "b", "c"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((64, 64), 200, np.uint8))
    res = CliRunner().invoke(main, ["predict", str(tiny), str(tmp_path / "c.png"), "-i", str(tmp_path / "a.png"),
                                    "--input", str(tmp_path / "b.png"), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.png")) == ["a_mask.png", "b_mask.png", "c_mask.png"]
    none = subprocess.run([sys.executable, "-c", "from hemseg.cli import entry; entry()", "predict", str(tiny), "-o",
                           str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert none.returncode == 1 and "Traceback" not in none.stderr
    assert none.stderr.strip().splitlines()[-1] == "hemseg: error: no input: give INPUTS after MODEL, or -i INPUT"


@pytest.mark.parametrize("args, words", [
    (["train", "DATA", "--crop", "500"], "Invalid value for '--crop': 500.0 is not in the range 0<=x<=1."),
    (["predict", "MODEL"], "Missing option '--out' / '-o'."),
    (["eval"], "Missing argument 'MODEL'."),
    (["nope"], "No such command 'nope'."),
    (["train", "DATA", "--seed", "-5"], "Invalid value for '--seed': -5 is not in the range"),  # was a traceback
    (["data", "synth", "OUT", "--seed", str(2**40)], "Invalid value for '--seed'"),
    (["report", "DATA", "-o", "OUT", "--test-fraction", "1.5"], "Invalid value for '--test-fraction'"),  # was exit 1
    (["train", "DATA", "--lr", "inf"], "'inf' is not a finite number"),  # trained
    (["serve", "MODEL", "-o", "OUT", "--series-timeout", "inf"], "'inf' is not a finite number"),  # never segmented
])
def test_option_errors_are_one_line_on_the_real_entry_point(args, words):
    """click's usage errors (three lines: Usage, Try, Error) become one ``hemseg: error:`` line naming the option,
    with a pointer to --help, and keep a non-zero exit (2; 1 for predict, whose 2 means failed inputs)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from hemseg.cli import entry; entry()", *args],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == (1 if args[0] == "predict" else 2), proc.stderr
    assert len(lines) == 1 and lines[0].startswith("hemseg: error: ") and words in lines[0], proc.stderr
    assert "--help" in lines[0] and "Traceback" not in proc.stderr


def test_a_file_system_refusal_is_one_line_naming_the_path(tmp_path):
    """An OSError (here: a JSON report asked for under a file) is ``hemseg: error: PATH: reason``, exit 1, no
    traceback, instead of Python's traceback."""
    import subprocess
    import sys

    import cv2
    import numpy as np

    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "d" / "images" / "a.png"), np.zeros((32, 32), np.uint8))
    cv2.imwrite(str(tmp_path / "d" / "masks" / "a.png"), np.zeros((32, 32), np.uint8))
    (tmp_path / "afile").write_text("x")
    proc = subprocess.run([sys.executable, "-c", "from hemseg.cli import entry; entry()", "data", "check",
                           str(tmp_path / "d"), "--json", str(tmp_path / "afile" / "r.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("hemseg: error: ") and "afile" in last and "a file stands where a folder is needed" in last


def test_a_dangling_link_where_a_folder_is_made_is_named_as_such(tmp_path):
    """mkdir on a dangling link said 'File exists (a file stands where a folder is needed)': no file is there."""
    from hemseg.errors import os_error_line

    link = tmp_path / "dang"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError) as exc:
        link.mkdir()
    assert "a symbolic link to nothing stands where a folder is needed" in os_error_line(exc.value)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError) as exc:
        (tmp_path / "afile").mkdir()
    assert "(a file stands where a folder is needed)" in os_error_line(exc.value)


@pytest.mark.torch
def test_train_into_a_path_under_a_file_is_refused_before_any_work(tmp_path):
    pytest.importorskip("torch")
    from hemseg.errors import UsageError
    from hemseg.train.trainer import run_training

    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        run_training(tmp_path / "no-data-needed", tmp_path / "afile" / "run", steps=1, device="cpu")


def test_hemseg_bench_refuses_a_non_finite_time_budget():
    """--seconds nan made the timing loop run forever (elapsed >= nan is never true)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from hemseg.cli.bench_cmd import entry; entry()", "MODEL",
                           "--seconds", "nan"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "'nan' is not a finite number" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args", [["eval", "CKPT", "DATA"], ["eval-masks", "DATA", "DATA"],
                                  ["baseline", "kmeans", "DATA"], ["quickstart"], ["predict", "CKPT", "DATA"]],
                         ids=lambda a: a[0])
@pytest.mark.parametrize("where", ["under_a_file", "dev_null", "dangling_link", "link_loop"])
def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path, args, where):
    """``hemseg eval MODEL DATA -o FILE/sub`` (or ``-o /dev/null``) evaluated the whole dataset, then failed to make
    its report folder. Refused as an option error now, before the model is even read: the bogus checkpoint here
    would fail otherwise with another message."""
    import os

    (tmp_path / "DATA").mkdir()
    (tmp_path / "CKPT").write_text("not a model")
    (tmp_path / "afile").write_text("x")
    if where == "dev_null" and not os.path.exists(os.devnull):
        pytest.skip("no /dev/null here")
    out = str(tmp_path / "afile" / "sub" / "x") if where == "under_a_file" else os.devnull
    if where == "dangling_link":  # said as such: it read 'dangl is not a folder' (QA, stop 53)
        os.symlink(tmp_path / "gone", tmp_path / "dangl")
        out = str(tmp_path / "dangl")
    if where == "link_loop":
        os.symlink(tmp_path / "loop2", tmp_path / "loop1")
        os.symlink(tmp_path / "loop1", tmp_path / "loop2")
        out = str(tmp_path / "loop1")
    argv = [str(tmp_path / a) if a in ("CKPT", "DATA") else a for a in args]
    res = CliRunner().invoke(main, [*argv, "-o", out])
    assert res.exit_code != 0, res.output
    assert "cannot be a folder" in res.output or "is a file" in res.output, res.output
    assert ("is a symbolic link to nothing" in res.output) == (where == "dangling_link"), res.output
    assert ("is a symbolic link loop" in res.output) == (where == "link_loop"), res.output
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_where_a_mask_or_model_is_expected_is_refused_not_waited_on(tmp_path):
    """Opening a named pipe blocks until something writes into it: `hemseg data check` hung on a FIFO named like
    a mask, `hemseg predict` on a FIFO given as the model (each timed out here)."""
    import os
    import subprocess
    import sys

    import cv2
    import numpy as np

    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "d" / "images" / "c.png"), np.zeros((32, 32), np.uint8))
    os.mkfifo(tmp_path / "d" / "masks" / "c.png")
    os.mkfifo(tmp_path / "model.onnx")
    cli = [sys.executable, "-c", "from hemseg.cli import entry; entry()"]
    check = subprocess.run([*cli, "data", "check", str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and "c.png: not a regular file" in check.stdout + check.stderr
    pred = subprocess.run([*cli, "predict", str(tmp_path / "model.onnx"), str(tmp_path / "d" / "images"), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert pred.returncode != 0 and "model.onnx: not a regular file" in pred.stderr
    assert "Traceback" not in check.stderr + pred.stderr


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize("pipe", ["export_report.json", "folds.json"])
def test_a_named_pipe_beside_a_model_is_not_waited_on(tmp_path, pipe):
    """A FIFO named export_report.json or folds.json in an export folder hung predict and eval for ever (their
    readers opened it and waited for a writer)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import cv2
    import numpy as np

    exp = tmp_path / "exp"
    tiny = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"
    from tiny_models import other_copy

    for folder in ([exp] if pipe == "export_report.json" else [exp / "fold_1", exp / "fold_2"]):  # folds: read
        folder.mkdir(parents=True)
        shutil.copy(tiny, folder / "model.onnx")
    if pipe != "export_report.json":  # two folds are two models (an ensemble refuses one model twice)
        other_copy(exp / "fold_2" / "model.onnx")
    os.mkfifo(exp / pipe)
    cv2.imwrite(str(tmp_path / "a.png"), np.full((64, 64), 90, np.uint8))
    proc = subprocess.run([sys.executable, "-c", "from hemseg.cli import entry; entry()", "predict", str(exp),
                           str(tmp_path / "a.png"), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0 and (tmp_path / "out" / "a_mask.png").is_file(), proc.stderr


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes here")
def test_a_stem_table_that_is_no_regular_file_is_a_problem_not_ignored(tmp_path):
    """A cases.csv that is a named pipe or a link to nothing was ignored without a word: splits then mixed one
    patient's images across training and validation. A categories.csv like it is refused too."""
    import os

    import cv2
    import numpy as np

    from hemseg.errors import InputError
    from hemseg.runtime.dataset import check_dataset, discover

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for stem in ("a", "b"):
        cv2.imwrite(str(tmp_path / "images" / f"{stem}.png"), np.zeros((32, 32), np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"{stem}.png"), np.full((32, 32), 255, np.uint8))
    os.mkfifo(tmp_path / "cases.csv")
    assert any("cases.csv: not a regular file" in p for p in discover(tmp_path).problems)
    assert not check_dataset(tmp_path).usable
    (tmp_path / "cases.csv").unlink()
    (tmp_path / "cases.csv").symlink_to(tmp_path / "nowhere" / "cases.csv")
    assert any("a symbolic link to nothing" in p for p in discover(tmp_path).problems)
    (tmp_path / "cases.csv").unlink()
    os.mkfifo(tmp_path / "categories.csv")
    with pytest.raises(InputError, match="categories.csv: not a regular file"):
        discover(tmp_path)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_as_dataset_image_or_bench_output_is_not_waited_on(tmp_path):
    """hemseg eval of a dataset holding a named pipe as an image hung in its fingerprint (sha256 of each file);
    hemseg-bench --markdown naming an existing pipe hung while checking whether it was an earlier result."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import cv2
    import numpy as np

    tiny = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"
    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "d" / "images" / "a.png"), np.full((64, 64), 80, np.uint8))
    cv2.imwrite(str(tmp_path / "d" / "masks" / "a.png"), np.zeros((64, 64), np.uint8))
    os.mkfifo(tmp_path / "d" / "images" / "b.png")
    cv2.imwrite(str(tmp_path / "d" / "masks" / "b.png"), np.zeros((64, 64), np.uint8))
    cli = [sys.executable, "-c", "from hemseg.cli import entry; entry()"]
    ev = subprocess.run([*cli, "eval", str(tiny), str(tmp_path / "d"), "-o", str(tmp_path / "ev")],
                        capture_output=True, text=True, timeout=120)
    assert ev.returncode != 0 and "b.png" in ev.stderr and "not a regular file" in ev.stderr, ev.stderr
    (tmp_path / "exp").mkdir()
    shutil.copy(tiny, tmp_path / "exp" / "model.onnx")
    os.mkfifo(tmp_path / "b.md")
    bench = subprocess.run([sys.executable, "-m", "hemseg.cli.bench_cmd", str(tmp_path / "exp"), "--paths", "ort",
                            "--markdown", str(tmp_path / "b.md")], capture_output=True, text=True, timeout=120)
    assert bench.returncode != 0 and "b.md" in bench.stderr and "Traceback" not in bench.stderr, bench.stderr
