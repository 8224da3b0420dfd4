"""``hemseg-export CHECKPOINT --out DIR``: ONNX FP32 / FP16 / INT8, OpenVINO INT8 and the TensorRT FP16 engine, verified.

The command chains the steps of :mod:`hemseg.export` (each returns the path it wrote): load the checkpoint ->
``model.onnx`` -> ``model_fp16.onnx`` -> ``model.plan``, ``model.onnx`` -> ``model_int8.onnx`` (ONNX Runtime
INT8) and ``model.onnx`` -> ``model_ov_int8.xml`` (NNCF INT8, OpenVINO IR); each format is
verified right after it is written (see :mod:`hemseg.export.parity`) and removed again if it misses a gate.
``export_report.json`` records everything; a short table is echoed. Exit status: 0 when every requested format was
written (and passed, unless ``--no-verify``), 1 on a missed gate or any error.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import click

from hemseg import __version__
from hemseg.cli._base import NonEmptyPath, done, require_extra, run_main, setup_logging
from hemseg.errors import UsageError
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.writers import final_names

log = logging.getLogger("hemseg.export")

DEFAULT_BATCH = "1,8,32"
DEFAULT_WORKSPACE_MB = 2048


@click.command(name="hemseg-export")
@click.version_option(__version__, prog_name="hemseg-export")
@click.argument("checkpoint", type=NonEmptyPath(path_type=Path))
@click.option("--out", "-o", "out_dir", required=True, type=NonEmptyPath(path_type=Path), help="Folder to write into.")
@click.option("--format", "formats", multiple=True, default=("onnx",), show_default=True,
              help="Comma-separated, or repeated: onnx, onnx-fp16, onnx-int8, openvino-int8, trt (dependencies are "
                   "built first).")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (18 or newer).")
@click.option("--batch", default=DEFAULT_BATCH, show_default=True,
              help="TensorRT optimization profile MIN,OPT,MAX batch sizes (trt only).")
@click.option("--calib", type=NonEmptyPath(path_type=Path),
              help="hemseg dataset for INT8 calibration (onnx-int8, openvino-int8) and verification (default: the "
                   "checkpoint's own validation split when its data folder is readable, else rendered phantom "
                   "images).")
@click.option("--calib-count", type=click.IntRange(min=1), default=64, show_default=True,
              help="INT8 calibration images (the same ones for onnx-int8 and openvino-int8).")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Run the parity gates.")
@click.option("--workspace-mb", type=click.IntRange(min=1), default=DEFAULT_WORKSPACE_MB, show_default=True,
              help="TensorRT builder workspace (trt only).")
@click.option("--timing-cache", type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="TensorRT timing cache file, read and updated (trt only).")
@click.option("-v", "--verbose", count=True, help="Debug messages (-vv: also other libraries' debug records and warnings' tracebacks).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def export(checkpoint: Path, out_dir: Path, formats: tuple[str, ...], opset: int, batch: str, calib: Path | None,
           calib_count: int, verify: bool, workspace_mb: int, timing_cache: Path | None, verbose: int,
           quiet: bool) -> int:
    """Export a hemseg CHECKPOINT to ONNX (FP32, FP16, INT8), OpenVINO INT8 and TensorRT, with parity checks.

    CHECKPOINT may be the folder of a `hemseg train --folds K` run: each fold_<k>/best.pt is exported into
    OUT/fold_<k>/, and `hemseg predict OUT` / `hemseg eval OUT` then average the folds (nnU-Net's fold ensemble).
    """
    require_extra("hemseg-export", "torch", "torchvision", "onnx", "onnxscript")
    setup_logging(verbose, quiet)
    from hemseg.export import chain
    from hemseg.export.onnx_fp32 import check_opset

    wanted = chain.parse_formats(",".join(formats))  # --format a --format b: both (the last alone was built)
    check_opset(opset)
    profile = None
    if "trt" in wanted:
        from hemseg.export.batch_profile import parse_batch_profile

        profile = parse_batch_profile(batch)
        chain.require_tensorrt()
    if "openvino-int8" in wanted:
        from hemseg.export.openvino_int8 import require_nncf

        require_nncf()
    if "trt" not in wanted:
        ctx = click.get_current_context()
        for name in ("batch", "workspace_mb", "timing_cache"):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                log.warning("--%s only applies to --format trt; ignored", name.replace("_", "-"))
    folds = _fold_checkpoints(checkpoint)
    jobs = [(c, out_dir / c.parent.name) for c in folds] if folds else [(checkpoint, out_dir)]
    for ckpt, out in jobs:
        chain.check_out_dir(out, ckpt, wanted)
    if folds:  # the top-level models a K-fold export clears, and the fold list it writes
        chain.check_no_foreign_models(out_dir)
        from hemseg.runtime.model_file import FOLDS_FILE

        if (out_dir / FOLDS_FILE).exists() and not _is_fold_list(out_dir):
            raise UsageError(f"{out_dir / FOLDS_FILE} is not a fold list hemseg-export wrote, and a K-fold export "
                             f"into {out_dir} writes its own there: move it away or choose another --out")
    from hemseg.runtime.io.lock import folder_lock

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(out_dir, "hemseg-export"):
            return _export_all(checkpoint, out_dir, folds, jobs, wanted, opset, profile, calib, calib_count, verify,
                               workspace_mb, timing_cache)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # refused before anything was written (an unreadable checkpoint, say): no empty --out
        raise


def _export_all(checkpoint, out_dir, folds, jobs, wanted, opset, profile, calib, calib_count, verify, workspace_mb,
                timing_cache) -> int:
    """The export proper, under the folder's lock: the layout cleared, each checkpoint exported."""
    from hemseg.errors import VerificationError
    from hemseg.runtime.io.writers import write_json
    from hemseg.runtime.model_file import FOLDS_FILE, artifacts

    _clear_stale_staging(out_dir)
    from hemseg.runtime.io.hashing import sha256_file

    # each fold's checkpoint: predict refuses a fold exported from another (an export cut short while it replaced
    # an earlier one leaves folds of two runs)
    folds_doc = {"folds": [c.parent.name for c in folds], "source": str(checkpoint.resolve()),
                 "checkpoint_sha256": {c.parent.name: sha256_file(c) for c in folds}}
    if folds and not artifacts(out_dir):
        # before the first fold, where predict reads the folds: an export cut short is known to be incomplete (a
        # top-level model of an earlier single export is what predict runs until this export ends)
        write_json(out_dir / FOLDS_FILE, folds_doc)
    bad = []
    for ckpt, out in jobs:
        if folds:
            click.echo(f"{out.name}: {ckpt}")
        failed, loaded_sha, lines = _export_one(ckpt, out, wanted, opset, profile, calib, calib_count, verify,
                                                workspace_mb, timing_cache)
        if folds:  # each fold's table as it is done; a single export's once all is done
            click.echo("\n".join(lines))
        bad += [f"{out.name}: {f}" for f in failed] if folds else failed
        if folds and folds_doc["checkpoint_sha256"].get(out.name) != loaded_sha:
            # the fold's best.pt was replaced since this export began (a training still running): the list names
            # the version its models were made from, which predict checks them against
            log.warning("%s: %s changed since this export began; %s is an export of the new version", out.name,
                        ckpt, out)
            folds_doc["checkpoint_sha256"][out.name] = loaded_sha
    # only now is the other layout cleared (an interrupted export leaves the earlier one usable)
    _clear_other_layout(out_dir, len(folds))
    if folds:
        write_json(out_dir / FOLDS_FILE, folds_doc)
    done()
    if folds:
        click.echo(f"{len(folds)} fold exports in {out_dir}: hemseg predict {out_dir} ... averages them")
    else:
        click.echo("\n".join(lines))
    if bad:
        raise VerificationError("; ".join(bad))
    return 0


def _clear_stale_staging(out_dir: Path) -> None:
    """Staging folders of an export that was killed (SIGKILL, a power cut): no other export can be using them, as
    this one holds the folder's lock."""
    for stale in list(out_dir.glob(".export-*")) + [d for f in out_dir.glob("fold_*") if f.is_dir()
                                                     for d in f.glob(".export-*")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
            log.info("removed %s, the staging folder of an export that did not finish", stale)


def _clear_other_layout(out_dir: Path, n_folds: int) -> None:
    """An export folder holds one layout: a K-fold export has no models of its own (hemseg predict would run a
    leftover top-level model.onnx instead of averaging the folds) and no fold_<k> beyond K (it would be averaged
    in); a single export has no fold_<k> folders."""
    from hemseg.export import chain
    from hemseg.runtime.model_file import fold_dirs

    if not out_dir.is_dir():
        return
    if not n_folds and _is_fold_list(out_dir):
        from hemseg.runtime.model_file import FOLDS_FILE

        chain.remove_files(out_dir, [FOLDS_FILE])
        log.warning("%s: removed %s, the fold list of an earlier K-fold export here", out_dir, FOLDS_FILE)
    if n_folds:
        names = [n for f in chain.FORMATS for n in chain.FILES[f] if (out_dir / n).exists()]
        names += [n for n in ("export_report.json", "export_report.md") if (out_dir / n).exists()]
        if names:
            chain.remove_files(out_dir, names)
            log.warning("%s: removed %s, the models of an earlier single export, which hemseg predict would have "
                        "run instead of the %d folds", out_dir, ", ".join(names), n_folds)
    for d in fold_dirs(out_dir):
        k = int(d.name.split("_")[1])
        if not n_folds:
            chain.clear_export_tree(d, "a fold export of an earlier K-fold export here, which this single export "
                                       "replaces")
        elif k > n_folds:
            chain.clear_export_tree(d, f"a fold export beyond this run's {n_folds} folds, which hemseg predict "
                                       "would average in")


def _is_fold_list(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a fold list hemseg-export wrote."""
    from hemseg.runtime.model_file import read_fold_list

    return read_fold_list(out_dir) is not None


def _fold_checkpoints(path: Path) -> list[Path]:
    """``fold_<k>/best.pt`` (by k) of a ``hemseg train --folds K`` run folder; [] for anything else."""
    from hemseg.runtime.io.regular import NOT_REGULAR
    from hemseg.runtime.model_file import fold_dirs

    if (path / "best.pt").exists():
        return []
    folds = fold_dirs(path)
    if not any((d / "best.pt").is_file() for d in folds):
        return []
    # a fold that never finished, or never began: exporting the others would make a smaller ensemble unsaid (a fold
    # stopped midway has a best.pt of its own, from an early validation, but no metrics.json)
    problems = [f"{d.name} has no best.pt" if not (d / "best.pt").exists() else f"{d.name}/best.pt is {NOT_REGULAR}"
                for d in folds if not (d / "best.pt").is_file()]
    problems += [f"{d.name} did not finish (no metrics.json)" for d in folds
                 if (d / "best.pt").is_file() and not (d / "metrics.json").is_file()]
    planned = _planned_folds(path)
    problems += [f"fold_{k} never began (config.json: {planned} folds)" for k in range(1, planned + 1)
                 if not (path / f"fold_{k}").is_dir()]
    if problems:
        raise UsageError(f"{path}: {'; '.join(problems)}: finish the run (hemseg train ... --resume), or export the "
                         "finished folds' best.pt one by one")
    return [d / "best.pt" for d in folds]


def _planned_folds(path: Path) -> int:
    """The fold count the run's ``config.json`` says (0 when it says none or cannot be read)."""
    import json

    try:
        folds = json.loads(read_regular_text(path / "config.json")).get("folds")
        return int(folds) if folds else 0
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _export_one(checkpoint: Path, out_dir: Path, wanted, opset: int, profile, calib: Path | None, calib_count: int,
                verify: bool, workspace_mb: int, timing_cache: Path | None) -> tuple[list[str], str, list[str]]:
    """Export one checkpoint into ``out_dir``; the formats that missed a gate or failed, as ``format: error``, the
    SHA-256 of the checkpoint version it was made from, and the lines that report it (the table, the decisions)."""
    from hemseg.errors import HemsegError
    from hemseg.export import chain, parity
    from hemseg.export.report import FormatResult, build_report, decision_lines, format_table, write_report

    source = _load_source(checkpoint)
    data = _load_data(source["meta"], source["config"], calib, calib_count, verify,
                      any(f in wanted for f in chain.CALIBRATED))
    out_dir.mkdir(parents=True, exist_ok=True)

    gates = parity.Gates()
    results = {f: FormatResult(f, list(chain.FILES[f])) for f in wanted}
    # every format is built and verified in a staging folder and moved into --out only once the export is over:
    # an interrupted or killed export leaves the folder as it was (no unverified model under a final name, no
    # folder mixing two checkpoints), and a predict reading --out meanwhile never runs a model not yet verified
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        with final_names(stage, out_dir):
            steps = _Steps(source, data, stage, opset, gates, verify, profile, workspace_mb, timing_cache, results)
            try:
                with chain.quiet_library_logs():
                    for fmt in wanted:
                        dep = chain.NEEDS[fmt]
                        if dep is not None and results[dep].status not in ("passed", "not verified"):
                            results[fmt].error = f"not built: {dep} {results[dep].status}"
                            continue
                        chain.run_step(results[fmt], stage, *steps.of(fmt))
            except HemsegError:
                _write(stage, out_dir, results, source, data, gates, verify, build_report, write_report)
                chain.publish(stage, out_dir, results, source["sha256"])
                raise
            _write(stage, out_dir, results, source, data, gates, verify, build_report, write_report)
            chain.publish(stage, out_dir, results, source["sha256"])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ([f"{r.format}: {r.error}" for r in results.values() if r.status not in ("passed", "not verified")],
            source["sha256"], [format_table(results.values()), *decision_lines(results.values())])


def _load_source(checkpoint: Path) -> dict:
    """The checkpoint's model (eval, CPU), config, SHA-256 and FP32 metadata."""
    from hemseg.export.metadata import metadata_from_config
    from hemseg.train.checkpoint import load_checkpoint_hashed, untuned_threshold_note

    model, config, sha = load_checkpoint_hashed(checkpoint)  # the hash of the bytes the weights came from
    meta = metadata_from_config(config, checkpoint, sha, "fp32")
    untuned = untuned_threshold_note(checkpoint, config)
    if untuned:
        log.warning("%s", untuned)
    return {"path": checkpoint.resolve(), "model": model, "config": config, "sha256": sha, "meta": meta,
            "threshold_note": untuned}


def _load_data(meta, config: dict, calib: Path | None, calib_count: int, verify: bool, int8: bool) -> dict:
    """Verification images (when verifying) and calibration images (for INT8), preprocessed with the model's spec:
    from ``--calib DATA``, else from the checkpoint's own validation split, else (with a warning) the phantom."""
    from hemseg.export import calib as calib_mod

    spec = meta.preprocess
    if calib is not None:
        if not (verify or int8):
            log.warning("--calib is not used: nothing to calibrate (no onnx-int8 / openvino-int8) or verify "
                        "(--no-verify)")
            return {"verify": None, "calib": None}
        n_verify = calib_mod.VERIFY_COUNT if verify else 0
        calib_set, verify_set = calib_mod.dataset_sets(calib, spec, calib_count if int8 else 0, n_verify, meta.labels)
        return {"verify": verify_set if verify else None, "calib": calib_set if int8 else None}
    if not (verify or int8):
        return {"verify": None, "calib": None}
    try:
        calib_set, verify_set = calib_mod.training_split_sets(config, spec, calib_count if int8 else 0,
                                                              calib_mod.VERIFY_COUNT if verify else 0, meta.labels)
        log.info("verification and calibration on the model's own data: %s", verify_set.description if verify
                 else calib_set.description)
        return {"verify": verify_set if verify else None, "calib": calib_set if int8 else None}
    except calib_mod.SplitUnavailable as exc:
        log.warning("%s", calib_mod.phantom_fallback_warning(exc.reason, verify, int8))
    return {"verify": calib_mod.phantom_verification(spec) if verify else None,
            "calib": calib_mod.phantom_calibration(spec, calib_count) if int8 else None}


class _Steps:
    """The build and verify callables of each format, sharing the FP32 reference logits."""

    def __init__(self, source, data, out_dir, opset, gates, verify, profile, workspace_mb, timing_cache, results):
        self.source, self.data, self.out_dir, self.opset, self.gates = source, data, out_dir, opset, gates
        self.verify, self.profile, self.workspace_mb, self.timing_cache = verify, profile, workspace_mb, timing_cache
        self.results = results
        self.fp32_run = None  # the FP32 ONNX model's pipeline run: the reference of the other formats

    def of(self, fmt: str):
        build, check = {"onnx": (self.build_fp32, self.verify_fp32), "onnx-fp16": (self.build_fp16, self.verify_fp16),
                        "onnx-int8": (self.build_int8, self.verify_int8), "trt": (self.build_trt, self.verify_trt),
                        "openvino-int8": (self.build_ov_int8, self.verify_ov_int8)}[fmt]
        return build, (check if self.verify else None)

    # -- builds -----------------------------------------------------------------------------------------------
    def build_fp32(self) -> Path:
        from hemseg.export.onnx_fp32 import export_fp32

        s = self.source
        path = export_fp32(s["model"], s["meta"], s["path"], self.out_dir, self.opset)
        self.results["onnx"].details.update({"opset": self.opset, "exporter": "torch.onnx.export(dynamo=True)"})
        return path

    def build_fp16(self) -> Path:
        from hemseg.export.onnx_fp16 import convert_fp16, fp16_initializers, kept_fp32_ops
        from hemseg.export.onnx_io import load_onnx

        s = self.source
        path = convert_fp16(self.out_dir / "model.onnx", s["meta"], s["path"], self.out_dir)
        model = load_onnx(path)
        f16, total = fp16_initializers(model)
        self.results["onnx-fp16"].details.update({"float16_initializers": f16, "float_initializers": total,
                                                  "ops_kept_float32": kept_fp32_ops(model)})
        return path

    def build_int8(self) -> Path:
        from hemseg.export.onnx_int8 import qdq_counts, quantization_record, quantize_int8
        from hemseg.export.onnx_io import load_onnx

        s, calib = self.source, self.data["calib"]
        path = quantize_int8(self.out_dir / "model.onnx", calib.images, s["meta"], s["path"], self.out_dir)
        model = load_onnx(path)
        self.results["onnx-int8"].details.update({
            "quantization": quantization_record(model),
            "calibration": calib.description if calib.source == "dataset"
            else f"no --calib given: calibrated on {calib.description}",
            **qdq_counts(model)})
        return path

    def build_ov_int8(self) -> Path:
        from hemseg.export.openvino_int8 import quantization_record_ir, quantize_openvino_int8

        s, calib = self.source, self.data["calib"]
        path = quantize_openvino_int8(self.out_dir / "model.onnx", calib.images, s["meta"], s["path"], self.out_dir)
        self.results["openvino-int8"].details.update({
            "quantization": quantization_record_ir(path),
            "calibration": calib.description if calib.source == "dataset"
            else f"no --calib given: calibrated on {calib.description}"})
        return path

    def build_trt(self) -> Path:
        from hemseg.export.metadata import with_precision
        from hemseg.export.trt_build import build_engine

        meta = with_precision(self.source["meta"], "fp16", extra_producers=("onnxconverter-common",))
        return build_engine(self.out_dir / "model_fp16.onnx", self.out_dir, self.profile, self.workspace_mb,
                            self.timing_cache, meta)

    # -- verification -----------------------------------------------------------------------------------------
    def _threshold(self) -> float:
        return self.source["meta"].threshold

    def verify_fp32(self, path: Path):
        from hemseg.export import parity

        result, self.fp32_run = parity.verify_fp32(path, self.source["model"], self.data["verify"],
                                                   self.source["meta"].preprocess, self._threshold(), self.gates)
        return result

    def _vs_fp32(self, open_runner, path, min_dice, max_rel_l2, runtime_gate=True):
        from hemseg.export import parity

        return parity.verify_format(open_runner, path, self.fp32_run, self.data["verify"],
                                    self.source["meta"].preprocess, self._threshold(), min_dice, max_rel_l2,
                                    self.gates, runtime_gate)

    def verify_fp16(self, path: Path):
        from hemseg.export import parity

        return self._vs_fp32(parity.onnx_runner, path, self.gates.fp16_min_dice, self.gates.fp16_max_rel_l2)

    def verify_int8(self, path: Path):
        from hemseg.export import parity

        return self._vs_fp32(parity.onnx_runner, path, self.gates.int8_min_dice, self.gates.int8_max_rel_l2)

    def verify_ov_int8(self, path: Path):
        from hemseg.export.openvino_int8 import openvino_runner

        return self._vs_fp32(openvino_runner, path, self.gates.int8_min_dice, self.gates.int8_max_rel_l2)

    def verify_trt(self, path: Path):
        from hemseg.export import parity

        return self._vs_fp32(parity.trt_runner, path, self.gates.trt_min_dice, self.gates.trt_max_rel_l2,
                             runtime_gate=False)


def _write(report_dir, out_dir, results, source, data, gates, verify, build_report, write_report) -> Path:
    """The export report, written into ``report_dir`` (the staging folder) for ``out_dir``."""
    from hemseg.export.report import add_kept_formats

    meta = source["meta"]
    sections = {
        # whether the threshold was tuned, and why not, in the report too (only logged: a QA finding of stop 52)
        "checkpoint": {"path": str(source["path"]), "sha256": source["sha256"], "model": meta.model,
                       "image_size": meta.image_size, "threshold": meta.threshold,
                       "threshold_tuned": meta.threshold_tuned, "threshold_note": source.get("threshold_note"),
                       # what the models expect, readable without opening one (only in their metadata: QA, stop 56)
                       "preprocess": meta.preprocess.to_dict(), "labels": list(meta.labels) if meta.labels is not None else None},
        "out_dir": str(out_dir.resolve()),
        "verified": bool(verify),
        "gates": gates.as_dict() if verify else None,
        "verification_data": data["verify"].summary() if data.get("verify") is not None else None,
        "calibration_data": data["calib"].summary() if data.get("calib") is not None else None,
        "producer_versions": meta.producer_versions,
    }
    if not verify:
        for r in results.values():
            if r.status == "not verified":
                r.details.setdefault("note", "not verified (--no-verify)")
    report = build_report(results.values(), **sections)
    from hemseg.export.chain import rebuilt

    add_kept_formats(report, out_dir, rebuilt(results), source["sha256"])
    return write_report(report_dir, report)


def entry() -> None:
    run_main(export, "hemseg-export")


if __name__ == "__main__":
    entry()
