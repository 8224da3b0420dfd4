"""Bootstrap intervals of the evaluation's Dice (hemseg.runtime.bootstrap and its place in the report)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hemseg.runtime.bootstrap import _CHUNK, bootstrap_dice, paired_difference
from hemseg.train.eval_report import EvalRecord, write_eval_report


def _records(n: int, seed: int = 0) -> list[dict]:
    """``n`` per-image metric dicts with pixel counts of varied quality."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tp, fp, fn = (int(v) for v in rng.integers(0, 200, 3))
        out.append({"tp": tp, "fp": fp, "fn": fn, "tn": 1000, "dice": 2 * tp / max(2 * tp + fp + fn, 1)})
    return out


def _width(ci: dict, key: str = "dice_global") -> float:
    return ci[key][1] - ci[key][0]


def test_the_interval_is_the_percentiles_of_resampled_pooled_dice():
    metrics = _records(30)
    ci = bootstrap_dice(metrics, resamples=2 * _CHUNK, seed=3)
    rng = np.random.default_rng(3)
    draws = np.concatenate([rng.integers(0, 30, size=(_CHUNK, 30)) for _ in range(2)])
    pooled, means = [], []
    for draw in draws:  # the same draws, computed one at a time
        tp = sum(metrics[i]["tp"] for i in draw)
        fp = sum(metrics[i]["fp"] for i in draw)
        fn = sum(metrics[i]["fn"] for i in draw)
        pooled.append(2 * tp / (2 * tp + fp + fn))
        means.append(np.mean([metrics[i]["dice"] for i in draw]))
    assert ci["dice_global"] == pytest.approx(list(np.percentile(pooled, [2.5, 97.5])))
    assert ci["dice"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])))
    assert ci["unit"] == "image" and ci["n_units"] == 30 and ci["resamples"] == 2 * _CHUNK


def test_seeded_contains_the_estimate_and_narrows_with_more_images():
    small, large = _records(12, seed=1), _records(600, seed=1)
    assert bootstrap_dice(small) == bootstrap_dice(small)
    tp, fp, fn = (sum(m[k] for m in large) for k in ("tp", "fp", "fn"))
    ci = bootstrap_dice(large)
    assert ci["dice_global"][0] < 2 * tp / (2 * tp + fp + fn) < ci["dice_global"][1]
    assert _width(ci) < _width(bootstrap_dice(small)) / 3
    same = [{"tp": 5, "fp": 1, "fn": 1, "tn": 9, "dice": 10 / 12}] * 8
    assert bootstrap_dice(same)["dice_global"] == pytest.approx([10 / 12, 10 / 12])


def test_slices_of_one_case_are_resampled_together():
    """Ten identical slices per patient are one observation, not ten: by case the interval is wider."""
    per_case = _records(5, seed=2)
    metrics = [m for m in per_case for _ in range(10)]
    cases = [f"p{k}" for k in range(5) for _ in range(10)]
    by_case, by_image = bootstrap_dice(metrics, cases), bootstrap_dice(metrics)
    assert by_case["unit"] == "case" and by_case["n_units"] == 5
    assert _width(by_case) > 1.5 * _width(by_image)
    one = bootstrap_dice(metrics[:10], cases[:10])  # one case: nothing to resample, and it says so
    assert "dice_global" not in one and "dice" not in one
    assert (one["n_units"], one["unit"], one["too_few_units"], one["resamples"]) == (1, "case", True, 0)
    assert "dice_global" not in bootstrap_dice(_records(1)) and bootstrap_dice(_records(1))["n_units"] == 1


