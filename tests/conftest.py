"""Shared pytest configuration: GPU tests skip without CUDA, torch tests skip without torch."""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "spine-generic-sub-unf01"


def _cuda_available() -> bool:
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:
            return False
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            return torch.cuda.is_available()
        except Exception:
            return False
    return False


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: SIGINT / SIGTERM as the test session found them (a background job of a non-interactive shell starts with SIGINT
#: ignored); filled by pytest_sessionstart
_SESSION_HANDLERS: dict = {}


def pytest_sessionstart(session):
    _SESSION_HANDLERS.update({sig: signal.getsignal(sig) for sig in _HELD_SIGNALS})


def _restore_session_handlers() -> None:
    for sig, handler in _SESSION_HANDLERS.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Each test leaves SIGINT / SIGTERM as the session found them: a command run in-process from a patched
    sys.argv ignores both once it has finished (hemseg.cli._base.run_main), and child processes inherit an ignored
    signal. Restored to the session's handlers, not to those a test found: a module-scoped fixture runs before this
    one, and a signal it left ignored made a later test's subprocess deaf to SIGTERM (CI, stop 57: exit 0 where
    143 was expected). The command state run_main keeps must not outlive a test either."""
    _restore_session_handlers()
    yield
    _restore_session_handlers()
    base = sys.modules.get("hemseg.cli._base")
    if base is not None:
        base._IGNORED_AFTER_DONE.clear()
    if base is not None and base._RUN["own_process"]:
        base._RUN["own_process"] = False
        pytest.fail("a command run in-process left hemseg.cli._base._RUN['own_process'] set: a later in-process "
                    "command would ignore SIGINT / SIGTERM from its done() on")


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt in this test, as in a shell's foreground command: a process started in the
    background by a non-interactive shell (``cmd &``, as CI may be) inherits SIGINT ignored, and Python then keeps
    it so."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def pytest_collection_modifyitems(config, items):
    has_cuda = None
    has_torch = importlib.util.find_spec("torch") is not None
    for item in items:
        if "gpu" in item.keywords:
            if has_cuda is None:
                has_cuda = _cuda_available()
            if not has_cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "torch" in item.keywords and not has_torch:
            item.add_marker(pytest.mark.skip(reason="needs torch (pip install hemseg[train])"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real spine-generic cord data beside the checkout; skips the test when it is absent."""
    if not (SHARED / "sub-unf01_T2w.nii.gz").is_file():
        pytest.skip(f"real data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory) -> Path:
    """A phantom data folder of 2 slices per category (24), 64-96 px, seed 0; shared, so tests only read it."""
    from hemseg.phantom import generate

    root = tmp_path_factory.mktemp("small-phantom") / "data"
    generate(root, per_category=2, seed=0, size_range=(64, 96), progress=False)
    return root


@pytest.fixture(autouse=True, scope="session")
def _openvino_cache_in_tmp(tmp_path_factory):
    """OpenVINO's model cache goes to a temporary folder during tests, never to the user's ~/.cache."""
    import os

    saved = os.environ.get("HEMSEG_OPENVINO_CACHE")
    os.environ["HEMSEG_OPENVINO_CACHE"] = str(tmp_path_factory.mktemp("openvino-cache"))
    yield
    if saved is None:
        os.environ.pop("HEMSEG_OPENVINO_CACHE", None)
    else:
        os.environ["HEMSEG_OPENVINO_CACHE"] = saved
