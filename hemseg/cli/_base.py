"""Shared command-line plumbing: lazy sub-commands, logging, and turning HemsegError into one-line errors."""

from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import math
import os
import re
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterator

import click

from hemseg.errors import HemsegError, os_error_line
from hemseg.runtime.allocator import keep_freed_memory

log = logging.getLogger("hemseg")


class LazyGroup(click.Group):
    """A click group whose sub-commands live in their own modules and are imported only when used.

    This keeps ``hemseg --help`` and the torch-free commands free of torch and of each other's imports.
    """

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


#: Third-party loggers that narrate every step at INFO (highdicom copies modules, pynetdicom logs each PDU):
#: warnings only, unless -vvv.
CHATTY = ("highdicom", "pynetdicom")

#: The ``--seed`` type of every command: what numpy, torch and OpenCV all accept (a negative seed was a traceback).
SEED = click.IntRange(0, 2**31 - 1)


class OneLineOthers(logging.Filter):
    """Keeps the messages of other libraries to one line: drops the traceback a library attaches to its own log
    record (pydicom logs each decoder that fails on a compressed frame with its full traceback, before hemseg
    reports the file in one line), and names a custom level by the standard one below it (nibabel logs at 35:
    'Level 35' became 'WARNING'). Remembers their last messages, so that a Python warning repeating one (pydicom
    logs and warns each of its warnings), or the same message again (pydicom warns of one odd header value per
    element that uses it), is not printed twice. Drops pydicom's checks of header values against the standard
    (:func:`value_check`) unless -v: they name no file, and a value's length or form says nothing of the pixels
    segmented; a SEG or RTSTRUCT that copies such a value is warned of by hemseg, naming the source. hemseg's own
    records pass unchanged."""

    #: the last messages of other libraries, whitespace collapsed
    recent: collections.deque = collections.deque(maxlen=16)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("hemseg") or record.name == "py.warnings":
            return True
        if record.exc_info:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        if record.levelname.startswith("Level "):
            record.levelname = logging.getLevelName(max(v for v in (10, 20, 30, 40, 50) if v <= record.levelno)
                                                    if record.levelno >= 10 else 10)
        text = " ".join(record.getMessage().split())
        if value_check(text):
            return False
        if text in OneLineOthers.recent:  # the same line again: pydicom said "Unknown encoding 'ISO_IR 999'" 7 times
            return False
        OneLineOthers.recent.append(text)
        return True


#: pydicom's words when a header value breaks the standard's length or form (pydicom.valuerep.validate_*)
_VALUE_CHECK = re.compile(r"The value length \(\d+\) exceeds the maximum length of \d+ allowed for VR \w+\.|"
                          r"The PN component length \(\d+\) exceeds the maximum allowed length of \d+\.|"
                          r"Invalid value for VR \w+: .*")


def value_check(text: str) -> bool:
    """Whether ``text`` is pydicom's check of a header value (longer than its VR allows, or not of its VR's form),
    which the command line shows with -v only (see :class:`OneLineOthers`)."""
    return bool(_VALUE_CHECK.fullmatch(text)) and not logging.getLogger().isEnabledFor(logging.DEBUG)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: one log line (``WARNING py.warnings: Category: message``)
    instead of Python's two lines with the library's source code."""
    text = " ".join(str(message).split())
    if text in OneLineOthers.recent or value_check(text):  # the library logged it already (pydicom's warn_and_log
        return  # does both), or a value check kept to -v
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, text)


class BarAwareHandler(logging.StreamHandler):
    """A stderr handler that writes each record through ``tqdm.write``: a progress bar drawn on the same stream is
    cleared for the line and drawn again below it (with a plain handler the line was written into the bar's line,
    ``eval:  40%|####  | 4/10 [00:01<00:02]WARNING hemseg...``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()  # as StreamHandler does: a record is out before what the command prints next
        except Exception:  # noqa: BLE001 - logging's own convention: a handler never raises
            self.handleError(record)


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log to stderr, one line per record: INFO; ``quiet`` (``-q``): WARNING; ``verbose`` 1 (``-v``): DEBUG. Python
    warnings and other libraries' records are one line each (:class:`OneLineOthers`) unless ``verbose`` is 2 or
    more (``-vv``): then they keep their tracebacks and source lines, and the chatty libraries log at DEBUG too."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", handlers=[BarAwareHandler(sys.stderr)],
                        force=True)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else max(level, logging.WARNING))
    OneLineOthers.recent.clear()  # a new command's log
    if verbose < 2:
        for handler in logging.getLogger().handlers:
            handler.addFilter(OneLineOthers())
        warnings.showwarning = _warning_line


