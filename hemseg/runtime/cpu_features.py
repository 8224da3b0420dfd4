"""The CPU's instruction-set flags, and what they allow for reduced-precision CPU inference.

Flags are read from ``/proc/cpuinfo`` (Linux; the ``flags`` line of the first processor, names as the kernel spells
them). :func:`cpu_flags` is the one place that reads them; tests replace it (or pass ``flags=`` explicitly) to act
out CPUs this machine is not. Elsewhere than Linux the set is empty, and bf16 counts as unavailable.

bf16 rule (OpenVINO's CPU plugin runs bf16 natively only on these): a CPU can do bf16 inference when it has
``amx_bf16`` (Intel AMX, Sapphire Rapids and later) or ``avx512_bf16`` (Cooper Lake, Zen 4 and later).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable

#: flags that matter for CPU inference speed, in the order benchmarks and ``hemseg doctor`` list them
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
#: any one of these makes bf16 inference available
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: any one of these gives INT8 dot-product instructions (VNNI / AMX)
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
CPUINFO = Path("/proc/cpuinfo")


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """The flags of the first ``flags`` line of a ``/proc/cpuinfo`` text (empty when there is none)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def _read_flags() -> frozenset[str]:
    try:
        return parse_cpuinfo_flags(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (cached after the first read)."""
    return _read_flags()


def _flags(flags: Iterable[str] | None) -> frozenset[str]:
    return cpu_flags() if flags is None else frozenset(flags)


def flags_of_interest(flags: Iterable[str] | None = None) -> dict[str, bool]:
    """``{flag: present}`` for :data:`FLAGS_OF_INTEREST`."""
    have = _flags(flags)
    return {f: f in have for f in FLAGS_OF_INTEREST}


def bf16_flag(flags: Iterable[str] | None = None) -> str | None:
    """The flag that makes bf16 available (``amx_bf16`` preferred), or None."""
    have = _flags(flags)
    return next((f for f in BF16_FLAGS if f in have), None)


def int8_flag(flags: Iterable[str] | None = None) -> str | None:
    """The INT8 dot-product flag (AMX before VNNI), or None on CPUs with neither."""
    have = _flags(flags)
    return next((f for f in INT8_FLAGS if f in have), None)


def describe(flags: Iterable[str] | None = None) -> str:
    """``"avx2 yes, avx512f no, ..."`` over :data:`FLAGS_OF_INTEREST` (``"unknown"`` when no flags could be read)."""
    have = _flags(flags)
    if not have:
        return f"unknown (no flags line in {CPUINFO})"
    return ", ".join(f"{f} {'yes' if ok else 'no'}" for f, ok in flags_of_interest(have).items())
