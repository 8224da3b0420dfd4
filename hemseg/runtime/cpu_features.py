"""What the CPU can do, read at run time (never assumed): the instruction-set flags that decide fast paths.

- :func:`cpu_flags` reads the ``flags`` line of ``/proc/cpuinfo`` (Linux; an empty set elsewhere). The environment
  variable ``HEMSEG_CPU_FLAGS`` (space- or comma-separated) replaces it, for tests and for a user who wants to pin a
  path.
- :func:`has_bf16` is True on CPUs with AMX-BF16 or AVX512-BF16, the ones where bfloat16 matrix work is faster than
  float32 (oneDNN and OpenVINO use those units); on AVX2-only CPUs bfloat16 is emulated and slower.
- :data:`NOTABLE` lists the flags recorded with every benchmark.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

#: the flags that matter for hemseg's CPU paths, in the order benchmarks list them
NOTABLE = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
ENV = "HEMSEG_CPU_FLAGS"


@functools.lru_cache(maxsize=None)
def _proc_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (lower case), or ``HEMSEG_CPU_FLAGS`` when set."""
    env = os.environ.get(ENV)
    if env is not None:
        return frozenset(f.strip().lower() for f in env.replace(",", " ").split() if f.strip())
    return _proc_flags()


def has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def notable_flags(flags: frozenset[str] | None = None) -> dict[str, bool]:
    """``{flag: present}`` for :data:`NOTABLE`."""
    flags = cpu_flags() if flags is None else flags
    return {f: f in flags for f in NOTABLE}
