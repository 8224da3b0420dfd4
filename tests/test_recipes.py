"""The pieces of the training recipes: schedule, run-length planning, batch samplers, loss, precision choice,
foreground crop, EMA (CPU, no training)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from hemseg.errors import UsageError  # noqa: E402
from hemseg.train.device import resolve_precision  # noqa: E402
from hemseg.train.ema import WeightEMA  # noqa: E402
from hemseg.train.loop import SegmentationLoss  # noqa: E402
from hemseg.train.recipes import HEMSEG, PAPER, get_recipe  # noqa: E402
from hemseg.train.sampling import EpochBatches, ForegroundBatches  # noqa: E402
from hemseg.train.schedule import lr_factor, steps_for_budget, warmup_steps  # noqa: E402
from hemseg.train.transforms import foreground_crop, train_transform  # noqa: E402

pytestmark = pytest.mark.torch
CPU = torch.device("cpu")


def test_paper_recipe_is_the_papers():
    assert (PAPER.optimizer, PAPER.lr, PAPER.schedule, PAPER.dice, PAPER.sampling, PAPER.selection) == \
        ("adam", 1e-4, "constant", "none", "epochs", "mean")
    assert (HEMSEG.optimizer, HEMSEG.lr, HEMSEG.schedule, HEMSEG.dice, HEMSEG.sampling, HEMSEG.selection) == \
        ("adamw", 1e-3, "poly", "batch", "foreground", "pooled")
    assert get_recipe("hemseg", lr=3e-4, batch_size=None).lr == 3e-4
    with pytest.raises(UsageError, match="unknown recipe"):
        get_recipe("nnunet")


def test_warmup_then_poly_decay_to_zero():
    total, warm = 100, warmup_steps(30, 100)
    assert warm == 10
    f = [lr_factor(k, total, warm, "poly") for k in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # non-increasing after the warm-up
    assert f[-1] < 0.05 and lr_factor(total, total, warm, "poly") == 0
    assert [lr_factor(k, total, 0, "constant") for k in (0, 50, 99)] == [1.0, 1.0, 1.0]


def test_slow_validations_get_fewer_of_them():
    from hemseg.train.schedule import validations_for_budget

    assert validations_for_budget(600, 1.0, 10) == 10  # 10 + 1 s of 600: fits
    assert validations_for_budget(516, 45.0, 10) == 2  # the loaded quickstart: 45 s each -> 2 (a fifth: 103 s)
    assert validations_for_budget(1000, 30.0, 10) == 5
    from hemseg.train.budget import fewer_validations_note

    # 42.5 s each in a 60 s budget: the fewest (2) do not fit a fifth, and the plan said they did (QA, stop 52)
    assert fewer_validations_note(30.0, 5, 10, 1000).endswith("5 validations instead of 10 fit a fifth of the budget")
    assert fewer_validations_note(42.5, 2, 10, 60) == ("42.5 s per validation: 2 validations instead of 10, the fewest "
                                                       "a run makes; with the threshold tuning they take 128 s of the "
                                                       "60 s left, more than a fifth")


def test_budget_planning():
    # 60 s, 0.5 s per step, 1 s per validation, 10 validations + tuning: (60 - 11) / 0.5 = 98 steps
    assert steps_for_budget(60, 0.5, 1.0, 10, 1) == 98
    with pytest.raises(UsageError, match="too short"):
        steps_for_budget(10, 2.0, 1.0, 10, 0.2)


def test_a_replan_charges_the_new_plan_its_own_validations():
    """After a slow start the plan grew (96 -> 1601 steps, validations every 19); the next re-plan, at 1.2 s per step
    with 8 minutes left, must not cut the run to one more step (it did, charging the old plan's 81 validations)."""
    import time
    from types import SimpleNamespace

    from hemseg.train.budget import replan

    left = 480.0
    s = SimpleNamespace(deadline=time.monotonic() + left)
    new_total = replan(s, step=95, total=1601, step_s=1.2, val_s=18.8, val_every=19)
    more = new_total - 95
    assert more > 150                                                   # the budget's steps, not one
    # they end by the deadline with their validations (every 19th step, the last step) and the threshold tuning
    assert more * 1.2 + (_validations(95, more, 19) + 1) * 18.8 <= left
    # a plan that fits is kept (no jitter); one that cannot fit shrinks
    assert replan(s, step=95, total=new_total, step_s=1.2, val_s=18.8, val_every=19) == new_total
    assert replan(s, step=95, total=1601, step_s=5.0, val_s=18.8, val_every=19) < new_total


def test_a_replan_near_the_end_reserves_the_last_validation_and_the_threshold_tuning():
    """The issue's 12-minute command on an AVX2 CPU: 3.4 s per step, 40 s per validation, validations every 63 steps,
    two minutes left. The run must stop in time for its last validation and the tuning pass, and a plan a little too
    long is shortened rather than kept."""
    import time
    from types import SimpleNamespace

    from hemseg.train.budget import replan

    s = SimpleNamespace(deadline=time.monotonic() + 120.0)
    total = replan(s, step=126, total=126 + 30, step_s=3.4, val_s=40.0, val_every=63)
    more = total - 126
    assert more * 3.4 + (_validations(126, more, 63) + 1) * 40.0 <= 120.0
    assert more == 11  # 30 more steps (102 s) plus two passes (80 s) do not fit: shortened, not kept
    # and the budget is used to the step: 72 steps done, validations every 72, 380 s left, 50 s per validation.
    # 72 more end at step 144 with one validation and the tuning (238 + 100 s); a 73rd step would bring a validation
    # of its own (391 s). Charging the last validation and the tuning as one (the old rule) planned 82 (420 s).
    s = SimpleNamespace(deadline=time.monotonic() + 380.0)
    assert replan(s, step=72, total=130, step_s=3.3, val_s=50.0, val_every=72) == 144


def _validations(step: int, more: int, every: int) -> int:
    end = step + more
    return end // every - step // every + (1 if end % every else 0)


def test_foreground_batches_hold_a_third_lesion_slices_and_repeat_with_the_seed():
    has_fg = [i % 10 == 0 for i in range(100)]  # 10 % of the slices show a lesion
    batches = list(ForegroundBatches(has_fg, 6, 1 / 3, 50, torch.Generator().manual_seed(0)))
    assert len(batches) == 50 and all(len(b) == 6 for b in batches)
    assert all(sum(has_fg[i] for i in b) >= 2 for b in batches)
    again = list(ForegroundBatches(has_fg, 6, 1 / 3, 50, torch.Generator().manual_seed(0)))
    assert batches == again
    # without any lesion slice it still samples (from all slices)
    assert len(list(ForegroundBatches([False] * 5, 4, 1 / 3, 3, torch.Generator().manual_seed(0)))) == 3


def test_marked_foreground_batches_flag_only_the_forced_lesion_picks():
    """Patch training: only the forced picks (a third of the batch) are placed on a lesion, as in nnU-Net."""
    has_fg = [i % 2 == 0 for i in range(100)]  # half the slices show a lesion
    plain = list(ForegroundBatches(has_fg, 6, 1 / 3, 40, torch.Generator().manual_seed(0)))
    marked = list(ForegroundBatches(has_fg, 6, 1 / 3, 40, torch.Generator().manual_seed(0), mark=True))
    assert [[i for i, _ in b] for b in marked] == plain  # the same batches, with a flag per entry
    assert all(sum(f for _, f in b) == 2 for b in marked)
    assert all(has_fg[i] for b in marked for i, f in b if f)
    # the unforced entries include lesion slices too, and they stay unflagged
    assert any(has_fg[i] and not f for b in marked for i, f in b)


def test_epoch_batches_are_shuffled_passes():
    batches = list(EpochBatches(10, 4, 6, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(batches[:3], [])) == list(range(10)) and sorted(sum(batches[3:], [])) == list(range(10))


def test_batch_dice_cannot_be_won_by_predicting_nothing():
    """Per-image soft Dice gives an empty prediction full marks on lesion-free slices; the batch Dice does not."""
    target = torch.zeros(4, 1, 8, 8)
    target[0, 0, :4, :4] = 1  # one lesion slice, three empty
    empty = torch.full((4, 1, 8, 8), -20.0)
    per_image = SegmentationLoss(dice="image")(empty, target) - SegmentationLoss()(empty, target)
    batch = SegmentationLoss(dice="batch")(empty, target) - SegmentationLoss()(empty, target)
    assert per_image.item() == pytest.approx(0.25, abs=0.02)  # 3 of 4 slices 'perfect'
    assert batch.item() > 0.9
    perfect = torch.where(target > 0, 20.0, -20.0)
    assert SegmentationLoss(dice="batch")(perfect, target).item() < 0.02


def test_blob_loss_weighs_a_small_missed_lesion_like_a_large_one():
    """Blob loss (Kofler et al. 2023): one Dice per lesion. A batch that finds a 400 px lesion but misses a 4 px and a
    9 px one scores almost perfectly on the batch Dice; the blob term scores it about 1/3 (one lesion of three)."""
    from hemseg.train.loop import blob_dice, lesion_labels

    target = torch.zeros(2, 1, 32, 32)
    target[0, 0, 2:22, 2:22] = 1      # large lesion, found
    target[0, 0, 28:30, 28:30] = 1    # small lesion of the same image, missed
    target[1, 0, 5:8, 5:8] = 1        # small lesion of another image, missed
    labels = lesion_labels(target)
    assert labels.shape == (2, 32 * 32) and labels[0].max() == 2 and labels[1].max() == 1
    found_big = torch.full_like(target, -20.0)
    found_big[0, 0, 2:22, 2:22] = 20.0
    p = torch.sigmoid(found_big).flatten(1)
    assert blob_dice(p, labels).item() == pytest.approx((1 + 1 / 5 + 1 / 10) / 3, abs=0.01)
    bce = SegmentationLoss()(found_big, target)
    batch = SegmentationLoss(dice="batch")(found_big, target)
    blob = SegmentationLoss(dice="blob")(found_big, target)
    assert batch.item() - bce.item() < 0.05 and blob.item() - batch.item() == pytest.approx(1 - 0.433, abs=0.01)
    # every lesion found: the blob term vanishes; the other lesions of an image are not false positives of a lesion
    perfect = torch.where(target > 0, 20.0, -20.0)
    assert SegmentationLoss(dice="blob")(perfect, target).item() < 0.02
    # a false positive anywhere in the image still costs every lesion of that image
    fp = perfect.clone()
    fp[0, 0, 24:32, 0:8] = 20.0
    assert blob_dice(torch.sigmoid(fp).flatten(1), labels) < blob_dice(torch.sigmoid(perfect).flatten(1), labels) - 0.1
    # no lesion in the batch: no blob term, and gradients still flow through the rest
    empty = torch.zeros(2, 1, 8, 8)
    logits = torch.zeros(2, 1, 8, 8, requires_grad=True)
    loss = SegmentationLoss(dice="blob")(logits, empty)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0
    # 8-connectivity, like the lesion metrics: two diagonal pixels are one lesion
    diag = torch.zeros(1, 1, 4, 4)
    diag[0, 0, 0, 0] = diag[0, 0, 1, 1] = 1
    assert lesion_labels(diag).max() == 1


def test_blob_loss_gradient_reaches_the_missed_small_lesion():
    """The point of the blob term: the Dice gradient on a missed small lesion's pixels is far larger than under the
    batch Dice, where a large found lesion dominates the sums (the BCE part, the same in both, is left out)."""
    target = torch.zeros(1, 1, 32, 32)
    target[0, 0, 2:22, 2:22] = 1
    target[0, 0, 28:30, 28:30] = 1
    grads = {}
    for mode in ("batch", "blob"):
        logits = torch.where(target > 0, 4.0, -4.0)
        logits[0, 0, 28:30, 28:30] = -4.0  # the small lesion is missed
        logits.requires_grad_(True)
        (SegmentationLoss(dice=mode)(logits, target) - SegmentationLoss()(logits, target)).backward()
        grads[mode] = -logits.grad[0, 0, 28:30, 28:30].mean().item()  # push towards lesion: negative gradient
    assert grads["batch"] > 0 and grads["blob"] > 10 * grads["batch"]


def test_precision_choice_follows_the_cpu():
    amx = frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"})
    avx2 = frozenset({"avx2", "fma"})
    assert resolve_precision("auto", CPU, amx).name == "bf16"
    assert resolve_precision("auto", CPU, amx).channels_last
    assert resolve_precision("auto", CPU, avx2).name == "fp32"
    assert resolve_precision("bf16", CPU, frozenset({"avx512_bf16"})).autocast == torch.bfloat16
    with pytest.raises(UsageError, match="amx_bf16"):
        resolve_precision("bf16", CPU, avx2)
    with pytest.raises(UsageError, match="CUDA"):
        resolve_precision("fp16", CPU, amx)
    assert resolve_precision("fp32", CPU, amx).autocast is None


def test_cpu_flags_can_be_pinned(monkeypatch):
    from hemseg.runtime import cpu_features

    monkeypatch.setenv(cpu_features.ENV, "avx2,amx_bf16")
    assert cpu_features.has_bf16() and resolve_precision("auto", CPU).name == "bf16"
    monkeypatch.setenv(cpu_features.ENV, "avx2")
    assert not cpu_features.has_bf16() and resolve_precision("auto", CPU).name == "fp32"


def test_foreground_crop_zooms_onto_the_lesion():
    torch.manual_seed(0)
    img = torch.arange(64 * 64, dtype=torch.int64).reshape(64, 64).remainder(251).to(torch.uint8)
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[40:44, 10:14] = 1  # 16 px
    areas = []
    for _ in range(20):
        ci, cm = foreground_crop(img, mask, p=1.0)
        assert ci.shape == (64, 64) and cm.dtype == torch.uint8 and not torch.equal(ci, img)
        areas.append(int(cm.sum()))
    # the lesion is always kept and enlarged by 1/0.85 .. 1/0.5 per side (nearest-neighbour rounding aside)
    assert min(areas) >= 16 and max(areas) > 30 and max(areas) <= 16 * 2 ** 2 + 40
    same_i, same_m = foreground_crop(img, mask, p=0.0)
    assert same_i is img and same_m is mask
    empty = torch.zeros_like(mask)
    assert foreground_crop(img, empty, p=1.0)[0] is img


def test_hemseg_augmentation_has_shear_and_log_gamma_and_no_noise():
    names = [type(t).__name__ for t in train_transform(HEMSEG.augment).transforms]
    assert "RandomAffine" in names and "RandomGamma" in names and "GaussianNoise" not in str(names)
    affine = next(t for t in train_transform(HEMSEG.augment).transforms if type(t).__name__ == "RandomAffine")
    assert affine.shear is not None and affine.degrees == [-20.0, 20.0]
    gamma = next(t for t in train_transform(HEMSEG.augment).transforms if type(t).__name__ == "RandomGamma")
    assert gamma.log_space and gamma.lo == pytest.approx(math.exp(-0.3))


def test_intensity_remap_is_an_opt_in_of_both_recipes():
    assert HEMSEG.augment.remap == 0 and PAPER.augment.remap == 0
    names = [type(t).__name__ for t in train_transform(HEMSEG.augment).transforms]
    assert "RandomIntensityCurve" not in names
    recipe = get_recipe("hemseg", remap=0.3, lr=None)
    assert recipe.augment.remap == 0.3 and recipe.lr == HEMSEG.lr and recipe.augment.degrees == HEMSEG.augment.degrees
    curve = next(t for t in train_transform(recipe.augment).transforms if type(t).__name__ == "RandomIntensityCurve")
    assert curve.p == 0.3
    assert get_recipe("paper", remap=1.0).augment.remap == 1.0
    from hemseg.train.trainer import TrainOptions

    with pytest.raises(UsageError, match="--intensity-remap"):
        TrainOptions(intensity_remap=1.5)


@pytest.mark.parametrize("field, transform, bad", [("invert", "RandomInversion", -0.1),
                                                    ("lowres", "RandomLowResolution", 1.5)])
def test_image_transform_is_an_opt_in_of_both_recipes(field, transform, bad):
    """``--invert`` and ``--lowres``: off in both recipes, an override adds the transform at that probability and
    leaves the rest of the recipe as it was; out-of-range values are refused by option name."""
    assert getattr(HEMSEG.augment, field) == 0 and getattr(PAPER.augment, field) == 0
    assert transform not in [type(t).__name__ for t in train_transform(HEMSEG.augment).transforms]
    recipe = get_recipe("hemseg", **{field: 0.4})
    added = next(t for t in train_transform(recipe.augment).transforms if type(t).__name__ == transform)
    assert added.p == 0.4 and recipe.augment.fov == HEMSEG.augment.fov
    from hemseg.train.trainer import TrainOptions

    with pytest.raises(UsageError, match=f"--{field}"):
        TrainOptions(**{field: bad})


def test_gin_is_an_opt_in_of_both_recipes():
    assert HEMSEG.augment.gin == 0 and PAPER.augment.gin == 0
    recipe = get_recipe("hemseg", gin=0.5)
    assert recipe.augment.gin == 0.5 and recipe.augment.degrees == HEMSEG.augment.degrees
    assert get_recipe("paper", gin=1.0).augment.gin == 1.0
    from hemseg.train.trainer import TrainOptions

    with pytest.raises(UsageError, match="--gin"):
        TrainOptions(gin=-0.1)


def test_field_of_view_is_on_in_the_hemseg_recipe_as_a_band_and_off_in_the_paper_one():
    def fov_of(recipe):
        return next((t for t in train_transform(recipe.augment).transforms
                     if type(t).__name__ == "RandomFieldOfView"), None)

    assert PAPER.augment.fov == 0 and fov_of(PAPER) is None
    fov = fov_of(HEMSEG)
    assert fov is not None and fov.p == 0.5 and fov.shape == "band"
    assert fov_of(get_recipe("hemseg", fov=0)) is None                          # --fov 0 switches it off
    box = get_recipe("hemseg", fov_shape="box")
    assert fov_of(box).shape == "box" and box.augment.degrees == HEMSEG.augment.degrees
    assert fov_of(get_recipe("paper", fov=0.3)).p == 0.3                        # an opt-in of the paper recipe
    from hemseg.train.trainer import TrainOptions

    with pytest.raises(UsageError, match="--fov"):
        TrainOptions(fov=1.5)
    with pytest.raises(UsageError, match="--fov-shape"):
        TrainOptions(fov=0.5, fov_shape="circle")


def test_ema_tracks_the_weights():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # d = min(0.5, 2/11)
    assert ema.model.weight.tolist()[0] == pytest.approx([1 - 2 / 11] * 2)
    for _ in range(30):
        ema.update(model)
    assert ema.model.weight.tolist()[0] == pytest.approx([1.0, 1.0], abs=1e-6)
    state = ema.state_dict()
    other = WeightEMA(model, decay=0.9)
    other.load_state_dict(state)
    assert other.updates == 31 and other.decay == 0.5


def test_precise_bn_recomputes_the_statistics_of_the_current_weights():
    from hemseg.train.precise_bn import recompute_bn_stats

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.fill_(100.0)  # stale statistics of 'old weights'
        bn.running_var.fill_(100.0)
    batches = [torch.randn(2, 3, 5, 5) + i for i in range(3)]
    seen = recompute_bn_stats(model, batches, CPU)
    with torch.no_grad():
        feats = torch.cat([model[0](x) for x in batches])
    assert seen == 6 and not model.training and bn.momentum == 0.1
    # the plain average over the batches of each batch's mean (equal batch sizes: the mean over all images)
    assert torch.allclose(bn.running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-5)
    assert recompute_bn_stats(torch.nn.Linear(2, 2), batches, CPU) == 0  # no BatchNorm: nothing to do
