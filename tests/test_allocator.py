"""hemseg.runtime.allocator: glibc keeps freed memory (fewer page faults per forward pass), and stays out of the way
when the user chose otherwise."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from hemseg.runtime import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


class FakeLibc:
    def __init__(self, answer: int = 1):
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_settings_applied_on_glibc():
    libc = FakeLibc()
    state = allocator.keep_freed_memory(environ={}, libc=libc)
    assert libc.calls == [(allocator.M_MMAP_MAX, 0), (allocator.M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD)]
    assert "freed memory kept" in state


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_refused_settings_are_reported():
    state = allocator.keep_freed_memory(environ={}, libc=FakeLibc(answer=0))
    assert state.startswith("system malloc") and "refused" in state


@pytest.mark.parametrize("environ, expected", [
    ({"HEMSEG_MALLOC": "system"}, "HEMSEG_MALLOC=system"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "jemalloc"),
    ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, "tcmalloc"),
    ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}, "GLIBC_TUNABLES"),
])
def test_users_choice_is_left_alone(environ, expected):
    libc = FakeLibc()
    state = allocator.keep_freed_memory(environ=environ, libc=libc)
    assert libc.calls == []
    assert expected in state


FAULTS = r"""
import ctypes, ctypes.util, resource, sys
from hemseg.runtime.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    print(keep_freed_memory(environ={}), file=sys.stderr)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 48 << 20
faults = []
for i in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    return int(out.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_freed_blocks_are_reused_without_page_faults():
    """A 48 MiB block allocated, written and freed five times: glibc's default maps it afresh each time (one fault
    per page, 12 k per round), with the settings the second and later rounds reuse the heap's pages."""
    default, kept = _faults("default"), _faults("keep")
    assert default > 1000, default
    assert kept * 10 < default, (kept, default)


def test_cli_entry_applies_it(monkeypatch):
    from hemseg.cli import _base

    seen = []
    monkeypatch.setattr(_base, "keep_freed_memory", lambda: seen.append(True))
    with pytest.raises(SystemExit) as exc:
        _base.run_main(__import__("click").Command("noop", callback=lambda: None), "hemseg", [])
    assert exc.value.code == 0 and seen == [True]


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_a_setting_it_does_not_understand_is_said(caplog):
    """HEMSEG_MALLOC=off (or a typo) was ignored without a word: only 'system' turns the setting off."""
    with caplog.at_level("WARNING", logger="hemseg"):
        state = allocator.keep_freed_memory(environ={"HEMSEG_MALLOC": "off"}, libc=FakeLibc())
    assert "HEMSEG_MALLOC='off' not understood" in state
    assert any("only 'system'" in r.getMessage() for r in caplog.records)
