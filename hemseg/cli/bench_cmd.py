"""``hemseg-bench EXPORT_DIR``: every inference path side by side against the paper's PyTorch path."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from hemseg import __version__
from hemseg.bench.paths import ALL_PATHS
from hemseg.cli._base import FiniteFloat, NonEmptyPath, done, run_main, setup_logging

#: the largest batch timed: a batch is held in memory whole (10**20 grew by 100 MB/s until killed)
MAX_BATCH = 1024


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1 or max(vals) > MAX_BATCH:
        raise click.BadParameter(f"batch sizes must be between 1 and {MAX_BATCH}")
    if len(set(vals)) != len(vals):
        raise click.BadParameter(f"a batch size is named twice in {text!r}")
    return vals


@click.command(name="hemseg-bench")
@click.version_option(__version__, prog_name="hemseg-bench")
@click.argument("export_dir", type=NonEmptyPath(path_type=Path, file_okay=False))
@click.option("--checkpoint", type=NonEmptyPath(path_type=Path, dir_okay=False, exists=True),
              help="PyTorch checkpoint (default: the one recorded in the export's metadata; either must be the file "
                   "the export was made from, by its SHA-256).")
@click.option("--paths", default=None,
              help="Comma-separated paths (default: all): " + ", ".join(ALL_PATHS) + ". openvino runs f32 and "
                   "openvino-bf16 bf16 (hemseg predict's --backend openvino picks bf16 on a CPU with AMX or "
                   "AVX512-BF16: bench's openvino-bf16 there). Those that cannot run here (no GPU, TensorRT, OpenVINO, "
                   "engine file) are skipped with the reason; a model file that is there but unusable is an error, "
                   "and so is a run in which nothing could be measured.")
@click.option("--batch-sizes", default="1,4,16", show_default=True, callback=lambda ctx, param, value: _ints(value),
              help="Comma-separated batch sizes to time, each >= 1 and named once.")
@click.option("--iters", type=click.IntRange(min=1), default=None, help="Timed iterations per path and batch size.")
@click.option("--seconds", type=FiniteFloat(min=0), default=5.0, show_default=True,
              help="Time per path and batch size, and at least 3 timed runs (ignored with --iters). p95 / p99 are "
                   "shown from 20 / 100 timed runs on (the JSON keeps every run's time).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--images", "n_images", type=click.IntRange(min=1), default=16, show_default=True,
              help="How many distinct slices are cycled through.")
@click.option("--data", type=NonEmptyPath(path_type=Path, file_okay=False), help="Benchmark on a dataset's images.")
@click.option("--json", "json_out", type=NonEmptyPath(path_type=Path, dir_okay=False))
@click.option("--markdown", "md_out", type=NonEmptyPath(path_type=Path, dir_okay=False))
@click.option("--plot", "plot_out", type=NonEmptyPath(path_type=Path, dir_okay=False))
@click.option("--threads", type=click.IntRange(min=0, max=1024), default=0,
              help="CPU threads of every engine: torch, ONNX Runtime (intra-op), OpenVINO (0: each library's "
                   "default; recorded in the results).")
@click.option("--series", "series", type=click.IntRange(min=0), default=32, show_default=True,
              help="Slices of the series-throughput run per path, through hemseg predict's pipeline (0: skip it).")
@click.option("--series-batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Batch size of the series run.")
@click.option("--series-workers", default="auto", show_default=True,
              help="Preprocessing threads of the pipelined series run (auto: the usable CPUs, at most 4; 0, no pipelined run, on one CPU).")
@click.option("-q", "--quiet", is_flag=True)
@click.option("-v", "--verbose", count=True,
              help="Debug messages (-vv: also other libraries' debug records and warnings' tracebacks).")
def bench(export_dir, checkpoint, paths, batch_sizes, iters, seconds, warmup, n_images, data, json_out, md_out,
          plot_out, threads, series, series_batch_size, series_workers, quiet, verbose):
    """Measure every available inference path on the same inputs; report latency, throughput, speed-up and mask
    agreement with the PyTorch path."""
    setup_logging(verbose, quiet)
    from hemseg.bench import output
    from hemseg.bench.harness import BenchConfig, run_bench
    from hemseg.bench.inputs import count_gflop, dataset_pool, phantom_pool, read_export_metadata
    from hemseg.bench.paths import ALL_PATHS, BenchContext
    from hemseg.errors import UsageError
    from hemseg.runtime.cpu_features import check_engine_threads, check_workers
    from hemseg.runtime.io.writers import atomic_write_all

    check_engine_threads(threads)  # before anything is read
    if series_workers != "auto":
        if not series_workers.strip().isdigit():
            raise UsageError(f"--series-workers must be 'auto' or an integer >= 0, got {series_workers!r}")
        series_workers = check_workers("--series-workers", int(series_workers))
    if not export_dir.is_dir():
        raise UsageError(f"{export_dir}: not a folder (give the folder hemseg-export wrote)")
    names = [p.strip() for p in paths.split(",") if p.strip()] if paths is not None else list(ALL_PATHS)
    if not names:
        raise UsageError(f"--paths {paths!r} names no path; known: {', '.join(ALL_PATHS)}")
    unknown = [p for p in names if p not in ALL_PATHS]
    if unknown:
        raise UsageError(f"unknown path(s) {unknown}; known: {', '.join(ALL_PATHS)}")
    twice = sorted({p for p in names if names.count(p) > 1})
    if twice:
        raise UsageError(f"--paths names {', '.join(twice)} more than once")
    _check_outputs(json_out, md_out, plot_out)  # before minutes of measuring
    metadata, props = read_export_metadata(export_dir)
    ckpt = checkpoint or (Path(props["hemseg.checkpoint_path"]) if props.get("hemseg.checkpoint_path") else None)
    if checkpoint is not None or any(n.startswith("torch") for n in names):  # a given one is recorded: check it
        _check_checkpoint(ckpt, checkpoint is not None, props.get("hemseg.checkpoint_sha256"), export_dir)
    if threads:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            pass
    pool = dataset_pool(data, n_images) if data else phantom_pool(n_images)
    if len(pool) < n_images:  # said only in the JSON's n_images before
        click.echo(f"note: --images {n_images}, but {data} holds {len(pool)} slice(s): the benchmark runs on those",
                   err=True)
    ctx = BenchContext(export_dir=export_dir, metadata=metadata, checkpoint=ckpt, threads=threads,
                       inputs_description=f"{len(pool)} slices of {data}" if data else f"{len(pool)} phantom slices")
    if "torch" in names or any(n.startswith("torch") for n in names):
        try:
            ctx.gflop_per_image = count_gflop(ctx.torch_model(), metadata.image_size)
        except Exception as exc:  # torch missing or checkpoint absent: the torch paths will be skipped with the reason
            click.echo(f"note: FLOPs not counted ({getattr(exc, 'reason', exc)})", err=True)
    cfg = BenchConfig(batch_sizes=batch_sizes, iters=iters, seconds=seconds, warmup=warmup, n_images=len(pool),
                      series=series, series_batch=series_batch_size, series_workers=series_workers)
    doc = run_bench(ctx, names, cfg, pool, progress=None if quiet else (lambda m: click.echo(m, err=True)))
    if not doc["results"]:
        from hemseg.errors import BackendUnavailable

        raise BackendUnavailable("nothing was measured: " + "; ".join(f"{s['path']} skipped ({s['reason']})"
                                                                     for s in doc["skipped"]))
    command = "hemseg-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    doc["command"] = command
    done()  # measured: the table and its files (written all or none) follow
    click.echo(output.console_table(doc))
    files: dict[Path, bytes] = {}
    if json_out:
        files[json_out] = output.json_bytes(doc)
    if md_out:
        files[md_out] = output.markdown(doc, command).encode()
    png = output.plot_png(doc) if plot_out else None
    if png is not None:
        files[plot_out] = png
    atomic_write_all(files)  # all three of this run, or none (a full disk at the plot left a mix of two runs)
    return 0


def _check_checkpoint(ckpt: Path | None, given: bool, sha: str | None, export_dir: Path) -> None:
    """The PyTorch reference must be the model the export was made from: a checkpoint retrained or resumed in the
    same run folder since the export would make every engine look inaccurate."""
    from hemseg.errors import UsageError
    from hemseg.runtime.io.hashing import sha256_file

    if ckpt is not None and given and ckpt.exists() and not ckpt.is_file():
        raise UsageError(f"--checkpoint {ckpt} is not a regular file (a folder, pipe, socket or device)")
    if ckpt is None or not sha or not ckpt.is_file():
        return  # no reference: the torch paths are skipped with the reason
    if sha256_file(ckpt) != sha:
        if given:
            raise UsageError(f"--checkpoint {ckpt} is not the checkpoint {export_dir} was exported from (its "
                             "SHA-256 differs from the export's checkpoint_sha256): the comparison would be between "
                             "two models")
        raise UsageError(f"{ckpt}, the checkpoint {export_dir} was exported from, has changed since (its SHA-256 "
                         "differs from the export's checkpoint_sha256; retrained or resumed?): export it again, or "
                         "give --checkpoint the file the export was made from")


def _check_outputs(json_out: Path | None, md_out: Path | None, plot_out: Path | None) -> None:
    """The result files can be written: no file where a folder is needed, the parent folder writable, no existing
    file other than an earlier result of the same kind (the model measured, its report: --json e/model.onnx
    replaced the model), no two outputs one file; the plot is a PNG."""
    from hemseg.bench import output
    from hemseg.errors import UsageError
    from hemseg.runtime.io.writers import file_in_the_way, refuse_replacing, refuse_same_file, writable_folder

    named = [("--json", json_out), ("--markdown", md_out), ("--plot", plot_out)]
    refuse_same_file(named)
    for (option, path), (earlier, what) in zip(named, output.EARLIER):
        if path is None:
            continue
        refuse_replacing(path, option, earlier, what)
        blocker = file_in_the_way(path)
        if blocker is not None:
            raise UsageError(f"{option} {path}: {blocker} is a file, not a folder")
        reason = writable_folder(path.parent)
        if reason:
            raise UsageError(f"{option} {path}: {reason}")
    if plot_out is not None and plot_out.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot_out}: the plot is written as PNG; give a .png name")


def entry() -> None:
    run_main(bench, "hemseg-bench")


if __name__ == "__main__":
    entry()
