"""``hemseg quickstart --out DIR``: the whole chain in one command, each step through the same CLI a user would call.

synthesize phantom -> train (FCN-ResNet50 on a GPU, a small U-Net on a CPU) -> evaluate on held-out phantom slices
-> export ONNX FP32 + INT8 (verified) -> ``hemseg predict`` with overlays -> short ``hemseg-bench`` -> a five-line summary.

Training uses the ``hemseg`` recipe (see :mod:`hemseg.train.recipes`) for a wall-clock budget. Defaults depend on the
machine:

- on a CUDA GPU, the paper's model and scale: FCN-ResNet50, 200 images per category, 256 px;
- on a CPU, 288 phantom images (24 per category) at 256 px, trained on 128 px patches (``--patch``) for 11 minutes,
  so that the whole chain ends within 15 minutes on two cores (11.9-12.1 min measured idle; the other steps take
  about 1.2 min, and a budget in minutes holds under load while they do not: see ``CPU_DEFAULTS``), and a **U-Net
  (base 16)**, not FCN-ResNet50. The reason is measured, not assumed: on a 2-core CPU a 9-minute budget bought FCN-ResNet50
  about 150 steps (2.4 s each at 128 px patches, fp32), and from random weights it then predicted no lesion on the
  validation slices (pooled validation Dice 0.000; held-out 0.112). 256 px because the phantom's sagittal lesions are 2-7 px
  wide at 128 px, under FCN's output stride of 8 (5-15 px at 256 px). The U-Net (1.9 M parameters,
  full-resolution output) made 560-665 steps in the same time and found the axial lesions (held-out pooled Dice
  0.31-0.44), not yet the sagittal ones. ``--model fcn_resnet50`` trains the paper's model anyway.

Preprocessing: **CLAHE only** by default (``hemseg train --skip nlm --skip bilateral``); ``--paper-filters`` adds
the paper's non-local means and bilateral filters. The checkpoint and the exported model record the chain, so the
deployed model is preprocessed as it was trained. Measured, not assumed: the two filters remove 60-65 % of
the fine (5 px) texture energy inside the phantom's lesions, the trabecular striations that tell a hemangioma from a
fatty island; a model trained from scratch did better without them on the phantom (held-out pooled Dice 0.62 vs
0.36, one run each), and on real cord MRI they made no difference (leave-one-contrast-out, U-Net, three seeds: mean
Dice 0.435 with them, 0.448 without; see the README). They also cost the most time in preprocessing.
``hemseg train`` keeps the paper's chain as its default.

Data size on the CPU: 24 images per category, not 8. The phantom costs nothing to make and a step costs the same
whatever the data size, so the only price is synthesis and validation time. Measured (U-Net, 640 steps each, scored
on 120 held-out slices of another seed): 8 per category gave pooled Dice 0.517 and 0.69 false-positive components
per lesion-free slice, 24 per category 0.635 and 0.25: with about five lesion slices per category a model fits its
training slices and does not generalize (a model trained on one category alone fitted it and scored 0.07 on its
held-out slices). The held-out set is 5 per category (60 slices): with 2 per category (24 slices) one model scored
0.591 there and 0.517 on 120 slices, too noisy a figure to judge a run by.

Loss on the CPU: **blob loss + EMA** (``hemseg train --dice blob --ema``): the batch soft Dice plus one soft Dice
per lesion, so a 9 px sagittal lesion weighs as much as a 20 px axial one, and an exponential moving average of the
weights is validated and exported. Measured (24 images per category, one run each, the 120 held-out slices above):
sagittal lesions found 11 and 10 of 59 with blob loss (without and with EMA, 640 steps) vs 1 of 59 with the batch
Dice alone; in the quickstart itself 5 vs 2 of 59. Pooled Dice moved by -0.05 to +0.01 (within the spread between
runs), and false positives rose (1.0-1.5 vs 0.25-0.84 components per lesion-free slice). The quickstart is meant to
show a model that finds lesions in every plane, so it takes the loss that finds more of the small ones. The GPU
defaults (FCN-ResNet50, 200 images per category) keep the batch Dice: blob loss was not measured there.

Training budget on the CPU: **11 minutes** (was 9). Learning here is limited by the number of steps (a 2000-step
run scored 0.745 where 640 steps scored 0.59), and the chain's other steps left room under the 15-minute limit.
Measured, idle: 9 minutes, 634 steps, held-out pooled Dice 0.563; 11 minutes, 903 and 1116 steps (the planner's
step-time probe differed between the two runs), 0.590 and 0.643 (the second with the wider threshold grid of
:data:`hemseg.runtime.postprocess.DEFAULT_CANDIDATES`, which the first's tuning stopped at the edge of).
On an AVX2-only CPU (fp32) with today's defaults: 821 steps and 0.612 with glibc's default malloc, 1263 steps and
0.663 once the CLI keeps freed memory (:mod:`hemseg.runtime.allocator`); bf16 on an AVX512-BF16 CPU makes 2700-3000.

Every default can be overridden; ``--epochs`` or ``--steps`` replace the budget.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import click

from hemseg.cli._base import SEED, FiniteFloat, NonEmptyPath, done, nested_command, require_extra
from hemseg.runtime.bootstrap import interval_text
from hemseg.runtime.io.regular import read_regular_text

CPU_DEFAULTS = {"model": "unet", "unet_base": 16, "per_category": 24, "heldout_per_category": 5, "image_size": 256,
                "patch": 128, "minutes": 11.0, "batch_size": 8, "calib_count": 32, "bench_seconds": 3.0,
                "filters": "clahe", "dice": "blob", "ema": True}
GPU_DEFAULTS = {"model": "fcn_resnet50", "unet_base": 16, "per_category": 200, "heldout_per_category": 20,
                "image_size": 256, "patch": None, "minutes": 4.0, "batch_size": 16, "calib_count": 64,
                "bench_seconds": 5.0, "filters": "clahe", "dice": "batch", "ema": False}
#: ``hemseg train`` options of each filter choice: CLAHE only (the quickstart's default), or the paper's whole chain
FILTER_ARGS = {"clahe": ["--skip", "nlm", "--skip", "bilateral"], "paper": []}
FILTER_TITLES = {"clahe": "CLAHE only", "paper": "CLAHE + NLM + bilateral"}
MODEL_TITLES = {"fcn_resnet50": "FCN-ResNet50", "unet": "U-Net", "attention_unet": "Attention U-Net"}


def _defaults(key: str, unit: str = "") -> str:
    """``[CPU 24, GPU 200]``: an option's defaults in ``--help`` (they differ by device)."""
    cpu, gpu = CPU_DEFAULTS[key], GPU_DEFAULTS[key]
    return f"[{cpu}{unit}]" if cpu == gpu else f"[CPU {cpu}{unit}, GPU {gpu}{unit}]"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _step(title: str, cmd: click.Command, prog: str, args: list[str], log: list[dict]) -> int:
    click.secho(f"\n== {title}\n$ {prog} {' '.join(shlex.quote(a) for a in args)}", fg="cyan", err=True)
    t0 = time.perf_counter()
    entry = {"step": title, "command": f"{prog} {' '.join(shlex.quote(a) for a in args)}"}
    try:
        with nested_command():  # (its done() is not the quickstart's)
            rv = cmd.main(args=args, prog_name=prog, standalone_mode=False)
    except Exception as exc:  # recorded with its time, then passed on to the caller
        log.append({**entry, "seconds": round(time.perf_counter() - t0, 1), "exit_code": 1, "error": str(exc)})
        raise
    code = rv if isinstance(rv, int) else 0
    log.append({**entry, "seconds": round(time.perf_counter() - t0, 1), "exit_code": code})
    return code


