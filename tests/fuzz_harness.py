"""Reader fuzzing: a seed corpus, byte-level mutations, and a worker process that reads each mutated file.

Used by tests/test_fuzz_readers.py (hypothesis draws the mutations; a bounded number of cases in CI) and, as a
script, for longer campaigns with random mutations::

    PYTHONPATH=. nice -n 10 python tests/fuzz_harness.py --minutes 15 --seed 1 --out /tmp/fuzz

which prints the number of cases, the outcomes, and every distinct failure (saved with a reproducer under --out).

A case passes when the reader returns an image or raises hemseg's InputError with a one-line message naming the
file. Failures: ``other`` (any other exception: a reader bug), ``memory`` (MemoryError under the worker's
address-space cap: an allocation out of proportion to a tiny input), ``crash`` (the worker died: a segfault or
abort in a decoder), ``hang`` (no answer within the per-input timeout), ``multiline`` (an InputError whose message
spans lines or does not name the file).
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HEADER_BYTES = 1024  # most mutations land in the first KiB: headers decide how the rest is read
INTERESTING_INTS = (0, 1, 2, 3, 7, 8, 15, 16, 255, 256, 4095, 4096, 32767, 32768, 65535, 65536, 2**24, 2**31 - 1,
                    2**31, 2**32 - 1)
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x20, 0x5C)


# -- the seed corpus ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seed:
    name: str  # file name (its extension matters: detection uses it)
    path: Path  # a file, or a series folder
    series_member: str | None = None  # for a series folder: the file the mutations go into
    mask: bool = False  # also read as a mask (PNG, NPY, NIfTI)


def _disc(h: int = 40, w: int = 48, dtype=np.uint8, fg: float = 220.0) -> np.ndarray:
    import cv2

    img = np.full((h, w), 20.0, np.float32)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 4, fg, -1)
    return img.astype(dtype)


def _pydicom_file(name: str) -> Path | None:
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    return path if path.is_file() else None


def build_corpus(folder: Path) -> list[Seed]:
    """Small valid files of every format the readers take (each reads fine unmutated)."""
    import cv2
    import nibabel as nib
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    folder.mkdir(parents=True, exist_ok=True)
    seeds: list[Seed] = []

    def add(name: str, mask: bool = False) -> Path:
        path = folder / name
        seeds.append(Seed(name, path, mask=mask))
        return path

    cv2.imwrite(str(add("gray8.png", mask=True)), _disc())
    cv2.imwrite(str(add("gray16.png")), _disc(dtype=np.uint16) * 200)
    cv2.imwrite(str(add("rgba.png", mask=True)), np.dstack([_disc(), _disc() // 2, _disc() // 3, _disc()]))
    cv2.imwrite(str(add("scan.jpg")), _disc())
    cv2.imwrite(str(add("gray8.tif")), _disc())
    cv2.imwritemulti(str(add("pages16.tif")), [_disc(dtype=np.uint16) * 100, _disc(dtype=np.uint16) * 50])
    cv2.imwrite(str(add("float.tif")), _disc(dtype=np.float32) / 255.0)
    np.save(add("slice.npy", mask=True), _disc())
    np.save(add("stack.npy"), np.stack([_disc(dtype=np.float32)] * 3))
    np.save(add("fortran.npy"), np.asfortranarray(_disc(dtype=np.int16)))
    vol = np.stack([_disc(dtype=np.int16)] * 4, axis=-1)
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 3.0, 1.0])), add("vol.nii", mask=True))
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), add("vol.nii.gz", mask=True))
    nib.save(nib.Nifti2Image(vol[..., :1], np.eye(4)), add("flat2.nii"))
    for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
                 "MR_small_implicit.dcm", "CT_small.dcm", "MR_small_jp2klossless.dcm"):
        src = _pydicom_file(name)
        if src is not None:
            shutil.copy(src, add(name))
    base = pydicom.dcmread(_pydicom_file("MR_small.dcm"))
    multi = copy.deepcopy(base)
    multi.NumberOfFrames = 3
    multi.PixelData = np.stack([base.pixel_array] * 3).tobytes()
    multi.save_as(add("multiframe.dcm"))
    buf = DicomBytesIO()  # a bare data set: no preamble, no file meta (read by its .dcm name)
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, copy.deepcopy(base))
    add("no_preamble.dcm").write_bytes(buf.getvalue())
    series = folder / "series"
    series.mkdir()
    for k in range(3):
        ds = copy.deepcopy(base)
        ds.ImagePositionPatient = [0.0, 0.0, 4.0 * k]
        ds.SOPInstanceUID = f"{base.SOPInstanceUID}.{k + 1}"
        ds.InstanceNumber = k + 1
        ds.save_as(series / f"IM{k}.dcm")
    seeds.append(Seed("series", series, series_member="IM1.dcm"))
    return seeds


# -- mutations ---------------------------------------------------------------------------------------------------
# An operation is a tuple; positions are raw integers reduced modulo the current length when applied.
#   ("flip", pos, bit) ("byte", pos, value) ("int", pos, width, value, big_endian) ("truncate", pos)
#   ("insert", pos, bytes) ("delete", pos, length) ("dup", pos, length, dest) ("head", op): op inside the header


def _at(pos: int, n: int, head: bool) -> int:
    limit = min(n, HEADER_BYTES) if head else n
    return pos % max(limit, 1)


def apply_op(data: bytearray, op: tuple, head: bool = False) -> bytearray:
    kind = op[0]
    n = len(data)
    if kind == "head":
        return apply_op(data, op[1], head=True)
    if n == 0 and kind not in ("insert",):
        return data
    if kind == "flip":
        i = _at(op[1], n, head)
        data[i] ^= 1 << (op[2] % 8)
    elif kind == "byte":
        data[_at(op[1], n, head)] = op[2] & 0xFF
    elif kind == "int":
        width = op[2]
        fmt = {1: "B", 2: "H", 4: "I"}[width]
        i = _at(op[1], n, head)
        packed = struct.pack((">" if op[4] else "<") + fmt, op[3] % (1 << (8 * width)))
        data[i:i + width] = packed[: max(0, min(width, n - i))]
    elif kind == "truncate":
        del data[_at(op[1], n, head):]
    elif kind == "insert":
        i = _at(op[1], n + 1, head) if n else 0
        data[i:i] = op[2]
    elif kind == "delete":
        i = _at(op[1], n, head)
        del data[i:i + op[2]]
    elif kind == "dup":
        i = _at(op[1], n, head)
        chunk = bytes(data[i:i + op[2]])
        j = _at(op[3], n, head)
        data[j:j] = chunk
    else:
        raise ValueError(f"unknown mutation {op!r}")
    return data


def mutate(data: bytes, ops: list[tuple], gz_inner: bool = False) -> bytes:
    """Apply ``ops``; with ``gz_inner`` (a .nii.gz) they apply to the decompressed bytes, then it is re-gzipped."""
    if gz_inner:
        inner = bytearray(gzip.decompress(data))
        for op in ops:
            inner = apply_op(inner, op)
        return gzip.compress(bytes(inner), compresslevel=1, mtime=0)
    out = bytearray(data)
    for op in ops:
        out = apply_op(out, op)
    return bytes(out)


def random_op(rng: random.Random) -> tuple:
    """One random operation (the campaign's counterpart of the hypothesis strategy in the test)."""
    kind = rng.choice(("flip", "flip", "byte", "int", "int", "truncate", "insert", "delete", "dup"))
    pos = rng.randrange(1 << 20)
    if kind == "flip":
        op = ("flip", pos, rng.randrange(8))
    elif kind == "byte":
        op = ("byte", pos, rng.choice(INTERESTING_BYTES + (rng.randrange(256),)))
    elif kind == "int":
        op = ("int", pos, rng.choice((1, 2, 4)), rng.choice(INTERESTING_INTS + (rng.randrange(1 << 32),)),
              rng.random() < 0.5)
    elif kind == "truncate":
        op = ("truncate", pos)
    elif kind == "insert":
        op = ("insert", pos, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
    elif kind == "delete":
        op = ("delete", pos, rng.randrange(1, 256))
    else:
        op = ("dup", pos, rng.randrange(1, 512), rng.randrange(1 << 20))
    return ("head", op) if rng.random() < 0.7 else op


# -- materializing a case ----------------------------------------------------------------------------------------
def write_case(seed: Seed, ops: list[tuple], folder: Path) -> tuple[Path, bool]:
    """Write the mutated input under ``folder`` (emptied first); returns (path to read, read as mask too)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if seed.series_member is not None:
        target = folder / seed.name
        shutil.copytree(seed.path, target)
        member = target / seed.series_member
        member.write_bytes(mutate(member.read_bytes(), ops))
        return target, False
    target = folder / seed.name
    target.write_bytes(mutate(seed.path.read_bytes(), ops, gz_inner=seed.name.endswith(".gz") and _half(ops)))
    return target, seed.mask


def _half(ops: list[tuple]) -> bool:
    """Mutate a .nii.gz inside its compression for about half of the cases (decided by the ops themselves)."""
    return sum(len(repr(op)) for op in ops) % 2 == 0


# -- the worker --------------------------------------------------------------------------------------------------
class ReaderWorker:
    """A long-lived ``fuzz_worker.py`` process; restarted after a crash or a hang."""

    def __init__(self, mem_mb: int = 2048, timeout: float = 10.0, stderr_path: Path | None = None):
        self.mem_mb = mem_mb
        self.timeout = timeout
        self.stderr_path = stderr_path
        self.proc: subprocess.Popen | None = None
        self.cap_mb = None
        self.restarts = 0

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        err = open(self.stderr_path, "ab") if self.stderr_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fuzz_worker.py"), str(self.mem_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
                                     text=True, bufsize=1, env=env)
        if err is not subprocess.DEVNULL:
            err.close()
        ready = self._readline(120.0)
        if ready is None:
            raise RuntimeError("the fuzz worker did not start")
        self.cap_mb = json.loads(ready)["cap_mb"]

    def _readline(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line or None

    def read(self, path: Path, as_mask: bool = False) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        t0 = time.monotonic()
        try:
            self.proc.stdin.write(("MASK " if as_mask else "") + str(path) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._restart({"kind": "crash", "returncode": self.proc.poll()})
        line = self._readline(self.timeout)
        seconds = time.monotonic() - t0
        if line is None:
            if self.proc.poll() is None:
                return self._restart({"kind": "hang", "seconds": round(seconds, 1)})
            return self._restart({"kind": "crash", "returncode": self.proc.poll()})
        result = json.loads(line)
        result["seconds"] = seconds
        return result

    def _restart(self, result: dict) -> dict:
        self.close()
        self.restarts += 1
        return result

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self.proc = None


def failure_of(result: dict, path: Path) -> str | None:
    """None when the case passes; else a short description of the failure."""
    kind = result["kind"]
    if kind == "ok":
        return None
    if kind == "input_error":
        for message in result.get("messages", [result.get("message", "")]):
            if "\n" in message or not message.strip():
                return f"multiline: InputError message {message!r}"
            if not message.startswith(str(path)):
                return f"unnamed: InputError message does not start with the file name: {message!r}"
        return None
    detail = {k: result.get(k) for k in ("type", "message", "where", "returncode", "seconds") if k in result}
    return f"{kind}: {detail}"


# -- the campaign ------------------------------------------------------------------------------------------------
def campaign(minutes: float, seed: int, out: Path, timeout: float = 10.0, mem_mb: int = 2048) -> dict:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    seeds = build_corpus(out / "corpus")
    worker = ReaderWorker(mem_mb=mem_mb, timeout=timeout, stderr_path=out / "worker_stderr.log")
    counts: dict[str, int] = {}
    failures: dict[str, dict] = {}
    per_seed: dict[str, int] = {}
    deadline = time.monotonic() + minutes * 60.0
    cases = 0
    slowest = 0.0
    maxrss = 0.0
    notable: dict = {}
    try:
        while time.monotonic() < deadline:
            s = rng.choice(seeds)
            ops = [random_op(rng) for _ in range(rng.choice((1, 1, 2, 3, 5, 8)))]
            path, as_mask = write_case(s, ops, out / "case")
            result = worker.read(path, as_mask)
            cases += 1
            per_seed[s.name] = per_seed.get(s.name, 0) + 1
            counts[result["kind"]] = counts.get(result["kind"], 0) + 1
            if result.get("seconds", 0.0) > slowest:
                slowest = result["seconds"]
                notable["slowest"] = {"seed": s.name, "seconds": round(slowest, 3), "ops": repr(ops)}
            if result.get("maxrss_mb", 0.0) > maxrss + 50.0 and cases > 1:
                notable.setdefault("rss_jumps", []).append({"seed": s.name, "from_mb": maxrss,
                                                            "to_mb": result["maxrss_mb"], "ops": repr(ops)})
            maxrss = max(maxrss, result.get("maxrss_mb", 0.0))
            problem = failure_of(result, path)
            if problem is not None:
                key = f"{s.name} | {problem.split(':')[0]} | {result.get('type', '')} | {result.get('where', '')}"
                if key not in failures:
                    keep = out / "failures" / f"{len(failures):03d}_{s.name}"
                    if keep.exists():
                        shutil.rmtree(keep)
                    if path.is_dir():
                        shutil.copytree(path, keep)
                    else:
                        keep.mkdir(parents=True)
                        shutil.copy(path, keep / path.name)
                    failures[key] = {"problem": problem, "ops": repr(ops), "saved": str(keep), "count": 0,
                                     "trace": result.get("trace", "")}
                failures[key]["count"] += 1
    finally:
        worker.close()
    return {"cases": cases, "minutes": minutes, "seed": seed, "outcomes": counts, "failures": failures,
            "distinct_failures": len(failures), "worker_restarts": worker.restarts, "slowest_s": round(slowest, 3),
            "worker_cap_mb": worker.cap_mb, "worker_maxrss_mb": maxrss, "per_seed": per_seed, "notable": notable}


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/hemseg-fuzz"))
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--mem-mb", type=int, default=2048)
    args = parser.parse_args()
    report = campaign(args.minutes, args.seed, args.out, args.timeout, args.mem_mb)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "failures"}, indent=2))
    for key, f in report["failures"].items():
        print(f"FAIL x{f['count']}: {key}\n  {f['problem']}\n  ops {f['ops']}\n  saved {f['saved']}")


if __name__ == "__main__":
    _main()