def test_the_report_gives_the_interval_by_case_when_cases_span_slices(tmp_path):
    metrics = _records(12, seed=4)
    flat = [EvalRecord(stem=f"s{i}", category="a", metrics=m) for i, m in enumerate(metrics)]
    s = write_eval_report(tmp_path / "flat", flat, n_overlays=0)
    assert s["ci95"]["unit"] == "image" and s["ci95"]["n_units"] == 12
    assert s["ci95"]["dice_global"][0] <= s["dice_global"] <= s["ci95"]["dice_global"][1]
    assert "95 % bootstrap interval (2000 resamples of the 12 images)" in (tmp_path / "flat/per_category.md").read_text()
    cased = [EvalRecord(stem=f"s{i}", category="a", metrics=m, case=f"p{i // 3}") for i, m in enumerate(metrics)]
    s = write_eval_report(tmp_path / "cased", cased, n_overlays=0)
    assert s["ci95"]["unit"] == "case" and s["ci95"]["n_units"] == 4
    assert json.loads((tmp_path / "cased/summary.json").read_text())["ci95"]["n_units"] == 4
    # all slices of one case: the interval was left out without a word (and the spread over cases read +/- 0.0000)
    from hemseg.runtime.bootstrap import interval_text

    one = [EvalRecord(stem=f"s{i}", category="a", metrics=m, case="p0") for i, m in enumerate(metrics)]
    s = write_eval_report(tmp_path / "one", one, n_overlays=0)
    assert interval_text(s) == " (no interval: only 1 case)"
    md = (tmp_path / "one/per_category.md").read_text()
    assert "No bootstrap interval: only 1 case, nothing to resample." in md
    assert "Per case (1 case, each case's slices pooled for Dice and the ratios; its hd95 is the mean of its slices' hd95, not a 3D distance; per_case.csv): mean Dice" in md and "+/- 0.0000" not in md


def test_paired_difference_of_two_models_on_the_same_images():
    a = _records(40, seed=5)
    same = paired_difference(a, a)
    assert same["dice"] == {"difference": 0.0, "interval": [0.0, 0.0]}
    # b finds 20 more lesion pixels on every image: better everywhere, so the paired interval lies above 0
    b = [{**m, "tp": m["tp"] + 20, "fn": max(m["fn"] - 20, 0)} for m in a]
    for m in b:
        m["dice"] = 2 * m["tp"] / max(2 * m["tp"] + m["fp"] + m["fn"], 1)
    d = paired_difference(a, b)
    pooled = [2 * t / (2 * t + f + n) for t, f, n in ((sum(m["tp"] for m in x), sum(m["fp"] for m in x),
                                                       sum(m["fn"] for m in x)) for x in (a, b))]
    assert d["dice_global"]["difference"] == pytest.approx(pooled[1] - pooled[0])
    assert d["dice"]["difference"] == pytest.approx(np.mean([m["dice"] for m in b]) - np.mean([m["dice"] for m in a]))
    assert 0 < d["dice"]["interval"][0] <= d["dice"]["difference"] <= d["dice"]["interval"][1]
    # pairing: the difference is far better known than either model's own Dice
    assert _width(d["dice"], "interval") < _width(bootstrap_dice(a), "dice") / 2
    with pytest.raises(ValueError):
        paired_difference(a, b[:-1])


# -- hemseg eval-compare ------------------------------------------------------------------------------------------
def _report(folder, metrics, cases=None):
    recs = [EvalRecord(stem=f"s{i}", category="a", metrics=m, case=None if cases is None else cases[i])
            for i, m in enumerate(metrics)]
    write_eval_report(folder, recs, n_overlays=0)
    return folder