def _read(path: Path) -> dict:
    return json.loads(read_regular_text(path)) if path.is_file() else {}


def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _times(x) -> str:
    """A speed-up as ``1.23x``; ``n/a`` (no ``x``) when the path was not measured."""
    return "n/a" if x is None else f"{x:.2f}x"


@click.command()
@click.option("--out", "-o", required=True, type=NonEmptyPath(path_type=Path, file_okay=False), help="Folder for everything.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train, evaluate and benchmark (auto: CUDA when there is a GPU).")
@click.option("--model", type=click.Choice(["auto", *MODEL_TITLES]), default="auto", show_default=True,
              help="auto: FCN-ResNet50 on a GPU, a U-Net (base 16) on a CPU (why: benchmarks/MEASUREMENTS.md).")
@click.option("--unet-base", type=click.IntRange(min=1), help=f"U-Net width {_defaults('unet_base')}.")
@click.option("--patch", type=click.IntRange(min=0),
              help="Train on P x P patches (0: whole slices) [CPU 128, GPU whole slices; never above --image-size].")
@click.option("--paper-filters", is_flag=True,
              help="Preprocess with the paper's whole chain (CLAHE, non-local means, bilateral) instead of CLAHE only "
                   "(why: benchmarks/MEASUREMENTS.md).")
