"""The deployable part of hemseg (hemseg.runtime, the hemseg CLI group and its torch-free commands) must import
without torch, torchvision, hemseg.train or hemseg.export.

Each check runs in fresh interpreters, twice: once with those modules poisoned (``sys.modules[name] = None``, so
``import torch`` raises), once with a meta-path hook that records any attempt to import them and raises, so even an
import guarded by ``try/except ImportError`` is caught. (The two cannot share a process: a poisoned ``sys.modules``
entry answers before any meta-path hook is asked.)
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "torchvision", "hemseg.train", "hemseg.export")

PROBE = r"""
import importlib, json, sys
FORBIDDEN = %(forbidden)r
attempts = []

class Recorder:
    def find_spec(self, name, path=None, target=None):
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
            attempts.append(name)
            raise ImportError(f"{name} is forbidden in the torch-free runtime")
        return None

if %(mode)r == "record":
    sys.meta_path.insert(0, Recorder())
else:
    for name in FORBIDDEN:
        sys.modules[name] = None
errors = {}
for mod in %(modules)r:
    try:
        importlib.import_module(mod)
    except BaseException as exc:
        errors[mod] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"attempts": attempts, "errors": errors,
                  "loaded": sorted(m for m in sys.modules if sys.modules[m] is not None
                                   and any(m == f or m.startswith(f + ".") for f in FORBIDDEN))}))
"""


def runtime_modules() -> list[str]:
    import hemseg.runtime

    names = ["hemseg.runtime"]
    for info in pkgutil.walk_packages(hemseg.runtime.__path__, "hemseg.runtime."):
        names.append(info.name)
    return sorted(names)


CLI_MODULES = ["hemseg", "hemseg.errors", "hemseg.cli", "hemseg.cli._base", "hemseg.cli.predict_cmd",
               "hemseg.cli.doctor", "hemseg.cli.data_synth", "hemseg.cli.data_check", "hemseg.cli.serve_cmd"]


def probe(modules: list[str], mode: str) -> dict:
    code = PROBE % {"forbidden": FORBIDDEN, "modules": modules, "mode": mode}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runtime_package_has_the_expected_modules():
    mods = runtime_modules()
    for expected in ("hemseg.runtime.segmenter", "hemseg.runtime.predict", "hemseg.runtime.model_file",
                     "hemseg.runtime.backends.ort", "hemseg.runtime.backends.select", "hemseg.runtime.io.dicom_seg",
                     "hemseg.runtime.node.server", "hemseg.runtime.node.processor", "hemseg.runtime.node.sender"):
        assert expected in mods


@pytest.mark.parametrize("mode", ["poison", "record"])
def test_every_runtime_module_imports_without_torch(mode):
    result = probe(runtime_modules(), mode)
    assert result["errors"] == {}
    assert result["attempts"] == []
    assert result["loaded"] == []


@pytest.mark.parametrize("mode", ["poison", "record"])
def test_cli_and_torch_free_commands_import_without_torch(mode):
    result = probe(CLI_MODULES, mode)
    assert result["errors"] == {}
    assert result["attempts"] == []
    assert result["loaded"] == []


def test_probe_catches_a_forbidden_import(tmp_path):
    """The probe itself works: a module that imports torch (even guarded) is reported."""
    pkg = tmp_path / "sneaky_mod.py"
    pkg.write_text("try:\n    import torch\nexcept ImportError:\n    torch = None\n")
    code = PROBE % {"forbidden": FORBIDDEN, "modules": ["sneaky_mod"], "mode": "record"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["attempts"] == ["torch"]
    assert result["errors"] == {}


@pytest.mark.parametrize("command", [["--help"], ["predict", "--help"], ["doctor", "--help"], ["data", "--help"],
                                     ["serve", "--help"]])
def test_cli_help_runs_without_torch(command):
    code = ("import sys\nfor n in %r: sys.modules[n] = None\nfrom hemseg.cli import main\n"
            "main(%r, prog_name='hemseg')" % (FORBIDDEN, command))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


@pytest.mark.parametrize("script, args", [
    ("hemseg.cli", ["train", "DATA", "-o", "OUT"]),
    ("hemseg.cli", ["report", "DATA", "-o", "OUT"]),
    ("hemseg.cli", ["quickstart", "-o", "OUT"]),
    ("hemseg.cli", ["eval", "CKPT", "DATA", "-o", "OUT"]),
    ("hemseg.cli.export_cmd", ["CKPT", "-o", "OUT"]),
])
def test_commands_that_need_torch_say_which_extra_in_a_runtime_only_install(tmp_path, script, args):
    """In a runtime-only install train, report, quickstart, eval of a checkpoint and hemseg-export ended in a
    ModuleNotFoundError traceback, report and quickstart after writing splits / 34 MB of phantom data."""
    (tmp_path / "DATA").mkdir()
    (tmp_path / "best.pt").write_bytes(b"x")
    argv = [{"DATA": str(tmp_path / "DATA"), "OUT": str(tmp_path / "out"), "CKPT": str(tmp_path / "best.pt")}.get(a, a)
            for a in args]
    code = ("import sys\nfor n in %r: sys.modules[n] = None\nsys.argv = ['hemseg'] + %r\n"
            "from %s import entry\nentry()" % (("torch", "torchvision", "onnx", "onnxscript"), argv, script))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not installed here" in proc.stderr and "pip install 'hemseg[train]'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_optional_module_deep_in_a_command_is_one_line(capsys):
    """The safety net behind the up-front checks: a ModuleNotFoundError of an optional package names its extra."""
    import click

    from hemseg.cli._base import run_main

    @click.command()
    def needs_highdicom():
        raise ModuleNotFoundError("No module named 'highdicom'", name="highdicom")

    with pytest.raises(SystemExit) as stop:
        run_main(needs_highdicom, "hemseg-test", [])
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip() == ("hemseg-test: error: this needs highdicom, not installed here: "
                                              "pip install 'hemseg[dicom]'")
