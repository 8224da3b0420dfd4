"""Tests of hemseg.train.eval_report (numpy/OpenCV only)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from hemseg.errors import UsageError
from hemseg.runtime.metrics import compute_metrics
from hemseg.train.eval_report import EvalRecord, draw_overlay, summarize, write_eval_report


def _case(shift: int, size: int = 32, empty_pred: bool = False):
    image = np.full((size, size), 60, np.uint8)
    gt = np.zeros((size, size), np.uint8)
    gt[8:20, 8:20] = 1
    image[gt == 1] = 200
    pred = np.zeros_like(gt)
    if not empty_pred:
        pred[8:20, 8 + shift:20 + shift] = 1
    return image, gt, pred


def _records(with_arrays: bool = True):
    recs = []
    specs = [("a", "cat1", 0, False), ("b", "cat1", 2, False), ("c", "cat2", 5, False), ("d", "cat2", 0, True),
             ("e/x y", "cat2", 1, False)]
    for stem, cat, shift, empty in specs:
        image, gt, pred = _case(shift, empty_pred=empty)
        m = compute_metrics(pred, gt)
        if with_arrays:
            recs.append(EvalRecord(stem, cat, m, image, gt, pred))
        else:
            recs.append(EvalRecord(stem, cat, m))
    return recs


def test_report_files_and_summary(tmp_path):
    recs = _records()
    summary = write_eval_report(tmp_path / "rep", recs, extra={"model": "unet", "postprocess": {"threshold": 0.5}},
                                n_overlays=2)
    on_disk = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert on_disk == summary
    assert summary["n_images"] == 5
    dices = [r.metrics["dice"] for r in recs]
    assert summary["dice"] == pytest.approx(np.mean(dices))
    assert summary["dice_std"] == pytest.approx(np.std(dices))
    for k in ("dice", "iou", "precision", "recall", "accuracy", "specificity", "hd95", "assd"):
        assert k in summary and f"{k}_std" in summary
    # the empty prediction has no HD95: skipped and counted
    assert summary["n_nan"]["hd95"] == 1
    hd = [r.metrics["hd95"] for r in recs if not math.isnan(r.metrics["hd95"])]
    assert summary["hd95"] == pytest.approx(np.mean(hd))
    assert summary["n_pred_empty"] == 1 and summary["n_gt_empty"] == 0
    assert summary["model"] == "unet" and summary["postprocess"] == {"threshold": 0.5}
    pc = summary["per_category"]
    assert set(pc) == {"cat1", "cat2"}
    assert pc["cat1"]["n"] == 2 and pc["cat2"]["n"] == 3
    assert pc["cat1"]["dice"] == pytest.approx(np.mean(dices[:2]))
    assert set(pc["cat1"]) == {"n", "dice_global", "dice", "iou", "precision", "recall", "accuracy", "hd95"}
    assert list(pc["cat1"])[:2] == ["n", "dice_global"]  # the pooled Dice first
    tp = sum(r.metrics["tp"] for r in recs[:2])
    fp_fn = sum(r.metrics["fp"] + r.metrics["fn"] for r in recs[:2])
    assert pc["cat1"]["dice_global"] == pytest.approx(2 * tp / (2 * tp + fp_fn))
    assert "lesions" not in summary and summary["warnings"] == []  # records without lesion counts: no block
    assert summary["overlays"]["best"] == ["a", "e/x y"]
    assert summary["overlays"]["worst"] == ["d", "c"]


def test_per_image_csv_and_markdown(tmp_path):
    recs = _records()
    write_eval_report(tmp_path, recs, n_overlays=0)
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert [r["stem"] for r in rows] == [r.stem for r in recs]
    assert rows[0]["category"] == "cat1"
    assert float(rows[0]["dice"]) == 1.0
    assert rows[3]["hd95"] == "nan"
    assert int(rows[1]["tp"]) == recs[1].metrics["tp"]
    assert list(rows[0])[:4] == ["stem", "category", "dice", "iou"]
    md = (tmp_path / "per_category.md").read_text()
    assert md.startswith("# evaluation\n\n| category | n | dice_global | dice | iou | precision | recall | accuracy | "
                         "hd95 |")
    assert "| cat1 | 2 |" in md and "| **total** | 5 |" in md
    assert "1 image(s) left out (lesion-free references, missed lesions)" in md
    assert not list((tmp_path / "overlays").glob("*.png"))


def test_overlays_drawn_with_colors(tmp_path):
    recs = _records()
    write_eval_report(tmp_path, recs, n_overlays=4)
    files = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert "best_01_a.png" in files and "worst_01_d.png" in files
    assert "best_02_e_x_y.png" in files  # unsafe characters replaced
    assert len([f for f in files if f.startswith("best_")]) == 4
    img = cv2.imread(str(tmp_path / "overlays" / "worst_02_c.png"))
    assert img.shape == (32, 32, 3)
    green = np.all(img == (0, 255, 0), axis=2)
    red = np.all(img == (0, 0, 255), axis=2)
    assert green.any() and red.any()
    # the prediction of "d" is empty: its overlay has the GT outline only
    img_d = cv2.imread(str(tmp_path / "overlays" / "worst_01_d.png"))
    assert np.all(img_d == (0, 255, 0), axis=2).any() and not np.all(img_d == (0, 0, 255), axis=2).any()
    # a rerun with fewer overlays removes the stale ones
    write_eval_report(tmp_path, recs, n_overlays=1)
    files = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert files == ["best_01_a.png", "worst_01_d.png"]


def test_overlay_loader_used_only_for_drawn_cases(tmp_path):
    arrays = {r.stem: (r.image, r.gt, r.pred) for r in _records()}
    calls = []

    def loader(rec):
        calls.append(rec.stem)
        return arrays[rec.stem]

    summary = write_eval_report(tmp_path, _records(with_arrays=False), n_overlays=1, overlay_loader=loader)
    assert sorted(calls) == ["a", "d"]
    assert summary["overlays"] == {"best": ["a"], "worst": ["d"]}
    # without arrays and without loader: no overlays, still a report
    summary = write_eval_report(tmp_path / "b", _records(with_arrays=False))
    assert summary["overlays"] == {"best": [], "worst": []}


def test_dict_records_and_image_u8_alias(tmp_path):
    image, gt, pred = _case(1)
    rec = {"stem": "s", "category": "all", "metrics": compute_metrics(pred, gt), "image_u8": image, "gt": gt,
           "pred": pred}
    summary = write_eval_report(tmp_path, [rec], n_overlays=1)
    assert summary["n_images"] == 1 and summary["per_category"]["all"]["n"] == 1
    assert (tmp_path / "overlays" / "best_01_s.png").exists()


def test_nan_written_as_null(tmp_path):
    image, gt, _ = _case(0)
    rec = EvalRecord("x", "all", compute_metrics(np.zeros_like(gt), gt))
    summary = write_eval_report(tmp_path, [rec])
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text
    assert summary["hd95"] is None and summary["n_nan"]["hd95"] == 1
    assert summary["per_category"]["all"]["hd95"] is None
    assert "n/a" in (tmp_path / "per_category.md").read_text()


def test_errors(tmp_path):
    recs = _records()
    with pytest.raises(UsageError, match="no evaluated"):
        write_eval_report(tmp_path, [])
    with pytest.raises(UsageError, match="overwrite"):
        write_eval_report(tmp_path, recs, extra={"dice": 1.0})
    with pytest.raises(UsageError, match="JSON"):
        write_eval_report(tmp_path / "j", recs, extra={"obj": object()})
    assert not (tmp_path / "j").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="in the way"):
        write_eval_report(tmp_path / "file", recs)
    with pytest.raises(UsageError):
        write_eval_report(tmp_path, [{"stem": "a"}])


def test_draw_overlay_resizes_masks():
    image = np.zeros((20, 30), np.uint8)
    gt = np.zeros((10, 15), np.uint8)
    gt[2:8, 2:8] = 1
    out = draw_overlay(image, gt, np.zeros_like(gt))
    assert out.shape == (20, 30, 3)
    assert np.all(out == (0, 255, 0), axis=2).any()
    with pytest.raises(UsageError):
        draw_overlay(image.astype(np.float32), gt, gt)


def test_summarize_keeps_nan():
    recs = _records(with_arrays=False)
    s = summarize(recs)
    assert s["n_images"] == 5 and "overlays" not in s
    assert "hd95_mm" not in s


def test_dataclass_extra_and_write_json(tmp_path):
    from hemseg.runtime.postprocess import PostprocessConfig
    from hemseg.train.eval_report import write_json

    summary = write_eval_report(tmp_path, _records(with_arrays=False),
                                extra={"postprocess": PostprocessConfig(min_area=3), "path": tmp_path})
    assert summary["postprocess"]["min_area"] == 3 and summary["path"] == str(tmp_path)
    write_json(tmp_path / "x.json", {"a": float("nan"), "b": np.float32(1.5), "c": np.arange(2)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": 1.5, "c": [0, 1]}


def test_lesions_block_and_the_nothing_predicted_warning(tmp_path):
    from hemseg.runtime.metrics import lesion_counts

    recs = []
    for stem, shift, empty in (("a", 0, False), ("b", 14, False), ("c", 0, True)):
        image, gt, pred = _case(shift, empty_pred=empty)
        recs.append(EvalRecord(stem, "all", {**compute_metrics(pred, gt), **lesion_counts(pred, gt)}))
    image, gt, _ = _case(0)
    free = np.zeros_like(gt)
    blob = np.zeros_like(gt)
    blob[1:3, 1:3] = 1
    recs.append(EvalRecord("free", "all", {**compute_metrics(blob, free), **lesion_counts(blob, free)}))
    summary = write_eval_report(tmp_path / "r", recs, n_overlays=0)
    les = summary["lesions"]
    # a: detected; b: the prediction moved off the lesion (missed, and a false component); c: missed
    assert (les["gt_lesions"], les["gt_lesions_detected"], les["pred_lesions"], les["pred_lesions_true"]) == (3, 1, 3, 1)
    assert les["recall"] == pytest.approx(1 / 3) and les["precision"] == pytest.approx(1 / 3)
    assert les["lesion_free_slices"] == 1 and les["fp_components_per_lesion_free_slice"] == 1.0
    assert "10%" in les["rule"] and summary["warnings"] == []
    md = (tmp_path / "r" / "per_category.md").read_text()
    assert "Lesions: recall 0.3333 (1 of 3 detected)" in md and "**Warning:**" not in md

    nothing = [EvalRecord(r.stem, "all", {**compute_metrics(np.zeros_like(gt), g), **lesion_counts(np.zeros_like(gt), g)})
               for r, g in zip(recs, (gt, gt, gt, free))]
    summary = write_eval_report(tmp_path / "n", nothing, n_overlays=0)
    assert summary["lesions"]["recall"] == 0.0 and summary["lesions"]["precision"] is None
    assert len(summary["warnings"]) == 1 and "predicts no lesion on any of the 4 slices" in summary["warnings"][0]
    assert "**Warning:** the model predicts no lesion" in (tmp_path / "n" / "per_category.md").read_text()
    assert "from the 1 slices without a lesion" in summary["warnings"][0]

    # everything marked: every lesion 'detected' (recall 1.0), no word of it
    everything = [EvalRecord(r.stem, "all", {**compute_metrics(np.ones_like(gt), g), **lesion_counts(np.ones_like(gt), g)})
                  for r, g in zip(recs, (gt, gt, gt, free))]
    summary = write_eval_report(tmp_path / "e", everything, n_overlays=0)
    assert summary["lesions"]["recall"] == 1.0 and summary["predicted_lesion_fraction"] == 1.0
    assert len(summary["warnings"]) == 1 and "lesion on 100 % of all pixels" in summary["warnings"][0]
    assert "lesion recall says nothing" in (tmp_path / "e" / "per_category.md").read_text()
    # ... and 45 % of every slice (a QA finding of stop 51: only half the pixels or more were warned of): at 10 %
    # or more a lesion counts as found by chance; a model marking its lesions generously (5 x) is not warned of
    small = np.zeros((100, 100), np.uint8)
    small[60:68, 60:68] = 1  # 0.64 % of the slice
    for share, warned in ((0.45, True), (0.1, True), (0.08, False)):
        recs2 = []
        for i, g in enumerate((small, small, np.zeros_like(small))):
            p = g.copy()
            p[:, :int(round(share * 100))] = 1
            recs2.append(EvalRecord(f"x{i}", "all", {**compute_metrics(p, g), **lesion_counts(p, g)}))
        summary = write_eval_report(tmp_path / f"s{share}", recs2, n_overlays=0)
        assert any("a lesion counts as detected by chance" in w for w in summary["warnings"]) == warned, share


def test_warnings_say_when_there_is_nothing_to_detect_or_no_lesion_free_slice():
    """Every slice with a lesion and none predicted: the warning said its Dice came 'only from the 0 slices
    without a lesion'. References without any lesion (masks of the wrong label, a normal series) scored against
    themselves warned that the model 'detects nothing', and nothing said there was nothing to detect."""
    from hemseg.train.eval_report import summary_warnings

    (w,) = summary_warnings({"n_images": 5, "n_pred_empty": 5, "n_gt_empty": 0})
    assert "every one of them holds a lesion" in w and "0 slices" not in w
    (w,) = summary_warnings({"n_images": 4, "n_pred_empty": 4, "n_gt_empty": 4})
    assert w.startswith("none of the 4 reference masks holds a lesion") and "detects nothing" not in w
    (w,) = summary_warnings({"n_images": 4, "n_pred_empty": 1, "n_gt_empty": 4})  # predictions on a lesion-free set
    assert w.startswith("none of the 4 reference masks holds a lesion")
    assert summary_warnings({"n_images": 4, "n_pred_empty": 1, "n_gt_empty": 1}) == []


def test_a_report_that_fails_part_way_leaves_the_earlier_report_whole(tmp_path, monkeypatch):
    """A full disk while writing the tables: the earlier summary.json stood beside the new run's overlays and
    per_image.csv (a mixed folder). Now nothing of the failed run is published and no staging folder stays."""
    import hemseg.train.eval_report as er

    recs = _records()
    write_eval_report(tmp_path, recs, n_overlays=2)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(er, "_per_category_md", full)
    with pytest.raises(OSError):
        write_eval_report(tmp_path, recs[:3], n_overlays=1)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_report_that_cannot_be_written_names_the_final_file_not_the_staging_one(tmp_path, monkeypatch):
    """A full disk while the report was staged: the error named out/.report-xxxx/per_image.csv, a folder gone by
    the time it is read."""
    import errno

    import hemseg.train.eval_report as er

    real = er.atomic_write_bytes

    def full(path, data):
        if Path(path).name == "per_category.md":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(er, "atomic_write_bytes", full)
    rec = er.EvalRecord(stem="a", category="all", metrics={"dice": 1.0, "tp": 1, "fp": 0, "fn": 0, "tn": 1})
    with pytest.raises(OSError) as exc:
        er.write_eval_report(tmp_path / "rep", [rec], {}, n_overlays=0)
    assert exc.value.filename == str(tmp_path / "rep" / "per_category.md")
    assert not list((tmp_path / "rep").iterdir())


def test_overlays_named_with_category_when_categories_share_stems(tmp_path):
    # category folders t1/000.png and t2/000.png: an overlay named best_01_000.png would not say which image it shows
    recs = []
    for i, cat in enumerate(("t1", "t2")):
        image, gt, pred = _case(i)
        recs.append(EvalRecord("000", cat, compute_metrics(pred, gt), image, gt, pred))
    summary = write_eval_report(tmp_path, recs, n_overlays=2)
    files = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert files == ["best_01_t1_000.png", "best_02_t2_000.png", "worst_01_t2_000.png", "worst_02_t1_000.png"]
    assert summary["overlays"] == {"best": ["t1/000", "t2/000"], "worst": ["t2/000", "t1/000"]}


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes here")
def test_a_report_file_name_taken_by_a_pipe_or_folder_is_refused(tmp_path):
    """eval-masks -o EO with a named pipe EO/per_image.csv replaced it without a word (only a regular file that
    was not a report's was refused)."""
    import os

    from hemseg.errors import UsageError
    from hemseg.train.eval_report import check_report_folder

    os.mkfifo(tmp_path / "per_image.csv")
    with pytest.raises(UsageError, match="per_image.csv is not a regular file"):
        check_report_folder(tmp_path)
    os.unlink(tmp_path / "per_image.csv")
    (tmp_path / "summary.json").mkdir()
    with pytest.raises(UsageError, match="summary.json is not a regular file"):
        check_report_folder(tmp_path)


def test_an_overlay_name_taken_by_a_folder_is_refused_before_the_earlier_overlays_go(tmp_path):
    """A folder named like an overlay in OUT/overlays: the rerun evaluated, removed the earlier overlays, then failed
    moving its own in ('Is a directory'), leaving a summary naming overlays that were gone."""
    from hemseg.errors import UsageError
    from hemseg.train.eval_report import check_report_folder

    (tmp_path / "overlays" / "best_01_a.png").mkdir(parents=True)
    (tmp_path / "overlays" / "best_02_b.png").write_bytes(b"png")
    with pytest.raises(UsageError, match="best_01_a.png is not a regular file"):
        check_report_folder(tmp_path)
    assert (tmp_path / "overlays" / "best_02_b.png").exists()


def test_a_rerun_keeps_the_overlays_private_when_they_were(tmp_path):
    """Overlays are pictures of patients: made readable to their owner only, a rerun's new overlays (other slices,
    other names) came back with the default permissions while the tables beside them kept theirs."""
    import os

    write_eval_report(tmp_path / "rep", _records(), n_overlays=2)
    odir = tmp_path / "rep" / "overlays"
    first = sorted(odir.iterdir())
    assert first
    for p in first:
        os.chmod(p, 0o600)
    recs = _records()
    for r in recs:
        r.stem = "again_" + r.stem  # other slices: no name of the earlier report comes back
    write_eval_report(tmp_path / "rep", recs, n_overlays=2)
    second = sorted(odir.iterdir())
    assert second and not set(p.name for p in second) & set(p.name for p in first)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in second)
    write_eval_report(tmp_path / "fresh", _records(), n_overlays=2)  # a first report takes the default
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in (tmp_path / "fresh" / "overlays").iterdir())