@click.option("--dice", type=click.Choice(["batch", "blob"]),
              help="The soft Dice term of the loss (hemseg train --dice) [CPU blob, GPU batch].")
@click.option("--ema/--no-ema", default=None, help="Select and export an EMA of the weights [CPU on, GPU off].")
@click.option("--per-category", type=click.IntRange(min=2),
              help="Phantom training images per category (at least 2: the first of each category is lesion-free) "
                   f"{_defaults('per_category')}.")
# (at least 2 too: with 1 every held-out slice was lesion-free, and the summary led with a pooled Dice of 1.000)
@click.option("--heldout-per-category", type=click.IntRange(min=2),
              help="Held-out phantom images per category (at least 2: the first of each category is lesion-free) "
                   f"{_defaults('heldout_per_category')}.")
@click.option("--image-size", type=click.IntRange(min=32, max=4096),
              help=f"Network input size {_defaults('image_size')}.")
@click.option("--minutes", type=FiniteFloat(min=0, min_open=True),
              help=f"Training budget in minutes {_defaults('minutes')}.")
@click.option("--steps", type=click.IntRange(min=1), help="Training length in optimizer steps (replaces --minutes).")
@click.option("--epochs", type=click.IntRange(min=1), help="Training length in passes (replaces --minutes).")
@click.option("--batch-size", type=click.IntRange(min=1), help=f"Training batch size {_defaults('batch_size')}.")
@click.option("--calib-count", type=click.IntRange(min=1), help=f"INT8 calibration images {_defaults('calib_count')}.")
@click.option("--bench-seconds", type=FiniteFloat(min=0),
              help=f"Seconds per benchmark path and batch size {_defaults('bench_seconds')}.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the training phantom (the held-out one: seed + 1000) and of the training.")
