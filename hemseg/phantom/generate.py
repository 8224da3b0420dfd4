"""Write a phantom dataset to disk: ``OUT/<category>/images|masks/<stem>.png``, ``OUT/manifest.json`` and
optionally ``OUT/preview.png``.

Everything is written into a temporary sibling directory first and moved into place at the end, so OUT is
either the complete new dataset or untouched. A non-empty OUT is only replaced when it is a previous phantom
(its manifest says so and it holds nothing else); anything else is refused, never clobbered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from hemseg import __version__
from hemseg.errors import InputError, UsageError
from hemseg.phantom.case import DEFAULT_SIZE_RANGE, case_rng, render_case
from hemseg.phantom.categories import CATEGORIES, parse_category
from hemseg.phantom.preview import contact_sheet
from hemseg.progress import shown as bar_shown
from hemseg.runtime.io.lock import FolderLock, staging_folder
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.signals import signals_held
from hemseg.runtime.io.writers import final_names, keep_mode, temp_prefix

log = logging.getLogger(__name__)

GENERATOR_NAME = "hemseg.phantom"
PHANTOM_VERSION = "1.0"
LESION_FREE_EVERY = 6          # image i of every category is lesion-free when i % 6 == 0 (>= 1/6 of any prefix)
MANIFEST = "manifest.json"
PREVIEW = "preview.png"


def stem_for(category: str, index: int) -> str:
    """The file stem of image ``index`` of ``category`` (unique across the dataset)."""
    return f"{category}_{index:04d}"


def forced_lesion_free(index: int) -> bool:
    """Whether image ``index`` of a category is drawn without lesions whatever its random stream says."""
    return index % LESION_FREE_EVERY == 0


def is_phantom_dir(path: Path) -> bool:
    """True when ``path`` holds a phantom written by this generator and nothing else.

    Besides the manifest's generator name, every entry must be one the generator writes: the category folders
    with only ``images``/``masks`` holding ``<category>_*.png``, ``manifest.json`` and ``preview.png``. Anything
    else (a user's file) makes it not a phantom, so it is never deleted by a re-generation.
    """
    try:
        manifest = json.loads(read_regular_text(path / MANIFEST))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or not isinstance(manifest.get("generator"), dict) \
            or manifest["generator"].get("name") != GENERATOR_NAME:
        return False
    for entry in path.iterdir():
        if entry.name in (MANIFEST, PREVIEW, _lock_name(path)) and entry.is_file():
            continue
        if entry.name not in CATEGORIES or not entry.is_dir() or entry.is_symlink():
            return False
        for sub in entry.iterdir():
            if sub.name not in ("images", "masks") or not sub.is_dir() or sub.is_symlink():
                return False
            for f in sub.iterdir():
                if not (f.is_file() and f.name.startswith(entry.name + "_") and f.suffix == ".png"):
                    return False
    return True


def _stage_prefix(out: Path) -> str:
    """The name prefix of the staging folder a phantom for ``out`` is rendered in (beside it, or inside it)."""
    return f"{temp_prefix(out.name)}tmp-"


def _lock_name(out: Path) -> str:
    """The lock one synth into ``out`` holds (beside it, or inside it): a staging name, removed with stale staging."""
    return f"{_stage_prefix(out)}synth.lock"


def _empty_but_staging(out: Path) -> bool:
    """``out`` is a folder holding nothing but what a killed synth staged inside it (:func:`generate`)."""
    return out.is_dir() and all(p.name.startswith(_stage_prefix(out)) for p in out.iterdir())


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if out.is_dir() and not _empty_but_staging(out) and not is_phantom_dir(out):
        raise UsageError(f"{out} is not empty and does not hold a previous hemseg phantom; refusing to write into it "
                         "(choose a new or empty directory)")


def _check_removable(out: Path) -> None:
    """A previous phantom in ``out`` can be deleted once replaced: each of its folders writable (QA, stop 57: a
    write-protected phantom was replaced and its old copy left, undeletable, in a hidden folder beside it)."""
    for d, _dirs, _files in os.walk(out):  # a phantom is three levels deep: OUT/<category>/images|masks
        if not os.access(d, os.W_OK | os.X_OK):
            raise UsageError(f"{d}: not writable, so the previous phantom in {out} could not be removed once "
                             "replaced; make it writable (chmod -R u+w) or choose a new folder")


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise InputError(path, "PNG encoding failed")
    _write_bytes(path, buf.tobytes())


def _write_bytes(path: Path, data: bytes) -> None:
    """``path.write_bytes(data)``, an error naming ``path`` (a full disk's error from write() names no file)."""
    try:
        path.write_bytes(data)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise type(exc)(exc.errno, exc.strerror or str(exc), str(path)) from None


def _validate(per_category: int, seed: int, size_range) -> tuple[int, int]:
    if isinstance(per_category, bool) or not isinstance(per_category, (int, np.integer)) or per_category < 1:
        raise UsageError(f"per_category must be a positive integer, got {per_category!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        lo, hi = (int(v) for v in size_range)
    except (TypeError, ValueError):
        raise UsageError(f"size_range must be two integers (min, max), got {size_range!r}") from None
    if lo < 32 or hi < lo or hi > 4096:
        raise UsageError(f"size_range must satisfy 32 <= min <= max <= 4096, got {size_range!r}")
    return lo, hi


def generate(out_dir: str | os.PathLike, per_category: int, seed: int = 0, preview: bool = False,
             size_range: tuple[int, int] = DEFAULT_SIZE_RANGE, progress: bool | None = None,
             workers: int = 1, on_published: Callable[[], None] | None = None) -> dict:
    """Write ``per_category`` images of each of the 12 categories to ``out_dir``; returns the manifest.

    Image ``i`` of a category depends only on (seed, category, i): a larger ``per_category`` extends a dataset
    without changing its first images, and the same arguments give byte-identical files, whatever ``workers``
    (processes rendering in parallel; 1 renders in this process). ``progress`` None shows a tqdm bar only when
    stderr is a terminal. ``on_published`` is called once the new phantom is in place, before a replaced one is
    deleted (``hemseg data synth`` is done from then on: a Ctrl-C while the old copy was deleted made a finished
    run exit 130; QA, stop 56).
    """
    lo, hi = _validate(per_category, seed, size_range)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    out = Path(out_dir)
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:  # it would be replaced while the shell is in it
        raise UsageError(f"{out} is the current folder or holds it; the phantom replaces its folder as a whole: give "
                         "a new folder name (e.g. phantom)")
    if out.is_symlink():  # written through the link (the link itself was swapped for a folder, a stray link left)
        if not out.is_dir():
            raise UsageError(f"{out} is a symbolic link to {'nothing' if not out.exists() else 'a file'}; give a "
                             "folder")
        out = out.resolve()
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    # one synth at a time per folder: two into one folder both said "wrote", the last one's phantom kept (QA, stop
    # 57). The lock lies beside OUT, or inside it where the parent is not writable (an empty folder filled in place);
    # its name is a staging name, so OUT with it still counts as empty and a killed run's lock is removed
    lock_dir = parent if os.access(parent, os.W_OK | os.X_OK) or not out.is_dir() else out
    lock = FolderLock(lock_dir, f"{out}: another hemseg data synth is writing this folder; wait for it or choose "
                      "another", name=_lock_name(out)).acquire()
    try:
        manifest = _generate_locked(out, parent, int(per_category), int(seed), preview, (lo, hi), progress,
                                    int(workers), on_published or (lambda: None))
    finally:
        lock.release()
    n = len(manifest["images"])
    free = sum(1 for im in manifest["images"] if im["lesions"] == 0)
    # (debug: hemseg data synth prints this line itself, and it came twice)
    log.debug("wrote %d phantom images (%d categories x %d) to %s; %.0f%% lesion-free", n, len(CATEGORIES),
              per_category, out, 100.0 * free / max(1, n))
    return manifest


def _generate_locked(out: Path, parent: Path, per_category: int, seed: int, preview: bool,
                     size_range: tuple[int, int], progress: bool | None, workers: int,
                     on_published: Callable[[], None]) -> dict:
    """:func:`generate` under its lock: OUT checked, the phantom rendered, staged and moved into place."""
    _check_out(out)
    if out.is_dir() and not _empty_but_staging(out):
        _check_removable(out)
    # an empty folder is filled from a staging folder inside it, so that it stays the same folder (a mount point, a
    # folder in an unwritable parent, its own permissions: replacing it failed with "Device or resource busy" or
    # "cannot write into" its parent, or changed its mode: QA findings of stop 53); else the phantom is staged beside
    # it and swapped in whole. A killed run's staging folder is removed by the next run (staging_folder); names stay
    # within 255 bytes
    stage_in = out if _empty_but_staging(out) else parent
    if stage_in == parent and out.is_dir() and os.path.ismount(out):  # refused before rendering, with what to do
        raise UsageError(f"{out} is a mount point holding an earlier phantom, which is replaced as a whole folder: "
                         "that cannot be done to a mount point; empty it (its phantom files) and run again")
    with staging_folder(stage_in, _stage_prefix(out)) as tmp, final_names(tmp, out):
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)        # mkdtemp makes it private; the dataset should not be
        manifest, sheet_items = _render_all(tmp, per_category, seed, size_range, progress, workers)
        if preview:
            _write_png(tmp / PREVIEW, contact_sheet(sheet_items))
        _write_bytes(tmp / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        _swap_into_place(tmp, out, on_published)
    return manifest


#: images per task when rendering in several processes (small enough to balance 16 workers on 12 x 200 images)
CHUNK = 8


def _render_chunk(root: str, category: str, start: int, stop: int, seed: int,
                  size_range: tuple[int, int]) -> list[dict]:
    """Render and write images ``start..stop-1`` of ``category`` under ``root``; their manifest entries, in order.

    Module-level (picklable) so a process pool can run it; the result depends only on the arguments.
    """
    spec = parse_category(category)
    entries = []
    for i in range(start, stop):
        stem = stem_for(category, i)
        image, mask, info = render_case(category, case_rng(seed, category, i), size_range=size_range,
                                        n_lesions=0 if forced_lesion_free(i) else None)
        img_rel = f"{category}/images/{stem}.png"
        mask_rel = f"{category}/masks/{stem}.png"
        _write_png(Path(root) / img_rel, image)
        _write_png(Path(root) / mask_rel, mask)
        entries.append({
            "stem": stem, "category": category, "plane": spec.plane, "sequence": spec.sequence,
            "region": info["region"], "height": info["height"], "width": info["width"],
            "mm_per_px": info["mm_per_px"], "lesions": info["lesions"], "lesion_area": info["lesion_area"],
            "image": img_rel, "mask": mask_rel,
        })
    return entries


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes started in the block ignore SIGINT (an ignored signal survives exec, and Python leaves it so): a
    Ctrl-C in a terminal reaches the whole process group, and workers still importing numpy printed one traceback
    each before 'hemseg: aborted' (QA, stop 59). The parent stops them (:func:`_stop_workers`). A Ctrl-C within the
    block itself (the few milliseconds the workers take to start) is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:  # (None: a handler installed outside Python, which signal.signal cannot put back: the default then)
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _stop_workers(pool) -> None:
    """Terminate a ProcessPoolExecutor's workers and wait for them (they ignore SIGINT, and would finish their
    chunks first, writing into a staging folder being removed). ``terminate_workers`` from Python 3.14; before, its
    processes."""
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    for process in processes:  # gone before the command ends (one was left a zombie for a moment: QA, stop 59)
        process.join(timeout=5)
    pool.shutdown(wait=False, cancel_futures=True)


def _worker_init() -> None:
    cv2.setNumThreads(1)      # the processes are the parallelism; OpenCV threads inside each would oversubscribe


def _render_all(root: Path, per_category: int, seed: int, size_range: tuple[int, int], progress: bool | None,
                workers: int = 1):
    """Render every image into ``root`` (in ``workers`` processes when > 1); the manifest and the preview items.

    The output does not depend on ``workers``: each image depends only on (seed, category, index), the manifest
    lists them in category order then index order, and the preview is read back from the written files.
    """
    from tqdm import tqdm

    for category in CATEGORIES:
        (root / category / "images").mkdir(parents=True)
        (root / category / "masks").mkdir(parents=True)
    tasks = [(str(root), category, start, min(start + CHUNK, per_category), seed, size_range)
             for category in CATEGORIES for start in range(0, per_category, CHUNK)]
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(total=per_category * len(CATEGORIES), desc="phantom", unit="img", disable=not bar_shown(show))
    chunks: list[list[dict]] = []
    try:
        if workers <= 1:
            for task in tasks:
                chunks.append(_render_chunk(*task))
                bar.update(len(chunks[-1]))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")   # no fork of a possibly threaded parent
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
                try:
                    with _children_ignore_sigint():  # the workers start on the first submits
                        futures = [pool.submit(_render_chunk, *task) for task in tasks]
                    for future in futures:
                        chunks.append(future.result())
                        bar.update(len(chunks[-1]))
                except BaseException:  # Ctrl-C, an error: the workers stop now, not after their chunks
                    _stop_workers(pool)
                    raise
    finally:
        bar.close()
    images = [entry for chunk in chunks for entry in chunk]
    summary = {}
    sheet_items = []
    for category in CATEGORIES:
        entries = [e for e in images if e["category"] == category]
        summary[category] = {"images": per_category, "lesion_free": sum(1 for e in entries if e["lesions"] == 0)}
        # preview: the first lesion-free image and the first image with lesions of each category
        shown: set[bool] = set()
        for e in entries:
            kind = e["lesions"] > 0
            if kind not in shown:
                shown.add(kind)
                image = cv2.imread(str(root / e["image"]), cv2.IMREAD_UNCHANGED)
                mask = cv2.imread(str(root / e["mask"]), cv2.IMREAD_UNCHANGED)
                sheet_items.append((f"{category} ({e['lesions']})", image, mask))
    manifest = {
        "generator": {"name": GENERATOR_NAME, "version": PHANTOM_VERSION, "hemseg_version": __version__},
        "seed": seed,
        "per_category": per_category,
        "size_range": list(size_range),
        "lesion_free_every": LESION_FREE_EVERY,
        "categories": list(CATEGORIES),
        "summary": summary,
        "images": images,
    }
    return manifest, sheet_items


def _swap_into_place(tmp: Path, out: Path, on_published: Callable[[], None]) -> None:
    """Move the finished temporary directory to ``out``, replacing an empty dir or a previous phantom; staged inside
    ``out``, its entries are moved up (the manifest last, Ctrl-C held meanwhile: a folder holds a whole phantom).
    ``on_published`` once the new phantom is in place."""
    if tmp.parent == out:
        with signals_held():
            for entry in sorted(tmp.iterdir(), key=lambda p: p.name == MANIFEST):
                os.replace(entry, out / entry.name)
        on_published()
        return
    if not out.exists():
        os.replace(tmp, out)
        on_published()
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.replace(tmp, out)
        on_published()
        return
    _check_out(out)                  # it is a previous phantom (checked again: it may have changed meanwhile)
    keep_mode(out, tmp)              # a phantom folder made private stays so (its mode was reset: QA, stop 53)
    # the old phantom is moved aside into a staging folder of its own (locked, deleted on leaving), so that a run
    # killed while deleting it leaves it to the next run's clean-up (a hidden '.X.old-*' stayed for good: QA, stop
    # 57); the two renames with signals held (between them OUT would be missing)
    with staging_folder(out.absolute().parent, _stage_prefix(out)) as old:
        old.rmdir()
        with signals_held():
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)
                raise
        on_published()  # the old copy is deleted on leaving the block
    if old.exists():  # checked before rendering (_check_removable), so only what changed meanwhile
        log.warning("%s: the previous phantom could not be removed (moved aside to %s): delete it yourself", out, old)
