"""``export_report.json``: what one ``hemseg-export`` run built, how long it took and how it verified.

Layout::

    {
      "hemseg_version": "...", "created": "<UTC ISO time>", "ok": true,
      "checkpoint": {"path", "sha256", "model", "image_size", "threshold", "threshold_tuned", "threshold_note",
                     "preprocess" (the PreprocessSpec as a dict), "labels"},
      "out_dir": "...", "verified": true, "gates": {...Gates...},
      "verification_data": {"source", "description", "n_images", "foreground_images", "ids"} | null,
      "calibration_data": {...same...} | null,
      "producer_versions": {...},
      "formats": {
        "<format>": {"files": [...], "file": "<main file>", "size_bytes", "sha256": {"<file>": "<hex>"},
                     "export_seconds", "verify_seconds",
                     "status": "passed" | "failed" | "not verified" | "skipped" | "error",
                     "parity": {...Parity.as_dict()...} | null, "error": "..." | null, "details": {...}}
      }
    }

Each gate's ``parity`` (:meth:`hemseg.export.parity.Parity.as_dict`) records ``basis`` (``"mask Dice"`` or
``"logits"``), ``decision`` (the one-line verdict), ``measurable``, ``reference_foreground_fraction``,
``images_with_foreground`` (of the reference masks), ``logits`` (relative L2, largest difference, threshold flips),
``masks`` (pooled Dice, smallest per-image Dice, lesion-presence disagreements, the measurability rule), the
reported ``metrics`` and the ``gates`` checked.

A format kept from an earlier export of the checkpoint (``kept_formats``) keeps its earlier entry, except that one
whose files are no longer the bytes that export recorded becomes ``unknown`` (``earlier_status`` beside it).

``status``: ``passed`` (every gate met), ``failed`` (a gate missed: the format's files were removed),
``not verified`` (``--no-verify``), ``skipped`` (a format it depends on failed), ``error`` (the step raised; its
files were removed). A failed, skipped or broken-off format's ``files`` is empty (``file`` null): none of them is
in the folder; ``details.removed_files`` names those a gate or an error removed.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import hemseg
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.writers import write_json

log = logging.getLogger(__name__)

REPORT_NAME = "export_report.json"
STATUSES = ("passed", "failed", "not verified", "skipped", "error")


@dataclass
class FormatResult:
    """One format's outcome. ``files`` are names inside the export folder, the first one the main file."""

    format: str
    files: list[str]
    status: str = "skipped"
    size_bytes: int | None = None
    #: each file's SHA-256 as built (and then verified): a file changed since is no longer the one the gates passed
    sha256: dict[str, str] = field(default_factory=dict)
    export_seconds: float | None = None
    verify_seconds: float | None = None
    parity: dict[str, Any] | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_files(self) -> list[str]:
        """The files this format leaves in the folder: none when it failed, broke off or was skipped (removed from
        the staging folder, or never built)."""
        return list(self.files) if self.status not in ("failed", "error", "skipped") else []

    def as_dict(self) -> dict[str, Any]:
        # a format that failed, broke off or was skipped names no file: a model there is not described by it
        files = self.kept_files
        return {
            "files": files, "file": files[0] if files else None, "size_bytes": self.size_bytes if files else None,
            "sha256": dict(self.sha256) if files else {}, "export_seconds": _round(self.export_seconds), "verify_seconds": _round(self.verify_seconds),
            "status": self.status, "parity": self.parity, "error": self.error, "details": self.details,
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 3)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def build_report(results: Iterable[FormatResult], **sections: Any) -> dict[str, Any]:
    """The report dict: ``sections`` (checkpoint, out_dir, verified, gates, data descriptions, ...) + formats."""
    results = list(results)
    report: dict[str, Any] = {"hemseg_version": hemseg.__version__, "created": utc_now(),
                              "ok": all(r.status in ("passed", "not verified") for r in results)}
    report.update(sections)
    report["formats"] = {r.format: r.as_dict() for r in results}
    return report


