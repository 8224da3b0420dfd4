"""Tests of the K-Means baseline (hemseg.train.kmeans) and of ``hemseg baseline kmeans``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hemseg.errors import UsageError
from hemseg.runtime.metrics import dice_score
from hemseg.runtime.preprocess import OPTIONAL_STEPS, PreprocessSpec
from hemseg.train.kmeans import DEFAULT_CLEANING, kmeans_lesion_mask, kmeans_segment


def _phantom(h: int = 80, w: int = 96, seed: int = 0, center=(48, 40), radius: int = 9):
    """Dark background, a mid-grey 'vertebra', a bright round 'lesion', Gaussian noise."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 30, np.float32)
    img[10:h - 10, 20:w - 20] = 110
    gt = np.zeros((h, w), np.uint8)
    cv2.circle(gt, center, radius, 1, -1)
    img[gt == 1] = 220
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), gt


SPEC64 = PreprocessSpec(size=64)


def test_brightest_cluster_is_the_lesion_at_original_size():
    img, gt = _phantom()
    for k in (3, 4):
        mask = kmeans_segment(img, SPEC64, k=k)
        assert mask.shape == img.shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert dice_score(mask, gt) > 0.9
    low = kmeans_lesion_mask(img, SPEC64, k=3)
    assert low.shape == (64, 64)


def test_deterministic_with_seed():
    img, _ = _phantom(seed=3)
    spec = PreprocessSpec(size=64, nlm=False, bilateral=False)
    a = kmeans_segment(img, spec, k=4, seed=7)
    b = kmeans_segment(img, spec, k=4, seed=7)
    np.testing.assert_array_equal(a, b)


def test_cleaning_removes_bright_specks_and_fills_holes():
    img, gt = _phantom(h=64, w=64, center=(32, 32), radius=10)
    for y, x in ((5, 5), (5, 55), (58, 8), (50, 56)):
        img[y:y + 2, x:x + 2] = 235  # bright 2x2 specks outside the lesion
    img[32, 32] = 110  # a dark pixel inside the lesion
    spec = PreprocessSpec(size=64, clahe=False, nlm=False, bilateral=False)
    raw = kmeans_segment(img, spec, k=3)
    cleaned = kmeans_segment(img, spec, k=3, postprocess=DEFAULT_CLEANING)
    assert raw[5:7, 5:7].all() and raw[32, 32] == 0
    assert cleaned[5:7, 5:7].sum() == 0 and cleaned[58:60, 8:10].sum() == 0
    assert cleaned[32, 32] == 1
    assert dice_score(cleaned, gt) > dice_score(raw, gt)


def test_flat_image_gives_empty_mask_and_bad_k():
    flat = np.full((40, 40), 90, np.uint8)
    assert kmeans_segment(flat, SPEC64, k=4).sum() == 0
    img, _ = _phantom()
    for bad in (1, 9, 2.5, True):
        with pytest.raises(UsageError, match="k"):
            kmeans_segment(img, SPEC64, k=bad)
    with pytest.raises(UsageError):
        kmeans_segment(img.astype(np.float32), SPEC64)


def test_cli_skip_choices_match_preprocess():
    from hemseg.cli.baseline_cmd import SKIPPABLE_STEPS

    assert tuple(SKIPPABLE_STEPS) == tuple(OPTIONAL_STEPS)


