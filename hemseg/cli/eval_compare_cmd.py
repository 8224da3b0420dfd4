"""``hemseg eval-compare BASE OTHER``: is one model better than another on the same images? The difference of
their Dice with a 95 % paired-bootstrap interval, from two ``hemseg eval`` (or ``eval-masks``) report folders."""

from __future__ import annotations

from pathlib import Path

import click

from hemseg.cli._base import NonEmptyPath, done


def compare_line(c: dict) -> str:
    """The one-line result of :func:`hemseg.train.eval_report.compare_reports`."""

    from hemseg.runtime.bootstrap import MIN_UNITS, difference_text

    def part(key: str, name: str) -> str:
        return f"{name} {difference_text(c.get(key), 4) or 'n/a'}"

    if c.get("n_units", 0) < 2:
        return (f"{c['other']} - {c['base']} on {c['n_images']} image(s): {part('dice', 'mean Dice')}, "
                f"{part('dice_global', 'pooled Dice')}; too few to resample (one case or image): no interval, so "
                "no verdict")
    def excludes_zero(key: str) -> bool:
        interval = (c.get(key) or {}).get("interval")
        return bool(interval) and not interval[0] <= 0 <= interval[1]

    apart = [name for key, name in (("dice", "mean"), ("dice_global", "pooled")) if excludes_zero(key)]
    if c["n_units"] < MIN_UNITS:
        return (f"{c['other']} - {c['base']} on {c['n_images']} image(s): {part('dice', 'mean Dice')}, "
                f"{part('dice_global', 'pooled Dice')}; only {c['n_units']} {c['unit']}s: too few for a verdict (no "
                f"paired test reaches p < 0.05 with fewer than {MIN_UNITS}), so no verdict")
    verdict = (f"the interval{'s' if len(apart) > 1 else ''} of the {' and the '.join(apart)} Dice exclude"
               f"{'' if len(apart) > 1 else 's'} 0" if apart else "the two cannot be told apart")
    if len(apart) == 2 and (c["dice"]["difference"] > 0) != (c["dice_global"]["difference"] > 0):
        verdict += ", in opposite directions: the two Dice disagree on which is better"
    return (f"{c['other']} - {c['base']} on {c['n_images']} image(s): {part('dice', 'mean Dice')}, "
            f"{part('dice_global', 'pooled Dice')} ({100 * c['level']:.0f} % paired bootstrap, {c['resamples']} "
            f"resamples of {c['n_units']} {c['unit']}s): {verdict}")


@click.command("eval-compare")
@click.argument("base", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path))
@click.argument("other", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "json_out", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None,
              help="Also write the comparison as JSON.")
def eval_compare(base: Path, other: Path, json_out: Path | None) -> None:
    """OTHER's Dice minus BASE's: two report folders of `hemseg eval` or `hemseg eval-masks` on the same images
    (e.g. a new model and the one in use), with 95 % paired-bootstrap intervals of the mean and the pooled Dice
    (2,000 seeded resamples of the images, or of the cases where cases span several slices). When both intervals
    contain 0, this test set cannot tell the two apart; the verdict names the interval(s) that exclude 0."""
    from hemseg.errors import UsageError
    from hemseg.runtime.io.writers import write_json
    from hemseg.train.eval_report import compare_reports

    if base.resolve() == other.resolve():  # it gave "+0.0000 [+0.0000, +0.0000]: cannot be told apart"
        raise UsageError(f"BASE and OTHER are the same report folder ({base}); give the reports of the two "
                         "evaluations to compare")
    if json_out is not None:
        _check_json_out(json_out, base, other)
    c = compare_reports(base, other)
    if json_out is not None:
        write_json(json_out, c)
    done()
    click.echo(compare_line(c))


def _check_json_out(json_out: Path, base: Path, other: Path) -> None:
    """--json writes a new file or replaces an earlier comparison; never a file of the two reports, nor another
    existing file (it replaced BASE's own summary.json)."""
    from hemseg.errors import UsageError
    from hemseg.runtime.io.writers import is_json_with

    target = json_out.resolve()
    for folder in (base, other):
        if folder.resolve() in target.parents:
            raise UsageError(f"--json {json_out}: lies inside the report folder {folder}; write it elsewhere")
    if target.exists():
        if not is_json_with(target, {"base", "other", "n_images"}):
            raise UsageError(f"--json {json_out}: exists and is not an earlier hemseg eval-compare result; choose a "
                             "new name")
