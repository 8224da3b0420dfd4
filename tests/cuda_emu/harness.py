"""Runs hemseg's CUDA kernels on the CPU: builds ``preprocess.cu`` against ``cuda_emu.hpp`` with g++ and launches the
kernels through ctypes with the exact argument tuples ``GpuPreprocessor`` hands to CuPy.

``EmuKernels.launch`` checks every argument against the kernel's C signature (pointer element type vs. array
dtype, int32/float32 scalars), copies arrays into buffers with guard zones and fails when a kernel writes outside
an array or past its dynamic shared memory. Test-only.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GUARD = 256
GUARD_BYTE = 0xA5

# pointer type code -> numpy dtypes it may point into
_POINTER_DTYPES = {
    "u8": (np.dtype(np.uint8),),
    "i32": (np.dtype(np.int32),),
    "i16": (np.dtype(np.int16),),
    "f32": (np.dtype(np.float32),),
    "u16": (np.dtype(np.uint16), np.dtype(np.float16)),
}


def build(out_dir: Path, cu_source: Path) -> Path:
    """Compile the emulation library; returns its path. Raises RuntimeError with the compiler output on failure."""
    gxx = shutil.which("g++")
    if gxx is None:
        raise FileNotFoundError("g++ not found")
    lib = Path(out_dir) / "libhemseg_cuda_emu.so"
    cmd = [gxx, "-std=c++20", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-fvisibility=hidden", "-fvisibility-inlines-hidden", "-fno-gnu-unique",
           "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=0",
           f"-I{cu_source.parent}", f"-I{HERE}", str(HERE / "emu_kernels.cpp"), "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the CUDA emulation failed:\n{proc.stderr}")
    return lib


class EmuKernels:
    """Same interface as ``hemseg.runtime.cuda.gpu_preprocess.CupyKernels``, running on the CPU."""

    def __init__(self, lib_path: Path):
        self._lib = ctypes.CDLL(str(lib_path))
        self._lib.emu_signature.restype = ctypes.c_char_p
        self._lib.emu_signature.argtypes = [ctypes.c_char_p]
        self._lib.emu_launch.restype = ctypes.c_int
        self._lib.emu_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [ctypes.c_ulonglong,
                                                                                  ctypes.POINTER(ctypes.c_void_p)]
        self.launches: list[tuple[str, tuple, tuple, int]] = []

    def signature(self, name: str) -> list[str]:
        sig = self._lib.emu_signature(name.encode())
        if sig is None:
            raise KeyError(f"no kernel named {name}")
        return [s for s in sig.decode().split(",") if s]

    def launch(self, name: str, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        sig = self.signature(name)
        if len(sig) != len(args):
            raise TypeError(f"{name}: {len(args)} arguments for {len(sig)} parameters")
        grid = tuple(int(g) for g in grid)
        block = tuple(int(b) for b in block)
        if len(grid) != 3 or len(block) != 3 or min(grid + block) < 1:
            raise ValueError(f"{name}: bad launch shape grid={grid} block={block}")
        if block[0] * block[1] * block[2] > 1024 or grid[1] > 65535 or grid[2] > 65535:
            raise ValueError(f"{name}: launch exceeds CUDA limits grid={grid} block={block}")
        holders, guarded = [], []
        for k, (code, a) in enumerate(zip(sig, args)):
            if code.endswith("*"):
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{name} arg {k}: expected an array for {code}, got {type(a).__name__}")
                elem = code.replace("const ", "").rstrip("*")
                if a.dtype not in _POINTER_DTYPES[elem]:
                    raise TypeError(f"{name} arg {k}: {code} given a {a.dtype} array")
                if not a.flags.c_contiguous:
                    raise TypeError(f"{name} arg {k}: array is not C-contiguous")
                buf = np.full(a.nbytes + 2 * GUARD, GUARD_BYTE, np.uint8)
                buf[GUARD:GUARD + a.nbytes] = a.reshape(-1).view(np.uint8)
                guarded.append((a, buf, code.startswith("const ")))
                holders.append(ctypes.c_void_p(buf.ctypes.data + GUARD))
            elif code == "i32":
                if not isinstance(a, np.int32):
                    raise TypeError(f"{name} arg {k}: expected numpy.int32, got {type(a).__name__}")
                holders.append(ctypes.c_int32(int(a)))
            elif code == "f32":
                if not isinstance(a, np.float32):
                    raise TypeError(f"{name} arg {k}: expected numpy.float32, got {type(a).__name__}")
                holders.append(ctypes.c_float(float(a)))
            else:
                raise TypeError(f"{name} arg {k}: unsupported parameter type {code}")
        ptrs = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
        rc = self._lib.emu_launch(name.encode(), *grid, *block, int(shared_mem), ptrs)
        if rc == 3:
            raise RuntimeError(f"{name}: threads of a block diverged at __syncthreads (some exited, some waited)")
        if rc == 2:
            raise RuntimeError(f"{name}: wrote past its {shared_mem} bytes of dynamic shared memory")
        if rc != 0:
            raise RuntimeError(f"{name}: emulated launch failed ({rc})")
        for a, buf, const in guarded:
            if (buf[:GUARD] != GUARD_BYTE).any() or (buf[GUARD + a.nbytes:] != GUARD_BYTE).any():
                raise RuntimeError(f"{name}: wrote outside an array of {a.nbytes} bytes")
            body = buf[GUARD:GUARD + a.nbytes]
            if const:
                if not np.array_equal(body, a.reshape(-1).view(np.uint8)):
                    raise RuntimeError(f"{name}: modified a const input")
            else:
                a.reshape(-1).view(np.uint8)[:] = body
        self.launches.append((name, grid, block, int(shared_mem)))
