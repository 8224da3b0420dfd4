"""``REPORT.md`` of ``hemseg report``: Markdown tables written from the report dict (``report.json``), nothing else.

Number formats (so a reader, or a test, can parse them back): ratios (Dice, IoU, precision, recall, accuracy) with 4
decimals, HD95 (pixels) with 2, wall times in seconds with 1, parameters as integers with thousands separators.
``n/a`` marks a missing or undefined value (e.g. HD95 when no test image has a lesion in both masks).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from hemseg.runtime.io.writers import atomic_write_bytes

#: the pooled Dice first (a model that finds no lesion scores 0 there, while its mean per image counts the
#: lesion-free images it left empty as 1), as ``hemseg eval`` and ``per_category.md`` put it
METRIC_COLUMNS = ("dice_global", "dice", "iou", "precision", "recall", "accuracy", "hd95")
HEADERS = {"dice_global": "Dice (pooled)", "dice": "Dice (mean)", "iou": "IoU", "precision": "Precision", "recall": "Recall", "accuracy": "Accuracy",
           "hd95": "HD95 (px)"}
#: The section titles, in order (tests look for them).
SECTIONS = ("## Setup", "## Held-out test split", "## Preprocessing ablation", "## Per-category results",
            "## Model comparison", "## Recipe comparison", "## Classical baseline and post-processing",
            "## Cross-validation", "## Training curves and metrics", "## Wall times")


def fmt_num(v: Any, digits: int = 4) -> str:
    """A number with ``digits`` decimals; ``n/a`` for None/NaN/inf."""
    if v is None or isinstance(v, bool):
        return "n/a"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return f"{f:.{digits}f}" if math.isfinite(f) else "n/a"


def fmt_metric(key: str, v: Any) -> str:
    return fmt_num(v, 2 if key.startswith("hd95") else 4)


def table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def vs_cell(run: dict[str, Any], key: str = "dice") -> str:
    """``+0.052 [-0.011, +0.118]``: a run's Dice (``key``: ``dice_global`` pooled, ``dice`` mean per image) minus
    the main FCN-ResNet50's on the same test images, with the 95 % paired-bootstrap interval (``vs_main``); ``-``
    for the main run itself or without one."""
    from hemseg.runtime.bootstrap import difference_text, units_text

    vs = run.get("vs_main") or {}
    text = difference_text(vs.get(key))
    if text and vs.get("too_few_units"):
        text += f" (only {units_text(vs['n_units'], vs['unit'])}: no verdict)"
    return text or "-"


VS_HEADS = {"dice_global": "pooled Dice - FCN-ResNet50 [95 % CI]", "dice": "mean Dice - FCN-ResNet50 [95 % CI]"}
VS_NOTE = ("pooled / mean Dice - FCN-ResNet50: the run's pooled Dice and its mean Dice per image minus the main "
           "FCN-ResNet50's on the same test images, each with a 95 % paired-bootstrap interval (2,000 resamples of "
           "the images, or of the cases where cases span several slices); an interval that contains 0 does not tell "
           "the two apart.")


def vs_cells(run: dict[str, Any]) -> list[str]:
    return [vs_cell(run, key) for key in VS_HEADS]


def _metric_cells(block: dict[str, Any]) -> list[str]:
    return [fmt_metric(k, block.get(k)) for k in METRIC_COLUMNS]


def _metric_head(first: Sequence[str]) -> list[str]:
    return list(first) + [HEADERS[k] for k in METRIC_COLUMNS]


def init_sentence(init: str | None) -> str:
    """``init`` of a run in plain words."""
    if not init or init == "random":
        return "random initialization (no pretrained weights)"
    if init.startswith("coco-cache:"):
        return f"COCO-pretrained FCN-ResNet50 weights from the local torch cache ({init.split(':', 1)[1]})"
    if init.startswith("imagenet-cache:"):
        return f"ImageNet-pretrained ResNet50 backbone from the local torch cache ({init.split(':', 1)[1]})"
    if init.startswith("file:"):
        return f"weights from the file {init.split(':', 1)[1]}"
    return init


def _seconds(v: Any) -> str:
    return fmt_num(v, 1)


def _setup(r: dict[str, Any]) -> list[str]:
    s, m, v = r["settings"], r["machine"], r["versions"]
    runs = r["runs"]
    inits = sorted({(run["model"], run["init"]) for run in runs.values()})
    lines = ["## Setup", "",
             f"- Command: `{r.get('command') or 'n/a (called from Python)'}`",
             f"- Date: started {r['started']}, finished {r['finished']} (UTC); total wall time "
             f"{_seconds(r['total_wall_s'])} s (steps reused from an earlier run count with their original time below)",
             f"- Machine: {m['cpu']} ({m['cpu_count']} CPU cores, {m['torch_threads']} torch threads); compute device "
             f"{m['device']}; CUDA available: {'yes' if m['cuda_available'] else 'no'}; {m['platform']}",
             "- Versions: " + ", ".join(f"{k} {val}" for k, val in sorted(v.items())),
             f"- Data: `{r['data']}`",
             f"- Training: recipe **{s.get('recipe', 'paper')}** (the recipe comparison trains the other one too), "
             f"{s['epochs']} epoch(s), batch size {s['batch_size']}, image size {s['image_size']} px, "
             f"seed {s['seed']}, validation fraction {s['val_fraction']} (of the training split, for model "
             f"selection and threshold tuning), U-Net width {s['unet_base']}, labels "
             f"{s['labels'] if s['labels'] else 'any nonzero'}, --weights {s['weights']}",
             ]
    for model, init in inits:
        lines.append(f"- Initialization of {model}: **{init_sentence(init)}** (`{init}`)")
    lines += ["- Every number below is read from the JSON files of this run (paths given with each table), at "
              "native resolution. **Dice (pooled)** counts every test pixel together (all images' overlaps over "
              "all their lesion pixels): a model that finds no lesion scores 0 there; a group of images with no "
              "lesion pixel in either mask (a lesion-free category or case) scores 1, as one such image does. The other numbers are means "
              "per test image (per slice for volumes): both masks empty counts as 1 (Dice, IoU, precision, "
              "recall), exactly one empty as 0 (scikit-learn's zero_division=0), so lesion-free images a model "
              "leaves empty raise its mean Dice. HD95 is in pixels and its mean is over the images where both the "
              "prediction and the ground truth have a lesion (an image with an empty mask has no surface "
              "distance).", ""]
    return lines


def _warnings(r: dict[str, Any]) -> list[str]:
    """The test evaluations' warnings (e.g. a model that predicts no lesion, whose Dice comes only from the
    lesion-free slices), before any table that would otherwise read as a result."""
    found = [f"- **{name}** (test split): {w}" for name, run in r["runs"].items() for w in run.get("test_warnings") or []]
    found += [f"- **{name}** (test split): {w}" for name, said in ((r.get("classical") or {}).get("warnings") or {}).items()
              for w in said]
    cv = r.get("cv") or {}
    for f in cv.get("folds") or []:
        if f.get("dice_global") == 0:  # validation slices with a lesion, none of whose pixels the fold found
            mean = f.get("dice")
            why = (f"its mean per-slice Dice {fmt_num(mean)} comes only from the lesion-free slices it left empty "
                   "(1 each; 0 for every slice with a lesion)" if mean else
                   f"its mean per-slice Dice is {fmt_num(mean)} too")
            found.append(f"- **{cv.get('model')}, cross-validation fold {f['fold']}** (its validation slices): pooled "
                         f"Dice 0: it found no lesion pixel; {why}")
    stale = r.get("not_in_this_report") or []
    if stale:
        found.append(f"- Not part of this report: {', '.join(f'`{d}/`' for d in stale)} (an earlier report into this "
                     "folder with other `--models` / `--folds`; kept, as they hold trained models)")
    if not found:
        return []
    return ["## Warnings", ""] + found + [""]


def _split(r: dict[str, Any]) -> list[str]:
    sp = r["split"]
    if sp.get("split_unit") == "case" and sp.get("n_cases_test") is not None:  # whole cases on one side: say so
        n_cases = (sp.get("n_cases_test") or 0) + (sp.get("n_cases_trainval") or 0)
        held = (f"{sp['n_test']} of {sp['n_samples']} sample(s), {sp.get('n_cases_test')} of {n_cases} cases "
                f"(from {sp.get('cases_from')}; every sample of a case on one side), were held out as the test split "
                f"before any training (seeded with {sp['seed']}, stratified by each case's most frequent category, "
                f"test fraction {sp['test_fraction']} of the cases); the other {sp['n_trainval']} samples "
                f"({sp.get('n_cases_trainval')} cases) are the training split, from which each training run takes "
                "its own validation cases. Per-case numbers: `evals/<run>/per_case.csv`.")
    elif sp.get("split_unit") == "case":  # a split made before the case counts were recorded
        held = (f"{sp['n_test']} of {sp['n_samples']} sample(s), whole cases (every sample of a case on one side), "
                f"were held out as the test split before any training (seeded with {sp['seed']}, test fraction "
                f"{sp['test_fraction']} of the cases); the other {sp['n_trainval']} samples are the training split. "
                "Per-case numbers: `evals/<run>/per_case.csv`.")
    else:
        held = (f"{sp['n_test']} of {sp['n_samples']} sample(s) were held out as the test split before any training "
                f"(seeded with {sp['seed']}, stratified by category, test fraction {sp['test_fraction']}); the other "
                f"{sp['n_trainval']} are the training split, from which each training run takes its own validation "
                "samples.")
    seen = {name: run for name, run in r["runs"].items() if run.get("test_images_seen_in_training")}

    def how(run: dict[str, Any]) -> str:  # a --weights checkpoint's slices, or copies: not told apart here (QA, stop 55)
        copies = "copies of them in the training split"
        return (f"through its `--weights` checkpoint, or {copies}" if str(run.get("init") or "").startswith("file:")
                else copies)

    claim = ("No model was trained, selected or threshold-tuned on a test image." if not seen else
             "**Not every model is independent of the test split**: by their pixels, "
             + "; ".join(f"{run['test_images_seen_in_training']} test image(s) were seen in training by {name} "
                         f"({how(run)})" for name, run in seen.items())
             + "; their numbers are optimistic (see Warnings).")
    lines = ["## Held-out test split", "",
             f"{held} {claim} Files: "
             f"`splits/test`, `splits/trainval` ({sp['files']}), list in `splits/split.json`.", ""]
    cats = sorted(set(sp["test_categories"]) | set(sp["trainval_categories"]))
    lines.append(table(["category", "training split", "test split"],
                       [[c, sp["trainval_categories"].get(c, 0), sp["test_categories"].get(c, 0)] for c in cats]))
    return lines + [""]


def _ablation(r: dict[str, Any]) -> list[str]:
    a = r["ablation"]
    runs = r["runs"]
    main, nopre = runs["fcn_resnet50"], runs["fcn_resnet50_nopre"]
    n = a["with_preprocessing"].get("n_images")
    return ["## Preprocessing ablation", "",
            f"FCN-ResNet50 trained twice with the same settings, once with the full preprocessing (resize, CLAHE, "
            f"non-local-means, bilateral, normalize) and once with none (`--no-preprocess`: resize and normalize "
            f"only); test split, {n} image(s). Files: `evals/fcn_resnet50/summary.json`, "
            f"`evals/fcn_resnet50_nopre/summary.json`.", "",
            table(_metric_head(["preprocessing"]) + ["val Dice", "threshold", *VS_HEADS.values()],
                  [["full (CLAHE + NLM + bilateral)"] + _metric_cells(a["with_preprocessing"])
                   + [_val_dice(main), fmt_num(main["threshold"], 2), *vs_cells(main)],
                   ["none"] + _metric_cells(a["without_preprocessing"])
                   + [_val_dice(nopre), fmt_num(nopre["threshold"], 2), *vs_cells(nopre)]]),
            "", "val Dice: the validation Dice at threshold 0.5 by which the run kept its checkpoint (its selection "
            "criterion: `pooled` over all validation slices' pixels, the hemseg recipe's, or the `mean` per-slice "
            "Dice, the paper's); threshold: tuned on the validation split, used on the test split. " + VS_NOTE, ""]


def _val_dice(run: dict[str, Any]) -> str:
    """The selection criterion's value, named (older reports: the mean per-slice Dice, which they showed)."""
    if "selection" not in run:
        return fmt_num(run["val_dice"])
    if run.get("val_dice_selected") is None:
        return "n/a (no validation lesion: last model)"
    return f"{fmt_num(run['val_dice_selected'])} ({run['selection']})"


