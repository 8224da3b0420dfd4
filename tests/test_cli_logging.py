"""The command line's log: other libraries' tracebacks and Python warnings stay one line each, unless -vv."""

from __future__ import annotations

import logging
import warnings

import pytest

from hemseg.cli._base import setup_logging


def _emit() -> None:
    try:
        raise RuntimeError("decoder exploded")
    except RuntimeError:
        logging.getLogger("somelib.decoders").exception("cannot decode frame 1")
        logging.getLogger("hemseg.some.module").exception("hemseg's own failure")
    warnings.warn("odd header value\n  second line", UserWarning, stacklevel=1)


@pytest.mark.parametrize("verbose", [0, 1])  # the default and -v (debug messages; -v showed every traceback)
def test_other_libraries_log_one_line_and_warnings_become_log_lines(capsys, monkeypatch, verbose):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        setup_logging(verbose, quiet=False)
        logging.getLogger("hemseg.some.module").debug("a debug note")
        _emit()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "ERROR somelib.decoders: cannot decode frame 1" in lines
    assert "WARNING py.warnings: UserWarning: odd header value second line" in lines
    # hemseg's own records keep their traceback (they are bugs to report); the library's is gone
    assert err.count("Traceback") == 1 and "hemseg's own failure" in err
    assert err.index("Traceback") > err.index("hemseg's own failure")
    assert "warnings.warn(" not in err
    assert ("a debug note" in err) == (verbose == 1)


def test_debug_verbosity_keeps_every_traceback(capsys, monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        setup_logging(2, quiet=False)  # -vv
        _emit()
    err = capsys.readouterr().err
    assert err.count("Traceback") == 2
    setup_logging(0, quiet=False)


def test_every_console_script_answers_version():
    """hemseg --version worked; hemseg-export --version and hemseg-bench --version were unknown options (exit 2)."""
    from click.testing import CliRunner

    from hemseg import __version__
    from hemseg.cli import main
    from hemseg.cli.bench_cmd import bench
    from hemseg.cli.export_cmd import export

    for cmd, prog in ((main, "hemseg"), (export, "hemseg-export"), (bench, "hemseg-bench")):
        res = CliRunner().invoke(cmd, ["--version"])
        assert res.exit_code == 0 and res.output.strip() == f"{prog}, version {__version__}", (prog, res.output)


def test_sigterm_ends_a_command_like_ctrl_c_with_its_clean_up(tmp_path):
    """kill (SIGTERM) ended every command but serve on the spot: exit 143 with no message, and the staging
    folders and temporary files its clean-up would have removed stayed behind."""
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "working.tmp"
    code = f"""
import pathlib, time, click
from hemseg.cli._base import run_main

@click.command()
def work():
    marker = pathlib.Path({str(marker)!r})
    try:  # written inside the try: a SIGTERM right after the write still finds the clean-up in force
        marker.write_text("x")
        time.sleep(60)
    finally:
        marker.unlink(missing_ok=True)

run_main(work, "hemseg-test", [])
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "hemseg-test: terminated", err
    assert not marker.exists() and "Traceback" not in err
