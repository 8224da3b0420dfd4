"""What the CPU can do, read at run time (never assumed): the instruction-set flags that decide fast paths.

- :func:`cpu_flags` reads the ``flags`` line of ``/proc/cpuinfo`` (Linux; an empty set elsewhere). The environment
  variable ``HEMSEG_CPU_FLAGS`` (space- or comma-separated) replaces it, for tests and for a user who wants to pin a
  path. Functions taking ``flags=`` use it instead when given (tests act out CPUs this machine is not).
- :func:`has_bf16` / :func:`bf16_flag`: True / the flag on CPUs with AMX-BF16 or AVX512-BF16, the ones where
  bfloat16 matrix work is faster than float32 (oneDNN and OpenVINO use those units; OpenVINO's CPU plugin runs bf16
  natively only there); on AVX2-only CPUs bfloat16 is emulated and slower.
- :func:`int8_flag`: the INT8 dot-product instructions (AMX-INT8, AVX512-VNNI, AVX-VNNI), or None.
- :func:`usable_cpus`: the CPUs this process may run on (its affinity mask where the OS has one);
  :func:`check_engine_threads` refuses an engine thread count above it.
- :data:`NOTABLE` lists the flags recorded with every benchmark; :data:`FLAGS_OF_INTEREST` the six that
  ``hemseg doctor`` shows and the benchmark's machine info names (issue 14).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterable

#: the flags that matter for hemseg's CPU paths, in the order benchmarks list them
NOTABLE = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
#: the flags ``hemseg doctor`` lists, in that order
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: any one of these gives INT8 dot-product instructions (AMX before VNNI)
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
ENV = "HEMSEG_CPU_FLAGS"
CPUINFO = Path("/proc/cpuinfo")


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (a container or ``taskset`` may allow
    fewer than ``os.cpu_count()``), else the CPU count, at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_engine_threads(threads: int) -> int:
    """``threads`` (a CPU engine's inference threads, 0: its default) when it is at most :func:`usable_cpus`, else a
    UsageError: the option keeps hemseg off a workstation's other cores, and ONNX Runtime starts every thread asked
    for (``--threads 10000`` started 6139 threads on 2 CPUs and ran for minutes where one image takes 0.2 s), while
    OpenVINO quietly runs fewer than asked."""
    return _at_most_usable("threads", threads, "the engine's default")


def check_workers(option: str, workers: int) -> int:
    """``workers`` (preprocessing threads working ahead of inference) when at most :func:`usable_cpus`, else a
    UsageError like :func:`check_engine_threads`' (``--workers 1000`` was accepted and recorded while ``--threads
    1000`` was refused: a QA finding of stop 56; more threads than CPUs only contend)."""
    return _at_most_usable(option, workers, "strictly sequential")


def _at_most_usable(what: str, n: int, zero: str) -> int:
    """``n`` when at most :func:`usable_cpus`, else a UsageError naming ``what`` and what 0 means (``zero``)."""
    from hemseg.errors import UsageError

    usable = usable_cpus()
    if n > usable:
        raise UsageError(f"{what} {n}: more than the {usable} CPU(s) this process may use; give at most {usable} "
                         f"(0: {zero})")
    return n


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """The flags of the first ``flags`` line of a ``/proc/cpuinfo`` text (empty when there is none)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=None)
def hardware_flags() -> frozenset[str]:
    """The CPU's own flags from /proc/cpuinfo (read once), whatever ``HEMSEG_CPU_FLAGS`` says (a benchmark records
    both)."""
    try:
        return parse_cpuinfo_flags(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (lower case), or ``HEMSEG_CPU_FLAGS`` when set."""
    env = os.environ.get(ENV)
    if env is not None:
        return frozenset(f.strip().lower() for f in env.replace(",", " ").split() if f.strip())
    return hardware_flags()


def _flags(flags: Iterable[str] | None) -> frozenset[str]:
    return cpu_flags() if flags is None else frozenset(flags)


def has_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16)."""
    return bf16_flag(flags) is not None


def bf16_flag(flags: Iterable[str] | None = None) -> str | None:
    """The flag that makes bf16 available (``amx_bf16`` preferred), or None."""
    have = _flags(flags)
    return next((f for f in BF16_FLAGS if f in have), None)


def int8_flag(flags: Iterable[str] | None = None) -> str | None:
    """The INT8 dot-product flag (AMX before VNNI), or None on CPUs with neither."""
    have = _flags(flags)
    return next((f for f in INT8_FLAGS if f in have), None)


def notable_flags(flags: Iterable[str] | None = None) -> dict[str, bool]:
    """``{flag: present}`` for :data:`NOTABLE`."""
    have = _flags(flags)
    return {f: f in have for f in NOTABLE}


def flags_of_interest(flags: Iterable[str] | None = None) -> dict[str, bool]:
    """``{flag: present}`` for :data:`FLAGS_OF_INTEREST`."""
    have = _flags(flags)
    return {f: f in have for f in FLAGS_OF_INTEREST}


def describe(flags: Iterable[str] | None = None) -> str:
    """``"avx2 yes, avx512f no, ..."`` over :data:`FLAGS_OF_INTEREST` (``"unknown"`` when no flags could be read)."""
    have = _flags(flags)
    if not have:
        return f"unknown (no flags line in {CPUINFO})"
    return ", ".join(f"{f} {'yes' if ok else 'no'}" for f, ok in flags_of_interest(have).items())