def _per_category(r: dict[str, Any]) -> list[str]:
    rows = [[cat, block.get("n")] + _metric_cells(block) for cat, block in sorted(r["per_category"].items())]
    total = r["ablation"]["with_preprocessing"]
    rows.append(["**total**", total.get("n_images")] + _metric_cells(total))
    return ["## Per-category results", "",
            "FCN-ResNet50 with preprocessing on the test split, per category (plane/sequence). Categories absent "
            "from the test split are not listed. File: `evals/fcn_resnet50/summary.json` (`per_category`).", "",
            table(_metric_head(["category", "n"]), rows), ""]


def _comparison(r: dict[str, Any]) -> list[str]:
    rows = []
    for entry in r["comparison"]:
        run = r["runs"][entry["run"]]
        rows.append([entry["title"], f"{run['params']:,}", run["init"], run["epochs_trained"], run["best_epoch"]]
                    + _metric_cells(run["test"]) + [_seconds(run["train_wall_s"]), *vs_cells(run)])
    return ["## Model comparison", "",
            "All with the full preprocessing, the same training split, epochs and seed; test split. "
            "Files: `evals/<model>/summary.json`, `runs/<model>/metrics.json`. " + VS_NOTE, "",
            table(["model", "params", "init", "epochs", "best epoch"] + [HEADERS[k] for k in METRIC_COLUMNS]
                  + ["train time (s)", *VS_HEADS.values()], rows), ""]


