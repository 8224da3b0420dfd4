"""``hemseg train --splits FILE``: splits given, not drawn (nnU-Net's splits_final.json, a hemseg run's config.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cases import flat_dataset

from hemseg.cli import main
from hemseg.errors import DatasetError, InputError
from hemseg.train.split import read_splits

STEMS = [f"s{i}" for i in range(6)]


def _write(tmp_path: Path, content, name: str = "splits_final.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_reads_nnunet_splits_and_a_hemseg_config(tmp_path):
    folds = [{"train": ["s0", "s1", "s2", "s3"], "val": ["s4", "s5"]}, {"train": ["s2", "s3", "s4", "s5"],
                                                                         "val": ["s1", "s0"]}]
    assert read_splits(_write(tmp_path, folds), STEMS) == [([0, 1, 2, 3], [4, 5]), ([2, 3, 4, 5], [0, 1])]
    config = _write(tmp_path, {"model": "unet", "splits": folds[:1]}, "config.json")
    assert read_splits(config, STEMS) == [([0, 1, 2, 3], [4, 5])]
    partial = read_splits(_write(tmp_path, [{"train": ["s0"], "val": ["s5"]}]), STEMS)
    assert partial == [([0], [5])]  # the others are left out


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a JSON file"),
    ({"model": "unet"}, "expected a list of"),
    ([], "expected a list of"),
    ([{"train": ["s0"]}], "expected a list of"),
    ([{"train": ["s0", "nope"], "val": ["s1"]}], "split 1 train: 1 name(s) not in the dataset (e.g. nope)"),
    ([{"train": ["s0", "s1"], "val": ["s1"]}], "split 1: 's1' is in train and in val"),
    ([{"train": ["s0"], "val": []}], "split 1: empty val list"),
    ([{"train": ["s0", "s0"], "val": ["s1"]}], "listed twice"),
])
def test_bad_split_files_are_refused_naming_the_file(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises((InputError, DatasetError)) as exc:
        read_splits(path, STEMS)
    assert message in str(exc.value) and str(path) in str(exc.value)


def test_a_case_on_both_sides_is_a_warning(tmp_path, caplog):
    path = _write(tmp_path, [{"train": ["s0", "s1"], "val": ["s2", "s3"]}])
    with caplog.at_level(logging.WARNING, logger="hemseg.train.split"):
        read_splits(path, STEMS, groups=["p0", "p0", "p0", "p1", "p2", "p2"])
    assert "puts case p0 on both sides" in caplog.text


@pytest.mark.torch
def test_training_follows_the_file_and_a_run_config_reproduces_it(tmp_path):
    from hemseg.train.trainer import run_training

    data = flat_dataset(tmp_path / "d", n=6)
    tiny = dict(model="unet", unet_base=8, image_size=32, batch_size=4, steps=2, val_every=2, device="cpu",
                progress=False, weights="none")
    folds = [{"train": ["s0", "s1", "s2", "s3"], "val": ["s4", "s5"]}, {"train": ["s2", "s3", "s4", "s5"],
                                                                         "val": ["s0", "s1"]}]
    metrics = run_training(data, tmp_path / "cv", splits=str(_write(tmp_path, folds)), **tiny)
    assert metrics["n_folds"] == 2 and (tmp_path / "cv" / "fold_2" / "best.pt").is_file()
    config = json.loads((tmp_path / "cv" / "config.json").read_text())
    assert [{k: sorted(v) for k, v in f.items()} for f in config["splits"]] == [
        {k: sorted(v) for k, v in f.items()} for f in folds]
    assert config["splits_file"].endswith("splits_final.json") and config["val_fraction"] is None

    run_training(data, tmp_path / "a", seed=3, **tiny)  # a drawn split ...
    drawn = json.loads((tmp_path / "a" / "config.json").read_text())["splits"]
    run_training(data, tmp_path / "b", seed=5, splits=str(tmp_path / "a" / "config.json"), **tiny)
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert again["splits"] == drawn and again["folds"] is None  # ... reused exactly by another run, other seed


@pytest.mark.torch
def test_category_folders_sharing_file_names_get_splits_that_name_each_sample(tmp_path):
    """t1/images/s0.png and t2/images/s0.png: config.json recorded the split as bare stems ('s0' twice), --splits
    refused the run's own config.json, and hemseg-export found 'none of the validation stems' in the dataset and
    verified on phantoms instead (saying so falsely)."""
    import shutil

    from hemseg.export.calib import _split_samples
    from hemseg.train.trainer import run_training

    flat = flat_dataset(tmp_path / "flat", n=6)
    data = tmp_path / "d"
    for category in ("t1", "t2"):
        shutil.copytree(flat, data / category)
    tiny = dict(model="unet", unet_base=8, image_size=32, batch_size=4, steps=2, val_every=2, device="cpu",
                progress=False, weights="none")
    run_training(data, tmp_path / "a", seed=3, **tiny)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    [split] = config["splits"]
    names = split["train"] + split["val"]
    assert len(set(names)) == 12 and all(n.split("/")[0] in ("t1", "t2") for n in names)
    run_training(data, tmp_path / "b", seed=5, splits=str(tmp_path / "a" / "config.json"), **tiny)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["splits"] == config["splits"]
    import torch

    ckpt = torch.load(tmp_path / "a" / "best.pt", weights_only=False)["config"]
    _, val, train = _split_samples(ckpt)
    assert sorted(f"{s.category}/{s.stem}" for s in val) == sorted(split["val"])
    assert sorted(f"{s.category}/{s.stem}" for s in train) == sorted(split["train"])


@pytest.mark.torch
def test_cli_splits_and_folds_exclude_each_other(tmp_path):
    path = _write(tmp_path, [{"train": ["s0"], "val": ["s1"]}])
    result = CliRunner().invoke(main, ["train", str(tmp_path), "-o", str(tmp_path / "r"), "--splits", str(path),
                                       "--folds", "3"])
    assert result.exit_code != 0 and "--splits and --folds exclude each other" in str(result.exception)
