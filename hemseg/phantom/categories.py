"""The twelve phantom categories and what each one means (plane, sequence, body region).

A category name is ``<plane>_<sequence>[_<region>]``. Sagittal and coronal categories carry no region in their
name: each of their images draws one (cervicothoracic or thoracolumbar) from its own random stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from hemseg.errors import UsageError

PLANES = ("sagittal", "axial", "coronal")
SEQUENCES = ("t1", "t1c", "t2", "stir", "t1c_fatsat")
REGIONS = ("cervicothoracic", "thoracolumbar")

CATEGORIES: tuple[str, ...] = (
    "axial_t1_cervicothoracic",
    "axial_t1_thoracolumbar",
    "axial_t1c_cervicothoracic",
    "axial_t1c_thoracolumbar",
    "axial_t2_cervicothoracic",
    "axial_t2_thoracolumbar",
    "coronal_t2",
    "sagittal_stir",
    "sagittal_t1",
    "sagittal_t1c",
    "sagittal_t1c_fatsat",
    "sagittal_t2",
)


@dataclass(frozen=True)
class CategorySpec:
    """What a category name says: ``region`` is None when each image draws its own region."""

    name: str
    plane: str
    sequence: str
    region: str | None


def parse_category(name: str) -> CategorySpec:
    """Split a category name into plane, sequence and (optional) region; UsageError for unknown names."""
    if name not in CATEGORIES:
        raise UsageError(f"unknown phantom category {name!r}; known: {', '.join(CATEGORIES)}")
    plane, rest = name.split("_", 1)
    region = None
    for r in REGIONS:
        if rest.endswith("_" + r):
            region = r
            rest = rest[: -len(r) - 1]
    return CategorySpec(name=name, plane=plane, sequence=rest, region=region)