def quickstart(out, device, model, unet_base, patch, paper_filters, dice, ema, per_category, heldout_per_category,
               image_size, minutes, steps, epochs, batch_size, calib_count, bench_seconds, seed):
    """Synthesize, train, evaluate, export, predict and benchmark in one go."""
    require_extra("hemseg quickstart", "torch", "torchvision", "onnx", "onnxscript")
    from hemseg.cli import main as hemseg_main
    from hemseg.cli.bench_cmd import bench
    from hemseg.cli.export_cmd import export
    from hemseg.errors import HemsegError, UsageError, VerificationError

    if device == "cuda":  # before the phantoms are made: a refused run leaves nothing to block its rerun
        from hemseg.train.device import resolve_device

        resolve_device("cuda")
    gpu = device == "cuda" or (device == "auto" and _cuda())
    d = dict(GPU_DEFAULTS if gpu else CPU_DEFAULTS)
    if sum(x is not None for x in (minutes, steps, epochs)) > 1:
        raise UsageError("--minutes, --steps and --epochs exclude each other: give one training length")
    if steps is not None or epochs is not None:
        d.pop("minutes")
    given = {"model": None if model == "auto" else model, "unet_base": unet_base, "patch": patch,
             "per_category": per_category, "heldout_per_category": heldout_per_category, "image_size": image_size,
             "minutes": minutes, "steps": steps, "epochs": epochs, "batch_size": batch_size,
             "calib_count": calib_count, "bench_seconds": bench_seconds,
             "filters": "paper" if paper_filters else None, "dice": dice, "ema": ema}
    d.update({k: v for k, v in given.items() if v is not None})
    length = next(["--" + k, str(d[k])] for k in ("minutes", "steps", "epochs") if k in d)
    if not d["patch"] or d["patch"] >= d["image_size"]:
        d["patch"] = None  # whole slices
    if d["patch"] and d["patch"] % 16:  # what hemseg train checks, here before the phantoms are made
        raise UsageError(f"--patch must be 0 (whole slices) or a multiple of 16 below --image-size, got {d['patch']}")
    if unet_base is not None and "unet" not in d["model"]:
        click.echo(f"warning: --unet-base is not used: it sets the width of --model unet / attention_unet, not "
                   f"{d['model']}", err=True)
    model_args = ["--model", d["model"], *(["--unet-base", str(d["unet_base"])] if "unet" in d["model"] else []),
                  "--patch", str(d["patch"] or 0), *FILTER_ARGS[d["filters"]],
                  "--dice", d["dice"], *(["--ema"] if d["ema"] else [])]
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: folder exists and is not empty; give a new --out")
    out = out.absolute()  # the steps get its paths as arguments: a name like -qs would read as an option
    out.mkdir(parents=True, exist_ok=True)
    data, heldout, run, ev, exp, pred = (out / n for n in ("data", "heldout", "run", "eval", "export", "predict"))
    steps: list[dict] = []
    started = time.perf_counter()
    click.secho(f"hemseg quickstart on {'GPU' if gpu else 'CPU'}: {json.dumps(d)}", bold=True, err=True)

    _step("1/8 synthesize training phantom", hemseg_main, "hemseg",
          ["data", "synth", str(data), "--per-category", str(d["per_category"]), "--seed", str(seed), "--preview"], steps)
    _step("2/8 synthesize held-out phantom (other seed)", hemseg_main, "hemseg",
          ["data", "synth", str(heldout), "--per-category", str(d["heldout_per_category"]), "--seed",
           str((seed + 1000) % 2**31)], steps)
    _step(f"3/8 train {MODEL_TITLES[d['model']]} (hemseg recipe)", hemseg_main, "hemseg",
          ["train", str(data), "--out", str(run), *model_args, "--recipe", "hemseg", *length,
           "--batch-size", str(d["batch_size"]), "--image-size", str(d["image_size"]), "--device",
           "cuda" if gpu else "cpu", "--seed", str(seed), "--weights", "auto", "--no-progress"], steps)
    _step("4/8 evaluate on held-out slices", hemseg_main, "hemseg",
          ["eval", str(run / "best.pt"), str(heldout), "--out", str(ev), "--device", "cuda" if gpu else "cpu"], steps)
    try:
        _step("5/8 export ONNX FP32 + INT8 (verified)", export, "hemseg-export",
              [str(run / "best.pt"), "--out", str(exp), "--format", "onnx,onnx-int8",
               "--calib-count", str(d["calib_count"])], steps)
    except VerificationError as exc:
        # a missed INT8 gate removes model_int8.onnx but keeps the verified FP32 model: go on without INT8, say so
        if not (exp / "model.onnx").is_file():
            raise
        click.secho(f"warning: {exc}; continuing with the verified FP32 model only", fg="yellow", err=True)
    if (exp / "model_int8.onnx").is_file():  # the engine that ships, scored on the held-out masks too
        _step("6/8 evaluate the INT8 engine (ONNX Runtime) on held-out slices", hemseg_main, "hemseg",
              ["eval", str(exp / "model_int8.onnx"), str(heldout), "--out", str(out / "eval_int8"), "--backend",
               "ort-cpu", "--no-progress"], steps)
    image_dirs = sorted(str(p) for p in heldout.glob("*/images"))
    code = _step("7/8 predict held-out slices with overlays", hemseg_main, "hemseg",
                 ["predict", str(exp / "model.onnx"), *image_dirs, "--out", str(pred), "--overlay",
                  "--backend", "ort-cpu"], steps)
    if code not in (0,):
        raise HemsegError(f"hemseg predict reported failures (exit {code}); see {pred / 'summary.json'}")
    paths = "torch,ort,ort-int8" + (",torch-cuda,torch-cuda-fp16-graph,torch-cuda-gpupre,ort-cuda,trt" if gpu else "")
    _step("8/8 benchmark", bench, "hemseg-bench",
          [str(exp), "--paths", paths, "--batch-sizes", "1,4", "--seconds", str(d["bench_seconds"]), "--warmup", "2",
           "--images", "8", "--series", "8", "--series-batch-size", "4", "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md"), "--plot",
           str(out / "bench.png"), "-q"], steps)

    summary = _summarize(out, ev, exp, pred, d, gpu, steps, time.perf_counter() - started)
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2) + "\n")
    done()
    click.secho("\nWhere everything is:", bold=True)
    for label, p in (("phantom (train/val)", data), ("phantom preview", data / "preview.png"),
                     ("held-out phantom", heldout), ("training run", run), ("evaluation", ev / "summary.json"),
                     ("exported models", exp), ("predictions + overlays", pred), ("benchmark", out / "bench.md"),
                     ("this summary", out / "quickstart.json")):
        click.echo(f"  {label:24s} {p}")
    click.secho("\nSummary:", bold=True)
    for line in summary["lines"]:
        click.echo(f"  {line}")
    for warning in summary["warnings"]:
        click.secho(f"  warning: {warning}", fg="yellow")
    return 0


