"""The reader fuzzer's worker process: reads the paths it is given with hemseg's readers and reports what happened.

Run by tests/fuzz_harness.py as ``python fuzz_worker.py MEM_MB``. Protocol: one path per line on stdin; one JSON
object per line on the protocol stream (the original stdout; anything else printed goes to stderr):

    {"kind": "ok", "shape": [n, h, w]}                       the image was read
    {"kind": "input_error", "message": "<path>: <reason>"}   hemseg's InputError
    {"kind": "other", "type": "...", "message": "...", "where": "file:line"}  any other exception (a bug)
    {"kind": "memory", ...}                                  MemoryError under the address-space cap (a blow-up)

A line ``MASK <path>`` reads the file as a mask too (PNG, NPY, NIfTI). The address space is capped at MEM_MB above
what the imports take (RLIMIT_AS), so an allocation out of proportion to the tiny inputs fails here instead of
swapping the machine.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback


def _vm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    extra_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray writes (C libraries, print) go to stderr, never into the protocol
    sys.stdout = sys.stderr
    import cv2  # noqa: F401  (import everything before capping the address space)
    import nibabel  # noqa: F401
    import numpy as np  # noqa: F401
    import pydicom  # noqa: F401

    from hemseg.errors import InputError
    from hemseg.runtime.io import read_image, read_mask

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except Exception:
        pass
    cap = _vm_bytes() + extra_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    proto.write(json.dumps({"kind": "ready", "cap_mb": cap // (1024 * 1024)}) + "\n")
    for line in sys.stdin:
        line = line.rstrip("\n")
        as_mask = line.startswith("MASK ")
        path = line[5:] if as_mask else line
        outcomes = [_attempt(lambda: list(read_image(path).data.shape), InputError)]
        if as_mask:
            outcomes.append(_attempt(lambda: list(read_mask(path).shape), InputError))
        bad = [o for o in outcomes if o["kind"] not in ("ok", "input_error")]
        result = dict(bad[0] if bad else outcomes[0])
        result["messages"] = [o["message"] for o in outcomes if o["kind"] == "input_error"]
        result["maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
        proto.write(json.dumps(result) + "\n")


def _attempt(read, input_error) -> dict:
    try:
        return {"kind": "ok", "shape": read()}
    except input_error as exc:
        return {"kind": "input_error", "message": str(exc)}
    except MemoryError as exc:
        return {"kind": "memory", "message": str(exc)[:300], "where": _where(exc)}
    except Exception as exc:
        return {"kind": "other", "type": type(exc).__name__, "message": str(exc)[:300], "where": _where(exc),
                "trace": traceback.format_exc()[-3000:]}


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{os.path.basename(last.filename)}:{last.lineno}"


if __name__ == "__main__":
    main()
