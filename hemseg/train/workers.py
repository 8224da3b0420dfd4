"""A known crash of DataLoader workers in a process that ran OpenVINO inference, and its warning.

On a 2-core Intel Xeon with AMX (glibc 2.36, OpenVINO 2026 CPU plugin, torch 2.14), a process that ran inference
with hemseg's OpenVINO runner (two compiled models alive at once) and then trained with ``workers > 0`` died of a
segmentation fault in the *training* process (not in a worker): in glibc's lazy symbol binding
(``_dl_runtime_resolve_xsavec``, entered from Python's handler of the SIGCHLD that worker processes send). Starting the workers with ``spawn`` instead of
``fork`` did not avoid it; eager binding did (``LD_BIND_NOW=1`` in the environment when the process starts), as
did ``workers=0``. ``benchmarks/diagnostics/openvino_then_workers.py`` reproduces it.

``hemseg train`` never loads OpenVINO, so the command is not affected; a program that segments with the OpenVINO
backend and trains with workers in the same process is. :func:`warn_if_crash_prone` says so before the workers start.

:func:`ignore_sigterm` is every training DataLoader's ``worker_init_fn``: a SIGTERM to the whole process group (what
``timeout``, Slurm and ``kill -- -PGID`` send) killed the workers too, and torch then printed a traceback from the
loader's ``__del__`` ("DataLoader worker ... is killed by signal: Terminated") around hemseg's one-line message. The
workers leave the signal to the main process, which stops them when it ends.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger(__name__)


def warn_if_crash_prone(workers: int) -> bool:
    """Log a warning (and return True) when ``workers`` DataLoader processes are about to start in a process that
    has loaded OpenVINO without ``LD_BIND_NOW`` set."""
    if workers <= 0 or "openvino" not in sys.modules or os.environ.get("LD_BIND_NOW"):
        return False
    log.warning("this process has loaded OpenVINO and starts %d DataLoader worker(s): on an AMX CPU with glibc 2.36 "
                "that crashed the process (segmentation fault in glibc's lazy binding); start the program with "
                "LD_BIND_NOW=1, or train with workers=0 (hemseg.train.workers)", workers)
    return True


def ignore_sigterm(_worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: SIGTERM is the main process's to handle (see the module docstring)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