def _recipes(r: dict[str, Any]) -> list[str]:
    rows = []
    for entry in r.get("recipes") or []:
        run = r["runs"][entry["run"]]
        rows.append([entry["recipe"], run.get("steps"), run["epochs_trained"], run["best_epoch"]]
                    + _metric_cells(run["test"]) + [_seconds(run["train_wall_s"]), *vs_cells(run)])
    if not rows:
        return []
    return ["## Recipe comparison", "",
            "FCN-ResNet50 with the full preprocessing, trained with the paper's recipe (Adam 1e-4 constant, BCE, "
            "mild augmentation) and with hemseg's (AdamW 1e-3, warm-up + poly decay, BCE + batch soft Dice, "
            "foreground-aware sampling, strong augmentation), for the same number of epochs and optimizer steps, "
            "same split and seed; test split. Files: `evals/<run>/summary.json`, `runs/<run>/metrics.json`. "
            + VS_NOTE, "",
            table(["recipe", "steps", "epochs", "best epoch"] + [HEADERS[k] for k in METRIC_COLUMNS]
                  + ["train time (s)", *VS_HEADS.values()], rows), ""]


def _classical(r: dict[str, Any]) -> list[str]:
    c = r["classical"]
    cfg = c.get("kmeans_config") or {}
    return ["## Classical baseline and post-processing", "",
            f"K-Means intensity clustering (k={cfg.get('k')}, brightest cluster = lesion, the same preprocessing at "
            f"{r['settings']['image_size']} px) raw and with morphological cleaning, against FCN-ResNet50 without and "
            "with the post-processing of `hemseg eval --postprocess` (closing, opening, small-component removal, hole "
            "filling). Test split. Files: `kmeans/summary.json`, `evals/fcn_resnet50/summary.json`, "
            "`evals/fcn_resnet50_postprocess/summary.json`.", "",
            table(_metric_head(["method"]),
                  [["K-Means (raw)"] + _metric_cells(c["kmeans_raw"]),
                   ["K-Means + cleaning"] + _metric_cells(c["kmeans_cleaned"]),
                   ["FCN-ResNet50"] + _metric_cells(c["fcn"]),
                   ["FCN-ResNet50 + post-processing"] + _metric_cells(c["fcn_postprocess"])]), ""]