def add_kept_formats(report: dict, out_dir: Path, built: list[str], sha256: str) -> None:
    """The models an earlier export of this checkpoint left in ``out_dir`` stay beside this one's: the report lists
    them with their earlier entry (an unverified or unrecorded one as such), and ``verified`` holds only when the
    gates ran on every model in the folder (an INT8 model kept from a --no-verify run was reported as verified)."""
    import json

    from hemseg.export import chain  # chain does not import this module

    kept = chain.kept_formats(out_dir, built, sha256)
    earlier: dict = {}
    try:
        old = json.loads(read_regular_text(out_dir / REPORT_NAME))
        if (old.get("checkpoint") or {}).get("sha256") == sha256:
            # the export that built it, not the last, and the data its gate ran on (and, for INT8, its calibration):
            # the report's top-level data describe this run's models only, and a kept INT8's calibration was lost
            earlier = {k: dict(v, kept_from_export=v.get("kept_from_export") or old.get("created"),
                               verification_data=v.get("verification_data") or old.get("verification_data"),
                               **({"calibration_data": v.get("calibration_data") or old.get("calibration_data")}
                                  if k in chain.CALIBRATED else {}))
                       for k, v in (old.get("formats") or {}).items()}
    except (OSError, ValueError, AttributeError):
        pass
    for fmt in kept:
        this_run = report["formats"].get(fmt)  # built now and broken off (an error): said beside the earlier entry
        entry = earlier.get(fmt)
        changed = _changed_since(out_dir, entry) if entry is not None else []
        if changed:  # not the file its gates checked: the earlier verdict does not carry over
            log.warning("%s: %s changed since the export that checked it (its SHA-256 differs from the report's, or "
                        "none was recorded): its verification is unknown; export %s again", out_dir,
                        ", ".join(changed), fmt)
            entry = dict(entry, status="unknown", earlier_status=entry.get("status"),
                         details={**(entry.get("details") or {}),
                                  "note": f"{', '.join(changed)} changed since the export that checked it"})
        report["formats"][fmt] = entry or {
            "files": list(chain.FILES[fmt]), "file": chain.FILES[fmt][0], "status": "unknown", "parity": None,
            "error": None, "details": {"note": "kept from an earlier export of this checkpoint, which left no record "
                                               "of its verification"}}
        if this_run is not None:
            report["formats"][fmt] = dict(report["formats"][fmt], this_run={"status": this_run.get("status"),
                                                                            "error": this_run.get("error")})
    report["kept_formats"] = kept
    report["verified"] = bool(report["verified"]) and all(report["formats"][f].get("status") == "passed" for f in kept)


def _changed_since(out_dir: Path, entry: dict) -> list[str]:
    """The files of a kept format's earlier report entry that are not the bytes its export recorded (another
    SHA-256, or none recorded for a checked file): an entry 'passed' must not vouch for a file changed since."""
    from hemseg.runtime.io.hashing import cached_sha256

    if entry.get("status") not in ("passed", "not verified"):
        return []
    recorded = entry.get("sha256") if isinstance(entry.get("sha256"), dict) else {}
    changed = []
    for name in entry.get("files") or []:
        path = out_dir / str(name)
        try:
            if name not in recorded or cached_sha256(path) != recorded[name]:
                changed.append(str(name))
        except OSError:
            changed.append(str(name))
    return changed


def write_report(out_dir: str | Path, report: dict[str, Any]) -> Path:
    """Write ``out_dir/export_report.json`` atomically; returns its path."""
    return write_json(Path(out_dir) / REPORT_NAME, report)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


def _key_metrics(r: FormatResult) -> str:
    if not r.parity:
        return r.error or ""
    m = r.parity.get("metrics", {})
    measurable = r.parity.get("measurable", True)
    parts = []
    for key, label, fmt in (("rel_l2_max", "relL2", ".1e"), ("rel_l2_vs_fp32_global", "relL2/fp32", ".1e"),
                            ("dice_vs_pytorch", "dice/torch", ".4f"), ("dice_vs_fp32", "dice/fp32", ".4f"),
                            ("dice_vs_truth", "dice/truth", ".4f")):
        if key == "dice_vs_truth" and key in m and m[key] is None:
            parts.append(f"{label} n/a (no lesion in the references)")
            continue
        if key in ("dice_vs_pytorch", "dice_vs_fp32") and key in m and not measurable:  # (null in the report)
            parts.append(f"{label} not measurable")
        elif m.get(key) is None or (key == "rel_l2_vs_fp32_global" and measurable):
            continue
        else:
            parts.append(f"{label} {m[key]:{fmt}}")
    return ", ".join(parts)


def decision_lines(results: Iterable[FormatResult]) -> list[str]:
    """One line per verified format: ``<format>: passed|FAILED on mask Dice|logits (...)``."""
    return [f"{r.format}: {r.parity['decision']}" for r in results if r.parity and r.parity.get("decision")]


def format_table(results: Iterable[FormatResult]) -> str:
    """A short fixed-width table: format, file, size, export time, status, key parity numbers."""
    rows = [("format", "file", "size", "export", "status", "parity")]
    for r in results:
        kept = r.kept_files  # a failed format's removed model is not listed as if it were there
        rows.append((r.format, kept[0] if kept else "-", _size(r.size_bytes if kept else None),
                     "-" if r.export_seconds is None else f"{r.export_seconds:.1f} s", r.status, _key_metrics(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5] for row in rows).rstrip()