def _gate_text(entry: dict) -> str:
    """``passed on mask Dice`` / ``passed on logits`` / ``failed`` ... of one export format."""
    status = entry.get("status", "?")
    basis = (entry.get("parity") or {}).get("basis")
    return f"{status} on {basis}" if basis and status in ("passed", "failed") else status


def _int8_vs_fp32(parity: dict) -> str:
    if not parity:
        return "INT8 not verified"
    masks, logits = parity.get("masks") or {}, parity.get("logits") or {}
    if parity.get("measurable") is False:
        return (f"INT8 vs FP32: mask Dice not measurable, the FP32 masks have foreground in "
                f"{masks.get('images_with_foreground', '?')} of {parity.get('n_images', '?')} images; logits rel. L2 "
                f"{_fmt(logits.get('rel_l2_global'), '.2%')}, {logits.get('sign_flips', '?')} pixels flip")
    return (f"INT8 vs FP32: pooled mask Dice {_fmt(masks.get('dice'))}, gate 0.98; "
            f"{masks.get('lesion_presence_disagreements', '?')} of {parity.get('n_images', '?')} images disagree on "
            "lesion presence")


def _vs_torch(row: dict) -> str:
    agree = row.get("agreement_vs_torch") or {}
    if not row:
        return "INT8 vs torch n/a"
    if row.get("dice_measurable") is False:
        return "INT8 vs torch: mask agreement not measurable (the PyTorch masks are ~empty)"
    return (f"INT8 vs torch: pooled Dice {_fmt(row.get('dice_vs_torch'))}, "
            f"{agree.get('lesion_presence_disagreements', '?')} of {agree.get('n_images', '?')} slices disagree on "
            "lesion presence")