def test_eval_compare_says_whether_two_reports_differ(tmp_path):
    from click.testing import CliRunner

    from hemseg.cli import main

    a = _records(40, seed=6)
    b = [{**m, "tp": m["tp"] + min(30, m["fn"]), "fn": m["fn"] - min(30, m["fn"])} for m in a]  # same references
    for m in b:
        m["dice"] = 2 * m["tp"] / max(2 * m["tp"] + m["fp"] + m["fn"], 1)
    base, better, same = _report(tmp_path / "a", a), _report(tmp_path / "b", b), _report(tmp_path / "c", a)
    res = CliRunner().invoke(main, ["eval-compare", str(base), str(better), "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["n_images"] == 40 and c["unit"] == "image" and c["dice"]["interval"][0] > 0
    assert f"mean Dice {c['dice']['difference']:+.4f}" in res.output and "Dice exclude" in res.output
    res = CliRunner().invoke(main, ["eval-compare", str(base), str(same)])
    assert res.exit_code == 0 and "mean Dice +0.0000 [+0.0000, +0.0000]" in res.output
    assert "cannot be told apart" in res.output
    # one folder given twice: a slip, refused (it gave the verdict above); a copy of a report is compared
    res = CliRunner().invoke(main, ["eval-compare", str(base), str(base) + "/."])
    assert res.exit_code != 0 and "the same report folder" in res.output + str(res.exception)


def test_eval_compare_refuses_other_images_and_folders_without_a_report(tmp_path):
    from hemseg.errors import InputError, UsageError
    from hemseg.train.eval_report import compare_reports

    a = _report(tmp_path / "a", _records(10))
    fewer = _report(tmp_path / "b", _records(9))
    with pytest.raises(UsageError, match="not reports of the same images .*s9 in one only"):
        compare_reports(a, fewer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no per_image.csv"):
        compare_reports(a, tmp_path / "empty")


def test_eval_compare_resamples_cases_from_the_case_column(tmp_path):
    from hemseg.train.eval_report import compare_reports

    metrics = _records(12, seed=7)
    cases = [f"p{i // 3}" for i in range(12)]
    c = compare_reports(_report(tmp_path / "a", metrics, cases), _report(tmp_path / "b", _fewer_fp(metrics), cases))
    assert c["unit"] == "case" and c["n_units"] == 4


def _fewer_fp(metrics: list[dict]) -> list[dict]:
    """Another model's records on the same references (tp + fn kept): half the false positives."""
    out = [{**m, "fp": m["fp"] // 2, "tn": m["tn"] + m["fp"] - m["fp"] // 2} for m in metrics]
    for m in out:
        m["dice"] = 2 * m["tp"] / max(2 * m["tp"] + m["fp"] + m["fn"], 1)
    return out


def test_eval_compare_is_symmetric_when_one_report_has_cases(tmp_path):
    """The units come from whichever report has cases: swapping BASE and OTHER flips the sign, not the verdict."""
    from hemseg.errors import UsageError
    from hemseg.train.eval_report import compare_reports

    metrics = _records(12, seed=8)
    cases = [f"p{i // 4}" for i in range(12)]
    cased, plain = _report(tmp_path / "a", metrics, cases), _report(tmp_path / "b", _fewer_fp(metrics))
    ab, ba = compare_reports(cased, plain), compare_reports(plain, cased)
    assert ab["unit"] == ba["unit"] == "case" and ab["n_units"] == ba["n_units"] == 3
    assert ab["dice"]["difference"] == pytest.approx(-ba["dice"]["difference"])
    assert ab["dice"]["interval"] == pytest.approx([-v for v in ba["dice"]["interval"][::-1]])
    other_cases = _report(tmp_path / "c", metrics, [f"q{i // 4}" for i in range(12)])
    with pytest.raises(UsageError, match="different cases"):
        compare_reports(cased, other_cases)


def test_eval_compare_refuses_reports_of_other_references_and_keeps_one_case_difference(tmp_path):
    from hemseg.errors import UsageError
    from hemseg.train.eval_report import compare_reports

    metrics = _records(6, seed=9)
    base = _report(tmp_path / "a", metrics)
    shifted = _report(tmp_path / "b", [{**m, "fn": m["fn"] + 5} for m in metrics])  # other masks
    with pytest.raises(UsageError, match="different reference masks"):
        compare_reports(base, shifted)
    one = ["p"] * 6
    c = compare_reports(_report(tmp_path / "c", metrics, one), _report(tmp_path / "d", _fewer_fp(metrics), one))
    assert c["dice"]["interval"] is None and c["dice"]["difference"] > 0  # the difference, without an interval
    from hemseg.cli.eval_compare_cmd import compare_line

    assert "no interval" in compare_line(c) and f"{c['dice']['difference']:+.4f}" in compare_line(c)
    # one case: the same JSON keys as any comparison (they were missing), nothing resampled, no verdict
    assert c["n_units"] == 1 and c["unit"] == "case" and c["too_few_units"] is True and c["resamples"] == 0
    assert {"level", "seed"} <= set(c) and "too few to resample" in compare_line(c)


def test_eval_compare_json_never_replaces_a_report_file_or_another_file(tmp_path):
    from click.testing import CliRunner

    from hemseg.cli import main

    metrics = _records(6, seed=10)
    a, b = _report(tmp_path / "a", metrics), _report(tmp_path / "b", _fewer_fp(metrics))
    before = (a / "summary.json").read_bytes()
    res = CliRunner().invoke(main, ["eval-compare", str(a), str(b), "--json", str(a / "summary.json")])
    assert res.exit_code != 0 and "inside the report folder" in str(res.exception)
    assert (a / "summary.json").read_bytes() == before
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    res = CliRunner().invoke(main, ["eval-compare", str(a), str(b), "--json", str(tmp_path / "notes.json")])
    assert res.exit_code != 0 and "not an earlier hemseg eval-compare result" in str(res.exception)
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}'
    for _ in range(2):  # a new name, then the same name again: an earlier comparison is replaced
        res = CliRunner().invoke(main, ["eval-compare", str(a), str(b), "--json", str(tmp_path / "c.json")])
        assert res.exit_code == 0, res.output


def test_a_report_without_cases_csv_compares_with_one_that_has_it(tmp_path):
    """hemseg eval without cases.csv writes each image as its own case (case = stem): eval-compare refused it next
    to a report with cases as 'different cases', though the README promises the comparison."""
    from hemseg.train.eval_report import compare_reports

    metrics = _records(12, seed=8)
    stems = [f"s{i}" for i in range(12)]
    own = _report(tmp_path / "a", metrics, stems)
    cased = _report(tmp_path / "b", _fewer_fp(metrics), [f"p{i // 4}" for i in range(12)])
    c = compare_reports(own, cased)
    assert c["unit"] == "case" and c["n_units"] == 3


def test_the_verdict_names_an_interval_that_excludes_zero():
    """Only the mean Dice's interval was looked at: a pooled interval of [+0.0009, +0.0205] was 'cannot be told
    apart'."""
    from hemseg.cli.eval_compare_cmd import compare_line

    c = {"base": "A", "other": "B", "n_images": 48, "n_units": 48, "unit": "image", "level": 0.95,
         "resamples": 2000, "dice": {"difference": 0.004, "interval": [-0.002, 0.011]},
         "dice_global": {"difference": 0.0102, "interval": [0.0009, 0.0205]}}
    assert compare_line(c).endswith("the interval of the pooled Dice excludes 0")
    c["dice"]["interval"] = [0.001, 0.011]
    assert compare_line(c).endswith("the intervals of the mean and the pooled Dice exclude 0")
    c["dice"]["difference"], c["dice"]["interval"] = -0.5, [-0.6, -0.4]
    assert compare_line(c).endswith("exclude 0, in opposite directions: the two Dice disagree on which is better")
    c["dice"]["interval"], c["dice_global"]["interval"] = [-0.002, 0.011], [-0.001, 0.02]
    assert compare_line(c).endswith("the two cannot be told apart")


def test_cases_named_like_one_of_their_images_still_group(tmp_path):
    """Rows whose case equals their stem were taken as ungrouped: cases i01, i03, ... lost their grouping, and the
    bootstrap ran over images."""
    from hemseg.train.eval_report import compare_reports

    metrics = _records(12, seed=8)
    named_like_images = [f"s{i // 4 * 4}" for i in range(12)]  # cases s0, s4, s8: each named like its first image
    a = _report(tmp_path / "a", metrics, named_like_images)
    b = _report(tmp_path / "b", _fewer_fp(metrics), named_like_images)
    c = compare_reports(a, b)
    assert c["unit"] == "case" and c["n_units"] == 3


def test_two_or_three_units_give_no_verdict_and_a_marked_interval(tmp_path):
    """Two images, each with one more correct pixel in B: eval-compare said the intervals 'exclude 0' (a zero-width
    interval of two equal differences), and the report gave 'CI 0.983-0.983' as if it were known to three digits."""
    from click.testing import CliRunner

    from hemseg.cli import main
    from hemseg.runtime.bootstrap import MIN_UNITS, interval_text

    a = [{"tp": 870, "fp": 0, "fn": 30, "tn": 3196, "dice": 2 * 870 / 1770} for _ in range(2)]
    b = [{**m, "tp": 871, "fn": 29, "dice": 2 * 871 / 1771} for m in a]
    base, other = _report(tmp_path / "a", a), _report(tmp_path / "b", b)
    res = CliRunner().invoke(main, ["eval-compare", str(base), str(other)])
    assert res.exit_code == 0, res.output
    assert "only 2 images: too few for a verdict" in res.output and "exclude" not in res.output
    summary = json.loads((base / "summary.json").read_text())
    assert summary["ci95"]["too_few_units"] is True
    assert "only 2 images: too few for a reliable interval" in interval_text(summary)
    md = (base / "per_category.md").read_text()
    assert "too few for a reliable interval" in md and "neither help nor hurt" not in md  # they hurt: false alarms
    assert "a lesion-free slice counts only through its false-positive pixels" in md
    many = bootstrap_dice(_records(MIN_UNITS))
    assert many["too_few_units"] is False and "too few" not in interval_text({"ci95": many, "dice_global": 0.5})
    from hemseg.train.report_md import vs_cell

    assert vs_cell({"vs_main": paired_difference(a, b)}).endswith("(only 2 images: no verdict)")
    assert "verdict" not in vs_cell({"vs_main": paired_difference(_records(8), _records(8, seed=1))})


def test_eval_compare_names_a_per_image_csv_that_is_not_a_report(tmp_path):
    """A per_image.csv holding 'garbage' was read as a report of 0 images: 'not reports of the same images'."""
    from click.testing import CliRunner

    from hemseg.cli import main

    good = _report(tmp_path / "a", _records(8))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "per_image.csv").write_text("garbage\n")
    header = (good / "per_image.csv").read_text().splitlines()[0]
    for text in ("garbage\n", header + "\n"):  # a report's header without rows: 'on 0 image(s)', exit 0
        (broken / "per_image.csv").write_text(text)
        res = CliRunner().invoke(main, ["eval-compare", str(good), str(broken)])
        assert res.exit_code != 0
        message = str(res.exception) + res.output
        assert "not a hemseg per_image.csv" in message and "same images" not in message


def test_per_image_csv_reads_back_the_exact_values_eval_compare_pairs(tmp_path):
    """per_image.csv was written to 6 digits: 2/3 read back as 0.666667 moved a paired bootstrap bound from 0 to
    2.5e-7 and flipped eval-compare's verdict (a QA finding of stop 55)."""
    from hemseg.train.eval_report import read_per_image

    metrics = [{"tp": 2, "fp": 2, "fn": 0, "tn": 10, "dice": 2 / 3, "hd95": 1 / 7}]
    folder = _report(tmp_path / "r", metrics)
    back = read_per_image(folder / "per_image.csv")[0].metrics
    assert back["dice"] == 2 / 3 and back["hd95"] == 1 / 7


def test_eval_compare_pairs_the_same_images_under_other_categories_by_name(tmp_path, caplog):
    """One report made with categories.csv, the other without: the same images, other category names. It was
    refused as 'not reports of the same images' naming images that are in both (a QA finding of stop 55)."""
    from hemseg.train.eval_report import compare_reports

    metrics = _records(8, seed=3)
    a = _report(tmp_path / "a", metrics)
    recs = [EvalRecord(stem=f"s{i}", category="t1" if i % 2 else "t2", metrics=m) for i, m in enumerate(metrics)]
    write_eval_report(tmp_path / "b", recs, n_overlays=0)
    with caplog.at_level("WARNING"):
        c = compare_reports(a, tmp_path / "b")
    assert c["n_images"] == 8 and c["dice"]["difference"] == 0.0
    assert "other categories (e.g. s0: a and t2): paired by file name" in caplog.text
    # a name that is in one report only is still refused
    write_eval_report(tmp_path / "c", recs[:7] + [EvalRecord(stem="x", category="t1", metrics=metrics[7])],
                      n_overlays=0)
    with pytest.raises(Exception, match="not reports of the same images"):
        compare_reports(a, tmp_path / "c")


def test_eval_compare_refuses_images_of_other_sizes_under_the_same_names(tmp_path):
    """Two reports of other images named alike (000 ... 005, 64 px and 96 px) with the same lesion pixels were
    compared as the same images (a QA finding of stop 55): the pixel totals tell them apart."""
    from hemseg.errors import UsageError
    from hemseg.train.eval_report import compare_reports

    metrics = _records(6, seed=4)
    a = _report(tmp_path / "a", metrics)
    b = _report(tmp_path / "b", [{**m, "tn": m["tn"] + 500} for m in metrics])
    with pytest.raises(UsageError, match=r"not reports of the same images \(image s0: \d+ and \d+ pixels\)"):
        compare_reports(a, b)