def _cv(r: dict[str, Any]) -> list[str]:
    cv = r.get("cv")
    if not cv:
        return ["## Cross-validation", "",
                "Not run: k-fold cross-validation needs `--folds K` with K >= 2 (this report was made without it).",
                ""]
    # the pooled Dice first: a fold that finds nothing has pooled Dice 0 while its per-slice mean counts the
    # lesion-free validation slices it left empty as 1 (a report.json written before it was recorded shows n/a)
    keys = ("dice_global", "dice", "iou", "precision", "recall", "accuracy")
    rows = [[f["fold"], f["n_train_samples"], f["n_val_samples"], f["best_epoch"]]
            + [fmt_num(f.get(k)) for k in keys] for f in cv["folds"]]
    rows.append(["**mean ± std**", "", "", ""]
                + [f"{fmt_num(cv['mean'].get(k))} ± {fmt_num(cv['std'].get(k))}" for k in keys])
    scored = cv.get("n_scored", cv["k"])
    over = ("folds" if scored == cv["k"] else
            f"the {scored} of {cv['k']} folds whose validation slices hold a lesion (a fold without one has no "
            "Dice, IoU, precision or recall: `n/a`; its accuracy is in the accuracy mean)")
    return ["## Cross-validation", "",
            f"{cv['k']}-fold cross-validation of {cv['title']} (full preprocessing) on the training split (the test "
            f"split is not used): validation metrics of each fold's best epoch at threshold 0.5, each slice scored at its own "
            f"resolution (training's own validation, without the test tables' tuned threshold), "
            f"mean ± population std over {over}. File: `{cv['file']}`.", "",
            table(["fold", "train samples", "val samples", "best epoch"] + [HEADERS[k] for k in keys], rows), ""]