class NonEmptyPath(click.Path):
    """A click.Path that refuses an empty value: ``Path('')`` is the current folder, so an unset ``"$OUT"`` wrote
    into (or read) wherever the command ran."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is an empty path (an unset shell variable?); give a file or folder", param, ctx)
        converted = super().convert(value, param, ctx)
        if not self.file_okay and not self.exists:  # a folder to make: refuse now what would fail after the work
            in_the_way = _not_a_folder(Path(os.fsdecode(converted)))
            if in_the_way is not None:
                what = _link_fault(in_the_way) or "not a folder"  # a dangling link read 'is not a folder' (QA, 53)
                self.fail(f"{os.fsdecode(value)!r} cannot be a folder: {in_the_way} is {what}", param, ctx)
        return converted


def _link_fault(path: Path) -> str | None:
    """What is wrong with ``path`` as a symbolic link: one that leads nowhere or into a loop; None otherwise."""
    import errno

    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as exc:
        return "a symbolic link loop" if exc.errno == errno.ELOOP else "a symbolic link to nothing"
    return None


def _not_a_folder(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a folder (a regular file, /dev/null), where
    making ``path`` as a folder would fail; None when nothing is in the way."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return None if p.is_dir() else p
    return None


class FiniteFloat(click.FloatRange):
    """A float option (optionally in a range, as click.FloatRange) that refuses nan and inf: ``--seconds nan`` made
    the benchmark loop forever, ``--lr inf`` trained. Use it for every float option."""

    name = "float"

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if v is not None and not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v

    def _describe_range(self) -> str:
        """No range in --help when there is none (click wrote '[x<=None]')."""
        return super()._describe_range() if self.min is not None or self.max is not None else ""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C's KeyboardInterrupt: the same clean-up runs (staging
    folders and temporary files removed, partial outputs of the input at hand deleted)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def terminate_like_interrupt() -> bool:
    """Make SIGTERM (``kill``, a service manager, a job scheduler's time limit) end the command as Ctrl-C does
    instead of killing it on the spot, which left temporary files and staging folders behind. Only from the main
    thread, and only where SIGTERM still has its default action (``hemseg serve`` installs its own). True when it
    installed the handler."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
        return True
    return False


#: optional packages, by import name, and the extra that installs them (setup.cfg)
EXTRA_OF = {"torch": "train", "torchvision": "train", "onnx": "train", "onnxscript": "train",
            "onnxconverter_common": "train", "matplotlib": "train", "highdicom": "dicom", "pynetdicom": "dicom",
            "openvino": "openvino", "nncf": "nncf", "cupy": "gpu", "tensorrt": "trt"}


def require_extra(what: str, *modules: str) -> None:
    """DependencyError before any work when a module ``what`` needs is not installed (a runtime-only install has no
    torch: train, report and quickstart crashed with a traceback, after writing data)."""
    import importlib.util

    from hemseg.errors import DependencyError

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        extras = sorted({EXTRA_OF.get(m, "train") for m in missing})
        raise DependencyError(f"{what} needs {', '.join(missing)}, not installed here (a runtime-only install?): "
                              + " ".join(f"pip install 'hemseg[{e}]'" for e in extras))


def run_main(cmd: click.Command, prog: str, args: list[str] | None = None,
             own_process: bool | None = None) -> None:
    """Run a click command; HemsegError becomes ``prog: error: message`` and an exit code, with no traceback.

    ``--debug`` anywhere on the command line (or HEMSEG_DEBUG=1) re-raises instead, to show the traceback.
    ``own_process`` (default: ``args`` is None, the process's own command line): the process ends with this command,
    so signals arriving once it has finished are ignored (tests run commands in-process with ``args``). A program
    that calls a console script's ``entry()`` in-process and catches its SystemExit gets SIGINT / SIGTERM back when
    it runs the next command; to run commands in a program, pass ``args`` (signals are then left as they were).
    """
    own = args is None if own_process is None else bool(own_process)
    outer = _RUN["own_process"]
    _RUN["own_process"] = own
    _restore_signals_after_done()  # an earlier command of this process ignored them once done (QA, stop 58)
    installed = terminate_like_interrupt()
    try:
        _run_main(cmd, prog, list(sys.argv[1:] if args is None else args), own)
    finally:  # a command run in-process (tests, the Python API's callers) leaves the state as it found it
        _RUN["own_process"] = outer
        if installed and signal.getsignal(signal.SIGTERM) is _on_sigterm:  # (a finished own run ignores it instead)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_main(cmd: click.Command, prog: str, argv: list[str], own: bool) -> None:
    debug = "--debug" in argv or os.environ.get("HEMSEG_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    keep_freed_memory()  # see hemseg.runtime.allocator: faster CPU inference and training on glibc
    try:
        rv = cmd.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns Ctrl-C's KeyboardInterrupt (and Terminated) into Abort
        if isinstance(exc.__cause__, Terminated):
            click.echo(f"{prog}: terminated", err=True)
            sys.exit(143)
        click.echo(f"{prog}: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # a bad option or argument: one line, like every other error
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"{prog}: error: {exc.format_message()}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except HemsegError as exc:
        if debug:
            raise
        click.echo(f"{prog}: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:  # an optional package a code path needs and no up-front check caught
        top = (exc.name or "").split(".")[0]
        if debug or top not in EXTRA_OF:
            raise
        click.echo(f"{prog}: error: this needs {top}, not installed here: pip install 'hemseg[{EXTRA_OF[top]}]'",
                   err=True)
        sys.exit(1)
    except OSError as exc:  # the file system refused (a path through a file, permissions, a full disk): one line
        if debug:
            raise
        click.echo(f"{prog}: error: {os_error_line(exc)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        click.echo(f"{prog}: {'terminated' if terminated else 'interrupted'}", err=True)
        sys.exit(143 if terminated else 130)
    if own:
        _done_ignore_signals()
    sys.exit(rv if isinstance(rv, int) else 0)


#: whether the command run_main runs is the process's own (it ends with it): see :func:`done`
_RUN = {"own_process": False}


@contextlib.contextmanager
def nested_command() -> Iterator[None]:
    """Run a command inside another (the quickstart's steps): its :func:`done` is not the end of the process, whose
    Ctrl-C must still stop the next steps."""
    own = _RUN["own_process"]
    _RUN["own_process"] = False
    try:
        yield
    finally:
        _RUN["own_process"] = own


def done() -> None:
    """The command's work is done; what follows reports it. In a process that ends with this command, SIGINT and
    SIGTERM are ignored from here on: one arriving just after a success line turned a finished run into exit 130 /
    143 (QA, stops 53 and 57). In-process runs (tests, the Python API) are left alone."""
    if _RUN["own_process"]:
        _done_ignore_signals()


def _done_ignore_signals() -> None:
    """The command finished and said so: a Ctrl-C or SIGTERM now changes nothing, so it is ignored. One arriving
    just after 'N/N input(s) segmented' killed the process with Python's uncaught-interrupt exit, and a script saw
    an interrupted run whose outputs were complete (a QA finding of stop 53)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, signal.SIG_IGN)
            # (hemseg's own SIGTERM handler is not the program's: the next command installs it again)
            _IGNORED_AFTER_DONE.setdefault(sig, signal.SIG_DFL if previous is _on_sigterm else previous)


#: the handlers :func:`_done_ignore_signals` replaced, for a process that goes on (it caught the SystemExit)
_IGNORED_AFTER_DONE: dict = {}


def _restore_signals_after_done() -> None:
    """Give back the handlers an earlier command of this process ignored once it was done: the process did not end
    with it (a program called ``entry()`` in-process and caught its SystemExit), and its next command must stop on
    Ctrl-C / SIGTERM again."""
    if threading.current_thread() is not threading.main_thread():
        return
    while _IGNORED_AFTER_DONE:
        sig, handler = _IGNORED_AFTER_DONE.popitem()
        if handler is not None and signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, handler)


def entry_for(cmd_factory: Callable[[], click.Command], prog: str) -> Callable[[], None]:
    def entry() -> None:
        run_main(cmd_factory(), prog)

    return entry