def _png_dataset(root, n: int = 3):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img, gt = _phantom(h=64, w=72, seed=i, center=(30 + 4 * i, 32), radius=7 + i)
        cv2.imwrite(str(root / "images" / f"case{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"case{i}.png"), gt * 255)


def test_cli_kmeans_writes_raw_and_cleaned_reports(tmp_path):
    from hemseg.cli import main

    data = tmp_path / "data"
    _png_dataset(data)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["baseline", "kmeans", str(data), "--out", str(out), "--k", "3",
                                    "--image-size", "64", "--skip", "nlm", "--overlays", "1"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "raw" in res.output and "cleaned" in res.output
    top = json.loads((out / "summary.json").read_text())
    # eval's console line: the pooled Dice and its interval first (the line led with the mean per image)
    line = next(ln for ln in res.output.splitlines() if ln.startswith("cleaned: "))
    assert line.startswith(f"cleaned: 3 image(s): pooled Dice {top['cleaned']['dice_global']:.4f} (95 % CI ")
    assert top["cleaned"]["ci95"]["dice_global"]
    assert set(top) == {"raw", "cleaned", "config"}
    assert top["raw"]["n_images"] == 3 and top["cleaned"]["n_images"] == 3
    assert top["cleaned"]["dice"] > 0.8
    assert top["config"]["k"] == 3 and top["config"]["preprocess"]["nlm"] is False
    assert top["config"]["preprocess"]["size"] == 64
    for name in ("raw", "cleaned"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["dice"] == pytest.approx(top[name]["dice"])
        assert summary["baseline"]["variant"] == name
        assert (out / name / "per_image.csv").read_text().count("\n") == 4
        # the table says what it scores (it did not: QA, stop 55)
        assert (out / name / "per_category.md").read_text().startswith(f"# kmeans baseline, {name} (k 3, brightest "
                                                                      f"cluster) on {data.resolve()}")
        overlays = sorted(p.name for p in (out / name / "overlays").iterdir())
        assert len(overlays) == 2 and overlays[0].startswith("best_01_case")


def test_cli_kmeans_volume_slices(tmp_path):
    from hemseg.cli import main

    data = tmp_path / "vol"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    imgs, gts = zip(*[_phantom(h=48, w=48, seed=z, center=(24, 24), radius=6) for z in range(3)])
    labels = np.stack(gts) * 2
    labels[:, 40:46, 2:46] = 1  # another structure, not the lesion
    np.save(data / "images" / "v.npy", np.stack(imgs))
    np.save(data / "masks" / "v.npy", labels)
    out = tmp_path / "out"
    args = ["baseline", "kmeans", str(data), "--k", "3", "--image-size", "48", "--overlays", "0", "--skip", "clahe"]
    res = CliRunner().invoke(main, args + ["--out", str(out), "--label", "2"])
    assert res.exit_code == 0, (res.output, res.exception)
    rows = (out / "raw" / "per_image.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["v_s000", "v_s001", "v_s002"]
    top = json.loads((out / "summary.json").read_text())
    assert top["config"]["labels"] == [2]
    assert top["raw"]["dice"] > 0.9  # label 1 is not counted as lesion
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "any")])
    assert res.exit_code == 0, (res.output, res.exception)
    anylabel = json.loads((tmp_path / "any" / "summary.json").read_text())
    assert anylabel["config"]["labels"] is None
    assert anylabel["raw"]["recall"] < 0.5 < top["raw"]["recall"]  # now label 1 counts as lesion too


def test_cli_kmeans_bad_skip_and_empty_dataset(tmp_path):
    from hemseg.cli import main

    res = CliRunner().invoke(main, ["baseline", "kmeans", str(tmp_path), "--out", str(tmp_path / "o"),
                                    "--skip", "median"])
    assert res.exit_code == 2
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    res = CliRunner().invoke(main, ["baseline", "kmeans", str(empty), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    from hemseg.errors import DatasetError

    assert isinstance(res.exception, DatasetError)


def test_dataset_with_problems_is_refused(tmp_path):
    from hemseg.errors import DatasetError
    from hemseg.train.kmeans import evaluate_kmeans

    data = tmp_path / "data"
    _png_dataset(data, n=2)
    np.save(data / "images" / "case0.npy", np.zeros((8, 8), np.uint8))  # duplicate stem 'case0'
    with pytest.raises(DatasetError, match="duplicate stem"):
        evaluate_kmeans(data, tmp_path / "out", spec=SPEC64)
    assert not (tmp_path / "out").exists()


def test_a_label_no_mask_holds_is_refused(tmp_path):
    """--label 2 on masks of 0/255: every reference was empty, Dice 0, exit 0; eval refuses the same typo."""
    from hemseg.errors import DatasetError
    from hemseg.train.kmeans import evaluate_kmeans

    data = tmp_path / "data"
    _png_dataset(data, n=2)
    with pytest.raises(DatasetError, match="no mask holds --label 2"):
        evaluate_kmeans(data, tmp_path / "out", spec=SPEC64, labels=[2])
    assert not (tmp_path / "out").exists()


def test_an_out_folder_holding_another_tools_summary_is_refused(tmp_path):
    """-o the folder of hemseg predict's masks: its summary.json (the record of the model) was replaced."""
    from hemseg.errors import UsageError
    from hemseg.train.kmeans import evaluate_kmeans

    data = tmp_path / "data"
    _png_dataset(data, n=2)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "summary.json").write_text('{"inputs": [], "totals": {}, "model": {}}')
    with pytest.raises(UsageError, match="not an earlier K-Means baseline summary"):
        evaluate_kmeans(data, out, spec=SPEC64)
    assert json.loads((out / "summary.json").read_text()) == {"inputs": [], "totals": {}, "model": {}}
    evaluate_kmeans(data, tmp_path / "km", spec=SPEC64, n_overlays=0)
    evaluate_kmeans(data, tmp_path / "km", spec=SPEC64, n_overlays=0)  # its own earlier summary is replaced


def test_another_evaluations_report_in_raw_or_cleaned_is_refused(tmp_path):
    """-o a folder whose raw/ held a model's evaluation report (hemseg eval -o X/raw): only the top summary.json was
    checked, so the model's summary, tables and overlays were replaced by K-Means numbers, exit 0."""
    from hemseg.errors import UsageError
    from hemseg.runtime.metrics import compute_metrics
    from hemseg.train.eval_report import write_eval_report
    from hemseg.train.kmeans import evaluate_kmeans

    data = tmp_path / "data"
    _png_dataset(data, n=2)
    out = tmp_path / "X"
    m = np.zeros((32, 32), np.uint8)
    m[8:16, 8:16] = 1
    for name in ("raw", "cleaned"):
        write_eval_report(out / name, [{"stem": "s", "category": "all", "metrics": compute_metrics(m, m)}])
        before = (out / name / "summary.json").read_bytes()
        with pytest.raises(UsageError, match=f"{name} holds another evaluation's report"):
            evaluate_kmeans(data, out, spec=SPEC64, n_overlays=0)
        assert (out / name / "summary.json").read_bytes() == before
        shutil.rmtree(out / name)
    evaluate_kmeans(data, out, spec=SPEC64, n_overlays=0)
    (out / "summary.json").unlink()  # a run stopped between its reports: raw/ and cleaned/ are its own
    evaluate_kmeans(data, out, spec=SPEC64, n_overlays=0)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "spine-generic-sub-unf01"


@pytest.mark.skipif(not (SHARED / "sub-unf01_T2w.nii.gz").exists(), reason="shared spine-generic data not present")
def test_kmeans_on_real_nifti_volume(tmp_path):
    from hemseg.train.kmeans import evaluate_kmeans

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    shutil.copy(SHARED / "sub-unf01_T2w.nii.gz", data / "images" / "t2.nii.gz")
    shutil.copy(SHARED / "sub-unf01_T2w_seg-manual.nii.gz", data / "masks" / "t2.nii.gz")
    spec = PreprocessSpec(size=64, nlm=False)
    result = evaluate_kmeans(data, tmp_path / "out", spec=spec, k=4, n_overlays=1)
    assert result["raw"]["n_images"] == 16  # 131 x 141 x 16 volume, slice by slice
    rows = (tmp_path / "out" / "raw" / "per_image.csv").read_text().splitlines()
    assert rows[1].startswith("t2_s000,all,t2,")
    png = next((tmp_path / "out" / "cleaned" / "overlays").glob("best_01_t2_s*.png"))
    assert cv2.imread(str(png)).shape == (141, 131, 3)  # overlays at the original slice size, shown as viewers do


def test_baseline_and_report_need_no_torch(tmp_path):
    code = (
        "import sys\n"
        "for n in ('torch', 'torchvision'): sys.modules[n] = None\n"
        "import numpy as np\n"
        "from hemseg.runtime.preprocess import PreprocessSpec\n"
        "from hemseg.train.kmeans import kmeans_segment\n"
        "from hemseg.train.eval_report import write_eval_report\n"
        "from hemseg.runtime.metrics import compute_metrics\n"
        "img = np.zeros((32, 32), np.uint8); img[8:16, 8:16] = 200\n"
        "m = kmeans_segment(img, PreprocessSpec(size=32), k=2)\n"
        "write_eval_report(sys.argv[1], [{'stem': 's', 'category': 'all', 'metrics': compute_metrics(m, img > 0)}])\n"
        "print(int(m.sum()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "rep")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) > 0
    assert (tmp_path / "rep" / "summary.json").exists()


def test_evaluate_reports_hd95_in_mm_when_the_file_has_spacing(tmp_path):
    import nibabel as nib

    from hemseg.runtime.dataset import discover, load_pair_spacing
    from hemseg.runtime.metrics import compute_metrics
    from hemseg.train.kmeans import evaluate_kmeans

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    vol = np.zeros((64, 64, 3), np.float32)
    seg = np.zeros((64, 64, 3), np.uint8)
    for z in range(3):
        img, gt = _phantom(64, 64, seed=z, center=(30 + 2 * z, 34), radius=8)
        vol[..., z], seg[..., z] = img, gt
    affine = np.diag([0.5, 0.8, 3.0, 1.0])  # rows 0.5 mm, columns 0.8 mm, slices 3 mm
    nib.save(nib.Nifti1Image(vol, affine), str(data / "images" / "v.nii.gz"))
    nib.save(nib.Nifti1Image(seg, affine), str(data / "masks" / "v.nii.gz"))
    img, _ = _phantom()
    cv2.imwrite(str(data / "images" / "p.png"), img)
    cv2.imwrite(str(data / "masks" / "p.png"), (_phantom()[1] * 255).astype(np.uint8))

    by_stem = {s.stem: s for s in discover(data).samples}
    images, masks, spacing = load_pair_spacing(by_stem["v"])
    assert images.shape == (3, 64, 64) and spacing == pytest.approx((0.8, 0.5))  # shown transposed (RAS file)
    assert load_pair_spacing(by_stem["p"])[2] is None  # PNG: no spacing

    result = evaluate_kmeans(data, tmp_path / "out", spec=SPEC64, k=3, n_overlays=0)
    summary = json.loads((tmp_path / "out" / "raw" / "summary.json").read_text())
    assert summary["n_images"] == 4 and summary["n_nan"]["hd95_mm"] >= 1  # the PNG has no mm value
    assert np.isfinite(result["raw"]["hd95"])
    rows = (tmp_path / "out" / "raw" / "per_image.csv").read_text().splitlines()
    header = rows[0].split(",")
    col, mm = header.index("hd95"), header.index("hd95_mm")
    v0 = dict(zip(header, rows[1 + [r.split(",")[0] for r in rows[1:]].index("v_s000")].split(",")))
    # the per-image mm value is the metric of the same masks with the file's spacing
    pred = kmeans_segment(images[0], SPEC64, k=3)
    expected = compute_metrics(pred, masks[0], (0.5, 0.8))
    assert float(v0["hd95_mm"]) == pytest.approx(expected["hd95_mm"], rel=1e-5)
    assert float(v0["hd95"]) == pytest.approx(expected["hd95"], rel=1e-5)
    assert col != mm
    p_row = dict(zip(header, rows[1 + [r.split(",")[0] for r in rows[1:]].index("p")].split(",")))
    assert p_row["hd95_mm"] in ("", "nan")


def test_kmeans_reports_pair_with_eval_reports_and_resample_cases(tmp_path):
    """Slices of a volume are named as hemseg eval names them and carry their volume's case: the bootstrap resamples
    volumes (it resampled the slices of 2 volumes as 6 independent images) and eval-compare pairs the baseline
    with a model's report of the same data (it refused: 'not reports of the same images')."""
    from hemseg.train.eval_report import compare_reports
    from hemseg.train.evaluate import evaluate_masks
    from hemseg.train.kmeans import evaluate_kmeans

    data = tmp_path / "d"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for v in range(2):
        pairs = [_phantom(seed=10 * v + z) for z in range(3)]
        np.save(data / "images" / f"v{v}.npy", np.stack([img for img, _ in pairs]))
        np.save(data / "masks" / f"v{v}.npy", np.stack([m for _, m in pairs]))
    result = evaluate_kmeans(data, tmp_path / "km", spec=SPEC64, k=3, n_overlays=0)
    raw = json.loads((tmp_path / "km" / "raw" / "summary.json").read_text())
    assert result["raw"]["n_images"] == 6 and raw["ci95"]["unit"] == "case" and raw["ci95"]["n_units"] == 2
    evaluate_masks(data / "masks", data, tmp_path / "ref", progress=False, n_overlays=0)
    c = compare_reports(tmp_path / "ref", tmp_path / "km" / "raw")
    assert c["n_images"] == 6 and c["dice"]["difference"] <= 0  # the references themselves score 1


def test_a_report_folder_in_the_way_is_found_before_either_report_is_written(tmp_path):
    """A file named cleaned in --out: raw/ of the new run was published, then the run failed, leaving it beside the
    earlier run's summary.json."""
    from hemseg.errors import UsageError
    from hemseg.train.kmeans import evaluate_kmeans

    data = tmp_path / "data"
    _png_dataset(data, n=2)
    out = tmp_path / "out"
    evaluate_kmeans(data, out, spec=SPEC64, k=4)
    shutil.rmtree(out / "cleaned")
    (out / "cleaned").write_text("x")
    before = (out / "raw" / "summary.json").read_bytes()
    with pytest.raises(UsageError, match="a file is in the way of the cleaned report folder"):
        evaluate_kmeans(data, out, spec=SPEC64, k=2)
    assert (out / "raw" / "summary.json").read_bytes() == before