def _figures(r: dict[str, Any]) -> list[str]:
    f = r["figures"]
    return ["## Training curves and metrics", "",
            "Training loss, validation loss and validation Dice per epoch of each trained model (from "
            "`runs/<name>/history.csv`):", "", f"![training curves]({f['curves']})", "",
            "Test metrics of every method (the numbers of the tables above):", "",
            f"![test metrics]({f['metrics']})", ""]


def _timings(r: dict[str, Any]) -> list[str]:
    rows = [[name, _seconds(t.get("wall_s")), "reused from an earlier run" if t.get("reused") else "this run"]
            for name, t in r["timings"].items()]
    return ["## Wall times", "",
            "Per step. A step reused (same settings, outputs present) shows the time it took when it ran.", "",
            table(["step", "wall time (s)", "ran in"], rows), ""]


def render_report_md(r: dict[str, Any]) -> str:
    """The whole ``REPORT.md`` text of a report dict."""
    parts = ["# hemseg report", ""]
    for section in (_setup, _warnings, _split, _ablation, _per_category, _comparison, _recipes, _classical, _cv, _figures,
                    _timings):
        parts += section(r)
    return "\n".join(parts)


def write_report_md(path: str | Path, report: dict[str, Any]) -> Path:
    """Write :func:`render_report_md` of ``report`` to ``path`` atomically."""
    return atomic_write_bytes(path, render_report_md(report).encode("utf-8"))