def test_per_case_and_per_category_give_hd95_in_mm_where_the_pixel_size_is_known(tmp_path):
    """Per-case rows (per_case.csv, summary.json per_case) gave HD95 in pixels only, so a volume's case row could not
    be read in mm beside the summary's hd95_mm (a known gap of stop 50)."""
    recs = []
    for i, (case, spacing) in enumerate((("p0", (0.5, 0.5)), ("p0", (0.5, 0.5)), ("p1", (2.0, 2.0)),
                                         ("p1", (2.0, 2.0)))):
        image, gt, pred = _case(shift=1 + i % 2)
        recs.append(EvalRecord(f"s{i}", "cat", compute_metrics(pred, gt, spacing=spacing), case=case))
    s = write_eval_report(tmp_path / "r", recs, n_overlays=0)
    for case, mm in (("p0", 0.5), ("p1", 2.0)):
        row = s["per_case"][case]
        assert row["hd95_mm"] == pytest.approx(row["hd95"] * mm)
    assert s["per_category"]["cat"]["hd95_mm"] == pytest.approx(np.mean([r.metrics["hd95_mm"] for r in recs]))
    rows = list(csv.DictReader((tmp_path / "r/per_case.csv").open()))
    assert [float(r["hd95_mm"]) for r in rows] == pytest.approx([s["per_case"]["p0"]["hd95_mm"],
                                                                 s["per_case"]["p1"]["hd95_mm"]])
    # per_category.md has the column too (summary.json only had it: a QA finding of stop 52)
    table = [ln for ln in (tmp_path / "r/per_category.md").read_text().splitlines() if ln.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    cat = [c.strip() for c in table[2].strip("|").split("|")]
    assert head[-1] == "hd95_mm" and float(cat[-1]) == pytest.approx(s["per_category"]["cat"]["hd95_mm"], abs=0.005)
    # without a pixel size (PNG): no hd95_mm key, no empty column
    plain = [EvalRecord(r.stem, r.category, {k: v for k, v in r.metrics.items() if not k.endswith("_mm")}, case=r.case)
             for r in recs]
    s = write_eval_report(tmp_path / "png", plain, n_overlays=0)
    assert "hd95_mm" not in s["per_case"]["p0"] and "hd95_mm" not in s["per_category"]["cat"]
    assert "hd95_mm" not in (tmp_path / "png/per_case.csv").read_text()
    assert "hd95_mm" not in (tmp_path / "png/per_category.md").read_text()


def test_a_ctrl_c_while_a_report_is_published_leaves_it_whole(tmp_path, monkeypatch, sigint_raises):
    """A Ctrl-C between the renames that publish a report left the new overlays and tables beside the earlier
    summary.json (a QA finding of stop 53): publishing holds SIGINT back; the command stops right after, whole."""
    from interrupts import sigint_at_first_rename

    write_eval_report(tmp_path / "rep", _records(), extra={"model": "first"}, n_overlays=2)
    # publishing: a rename out of the staging folder, not a file written into it
    calls = sigint_at_first_rename(monkeypatch, lambda dst: not any(p.startswith(".report-") for p in Path(dst).parts))
    with pytest.raises(KeyboardInterrupt):
        write_eval_report(tmp_path / "rep", _records(), extra={"model": "second"}, n_overlays=2)
    assert len(calls) > 2 and Path(calls[-1]).name == "summary.json"
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["model"] == "second"


def test_the_table_title_says_how_the_model_ran(tmp_path):
    """A run with --tta, --postprocess or --ensemble-with had the title of a plain run (a QA finding of stop 55)."""
    from hemseg.train.eval_report import _report_title

    base = {"model": "unet", "checkpoint": "/r/best.pt", "data": "/d"}
    assert _report_title(base) == "unet /r/best.pt on /d"
    ran = {**base, "tta": True, "postprocess": {"close_radius": 1}, "ensemble_with": [{"checkpoint": "/r/b.pt"}]}
    assert _report_title(ran) == ("unet /r/best.pt (ensemble with 1 other model(s), flip TTA, post-processed) on /d")
    assert _report_title({"model_file": "/e/model.onnx", "model": "fcn_resnet50", "data": "/d", "tta": False,
                          "postprocess": None, "ensemble_with": []}) == "fcn_resnet50 /e/model.onnx on /d"


def test_the_trained_on_warning_names_every_member_trained_on_the_data():
    """An ensemble of two folds scored on their dataset: the warning named the first member only (QA, stop 55)."""
    from hemseg.train.evaluate import TrainedOn

    t = TrainedOn.of(["f1/best.pt", "f2/best.pt", "x/best.pt"], ["fp", "fp", "other"], [["a"], ["b"], []])
    assert t.models_of("fp") == ["f1/best.pt", "f2/best.pt"] and t.unrecorded == ("x/best.pt",)
    assert t.models_of("nothing") == []


def test_the_best_overlays_show_lesions_before_lesion_free_slices_and_failures_last(tmp_path):
    """The best overlays of a phantom evaluation were four lesion-free slices predicted empty (Dice 1, nothing drawn;
    QA, stop 59); then a false alarm (Dice 0) was 'best_02'. Slices with a lesion in the reference come first by
    Dice, then lesion-free ones, failures of Dice 0 last."""
    recs = _records()
    size = recs[0].image.shape[0]
    blank = np.zeros((size, size), np.uint8)
    alarm = blank.copy()
    alarm[2:4, 2:4] = 1
    for stem, pred in (("0 empty", blank), ("1 empty", blank), ("0 alarm", alarm)):
        recs.append(EvalRecord(stem, "cat1", compute_metrics(pred, blank), np.full_like(blank, 60), blank, pred))
    assert recs[-2].metrics["dice"] == 1.0 and recs[-1].metrics["dice"] == 0.0
    summary = write_eval_report(tmp_path / "rep", recs, n_overlays=2)
    assert summary["overlays"]["best"] == ["a", "e/x y"]
    summary = write_eval_report(tmp_path / "rep", recs, n_overlays=8)
    # d (its lesion missed) and the false alarm: Dice 0, after the lesion-free slices
    assert summary["overlays"]["best"] == ["a", "e/x y", "b", "c", "0 empty", "1 empty", "d", "0 alarm"]
    assert summary["overlays"]["worst"][:2] == ["0 alarm", "d"]
