"""The batch range of a TensorRT optimization profile, parsed from ``--batch MIN,OPT,MAX``.

A TensorRT engine with a dynamic batch dimension accepts any batch size between ``min`` and ``max`` and is tuned
for ``opt``. Rule: three positive integers with ``1 <= min <= opt <= max``. Height and width are not part of the
profile: they are fixed by the exported model (its preprocessing size).

Pure Python; no TensorRT needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from hemseg.errors import UsageError

#: the default ``--batch`` of ``hemseg-export --format trt``
DEFAULT_BATCH = "1,8,32"


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of one optimization profile: ``1 <= min <= opt <= max`` (checked on construction)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        for field_name in ("min", "opt", "max"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"batch profile {field_name} must be an integer, got {value!r}")
        if self.min < 1:
            raise UsageError(f"batch profile min must be >= 1, got {self.min}")
        if not self.min <= self.opt <= self.max:
            raise UsageError(
                f"batch profile must satisfy min <= opt <= max, got min={self.min}, opt={self.opt}, max={self.max}"
            )

    def as_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    def shapes(self, channels: int, height: int, width: int) -> tuple[tuple[int, ...], ...]:
        """The (min, opt, max) NCHW input shapes of the profile."""
        return tuple((n, channels, height, width) for n in (self.min, self.opt, self.max))

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}"


def parse_batch_profile(text: str) -> BatchProfile:
    """``"1,8,32"`` -> ``BatchProfile(1, 8, 32)``; raises :class:`UsageError` with the offending text otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3 or any(p == "" for p in parts):
        raise UsageError(f"--batch must be MIN,OPT,MAX (three integers, e.g. {DEFAULT_BATCH}), got {text!r}")
    values = []
    for name, part in zip(("MIN", "OPT", "MAX"), parts):
        try:
            values.append(int(part, 10))
        except ValueError:
            raise UsageError(f"--batch {name} must be an integer, got {part!r} in {text!r}") from None
    return BatchProfile(*values)
