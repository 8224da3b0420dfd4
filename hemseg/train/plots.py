"""Figures of ``hemseg report`` (matplotlib with the Agg backend: no display needed).

- :func:`plot_training_curves`: three panels (training loss, validation loss, validation Dice per epoch), one line per
  run, read from each run's ``history.csv`` (columns of :data:`hemseg.train.fit.HISTORY_COLUMNS`).
- :func:`plot_metric_bars`: grouped bars of Dice, IoU, precision and recall per method (missing values drawn as
  empty bars, never as 0).

Both write the PNG atomically and return its file name (relative to its folder, for Markdown links).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from hemseg.errors import InputError
from hemseg.runtime.io.regular import read_regular_text
from hemseg.runtime.io.writers import atomic_write_bytes

#: metrics.png's groups: the pooled Dice first (what REPORT.md leads with; one mean per image hides a model that finds
#: little on many lesion-free slices), then the means per image
BAR_KEYS = ("dice_global", "dice", "iou", "precision", "recall")
BAR_LABELS = {"dice_global": "Dice\n(pooled)", "dice": "Dice\n(mean per image)", "iou": "IoU"}
#: the validation Dice pooled over all pixels (what the hemseg recipe selects on and REPORT.md leads with) beside the
#: mean per slice (what the paper recipe selects on): one "validation Dice" panel of the mean showed 0.25 for
#: U-Nets that found nothing (the lesion-free slices' 1s; a QA finding of stop 52)
CURVE_PANELS = (("train_loss", "training loss"), ("val_loss", "validation loss"),
                ("val_dice_global", "validation Dice (pooled)"), ("val_dice", "validation Dice (mean per slice)"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


#: history.csv columns that hold text, not numbers (the compute precision: fp32, bf16, fp16)
TEXT_COLUMNS = ("precision",)


def read_history(path: str | Path) -> dict[str, list[float]]:
    """``history.csv`` -> ``{column: values}`` (floats; ``epoch`` too; the text columns of
    :data:`TEXT_COLUMNS` are left out). InputError when unreadable."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(io.StringIO(read_regular_text(path))))
    except OSError as exc:
        raise InputError(path, f"cannot read the training history: {exc.strerror or exc}") from None
    if not rows or "epoch" not in rows[0]:
        raise InputError(path, "not a training history (no 'epoch' column or no rows)")
    try:
        return {k: [float(r[k]) for r in rows] for k in rows[0] if k not in TEXT_COLUMNS}
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"non-numeric value in the training history: {exc}") from None


def _save(fig: Any, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def plot_training_curves(runs: Sequence[tuple[str, str | Path]], path: str | Path) -> str:
    """Training curves of ``runs`` (``(label, history.csv)`` pairs) into the PNG ``path``."""
    plt = _pyplot()
    path = Path(path)
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4.2 * len(CURVE_PANELS), 3.4))
    for label, history_path in runs:
        h = read_history(history_path)
        for ax, (col, _) in zip(axes, CURVE_PANELS):
            if col in h:  # (a history of an earlier hemseg may lack a column)
                ax.plot(h["epoch"], h[col], marker="o", markersize=3, label=label)
    from matplotlib.ticker import MaxNLocator

    for ax, (_, title) in zip(axes, CURVE_PANELS):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax, (col, _) in zip(axes, CURVE_PANELS):
        if col.startswith("val_dice"):
            ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_metric_bars(methods: Mapping[str, Mapping[str, Any]], path: str | Path,
                     keys: Sequence[str] = BAR_KEYS) -> str:
    """Grouped bar chart: one group per metric of ``keys``, one bar per method (``{method: {metric: value}}``)."""
    plt = _pyplot()
    path = Path(path)
    names = list(methods)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 1.0 * len(keys) + 0.22 * len(names) * len(keys))), 3.8))
    for i, name in enumerate(names):
        values = []
        for k in keys:
            v = methods[name].get(k)
            values.append(float(v) if v is not None and math.isfinite(float(v)) else 0.0)
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(keys))]
        bars = ax.bar(xs, values, width, label=name, color=f"C{i % 10}")
        for bar, k in zip(bars, keys):
            v = methods[name].get(k)
            if v is None or not math.isfinite(float(v)):
                bar.set_fill(False)
                bar.set_hatch("//")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([BAR_LABELS.get(k, k.capitalize()) for k in keys])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test split (pooled Dice;\nthe others: mean per image)", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    # each method's colour (a legend drawn from the bars took a first bar drawn empty, a missing pooled Dice)
    ax.legend(handles=[Patch(color=f"C{i % 10}", label=name) for i, name in enumerate(names)], fontsize=7, ncol=2,
              loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    return _save(fig, path)