def _summarize(out: Path, ev: Path, exp: Path, pred: Path, d: dict, gpu: bool, steps: list[dict],
               wall: float) -> dict:
    metrics = _read(out / "run" / "metrics.json")
    evs = _read(ev / "summary.json")
    evs_int8 = _read(out / "eval_int8" / "summary.json")
    int8_heldout = (f"; held-out pooled Dice of the INT8 engine {_fmt(evs_int8.get('dice_global'))}, the PyTorch "
                    f"model's {_fmt(evs.get('dice_global'))}" if evs_int8 else "")
    rep = _read(exp / "export_report.json")
    bench = _read(out / "bench.json")
    preds = _read(pred / "summary.json")

    def row(path: str, bs: int = 1) -> dict:
        return next((r for r in bench.get("results", []) if r["path"] == path and r["batch_size"] == bs), {})

    ort, int8 = row("ort"), row("ort-int8")
    formats = rep.get("formats") or {}
    fp32_entry, int8_entry = formats.get("onnx") or {}, formats.get("onnx-int8") or {}
    les = evs.get("lesions") or {}
    n_ok = (preds.get("totals") or {}).get("ok", 0)
    model = metrics.get("model") or d.get("model") or "?"
    lines = [
        f"training {MODEL_TITLES.get(model, model)}: {metrics.get('steps', '?')} steps in "
        f"{_fmt(metrics.get('seconds'), '.0f')} s "
        f"({metrics.get('amp', '?')}), pooled validation Dice {_fmt(metrics.get('dice_global'))} (init: "
        f"{metrics.get('init', '?')}, {d['per_category'] * 12} phantom images at {d['image_size']} px"
        f"{f', {p} px patches' if (p := d.get('patch')) else ''}, {FILTER_TITLES[d.get('filters', 'paper')]}, "
        f"{d.get('dice', 'batch')} Dice{', EMA' if d.get('ema') else ''})",
        f"held-out phantom: pooled Dice {_fmt(evs.get('dice_global'))}{interval_text(evs)}, lesion recall "
        f"{_fmt(les.get('recall'))} "
        f"({les.get('gt_lesions_detected', '?')} of {les.get('gt_lesions', '?')} lesions), lesion precision "
        f"{_fmt(les.get('precision'))}; mean Dice per image {_fmt(evs.get('dice'))} ({evs.get('n_gt_empty', '?')} of "
        f"{evs.get('n_images', '?')} slices lesion-free count 1.0 when predicted empty), HD95 "
        f"{_fmt(evs.get('hd95'), '.1f')} px",
        f"export: ONNX FP32 {_gate_text(fp32_entry)}, INT8 {_gate_text(int8_entry)} "
        f"({_int8_vs_fp32(int8_entry.get('parity') or {})}{int8_heldout})",
        f"speed (batch 1, end to end): ORT FP32 {_times(ort.get('speedup_vs_torch'))}, ORT INT8 "
        f"{_times(int8.get('speedup_vs_torch'))} vs the PyTorch path ({_vs_torch(int8)})",
        f"predict: {n_ok} held-out slices segmented with overlays; whole quickstart {wall / 60:.1f} min on "
        f"{'GPU' if gpu else 'CPU'}",
    ]
    warnings = list(evs.get("warnings") or [])
    unmeasured = [name for name, e in formats.items() if (e.get("parity") or {}).get("measurable") is False]
    if unmeasured:
        warnings.append(f"the export's mask gates could not judge {', '.join(unmeasured)} (reference masks nearly "
                        "empty on the verification images); they were judged on the logits instead")
    return {"settings": d, "gpu": gpu, "wall_s": round(wall, 1), "steps": steps, "lines": lines,
            "warnings": warnings}
