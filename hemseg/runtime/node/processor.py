"""Segmenting one received series: the ``hemseg predict`` pipeline (reader, :class:`Segmenter`, output writers)
on a series folder, with the model loaded once for the node's lifetime.

Per series it writes, into the series' result folder, ``hemseg_seg.dcm`` (the DICOM SEG; with
``fmt="dicom-rtstruct"`` ``hemseg_rtstruct.dcm``, an RT Structure Set, instead) and with ``nifti=True``
``hemseg_mask.nii.gz`` (the NIfTI label map of :func:`hemseg.runtime.io.writers.write_nifti_labels`), and returns
the statistics of :func:`hemseg.runtime.predict.prediction_stats` (slices, lesion area, lesion volume in mm^3 ...)
with the stage timings in ms.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hemseg.runtime.io import read_image, write_nifti_labels
from hemseg.runtime.io.dicom_seg import AlgorithmInfo, require_highdicom
from hemseg.runtime.predict import (
    DICOM_WRITERS,
    PredictOptions,
    nifti_like,
    open_segmenter,
    prediction_stats,
    write_outputs,
)
from hemseg.runtime.segmenter import STAGES

log = logging.getLogger(__name__)

STEM = "hemseg"


class SeriesProcessor:
    """Holds the open model; :meth:`process` segments one series folder. Not thread-safe: one caller thread."""

    def __init__(self, model: str | Path, backend: str = "auto", device: int = 0, batch_size: int = 8,
                 postprocess: bool = True, nifti: bool = False, fmt: str = "dicom-seg", threads: int = 0):
        if fmt not in DICOM_WRITERS:
            raise ValueError(f"fmt must be one of {sorted(DICOM_WRITERS)}, got {fmt!r}")
        if fmt == "dicom-seg":
            require_highdicom()
        opts = PredictOptions(out_dir=Path("."), backend=backend, fmt=fmt, batch_size=batch_size,
                              postprocess=postprocess, device=device, threads=threads)
        opts.check()
        self.fmt = fmt
        #: the key of the DICOM output in ``outputs`` (``seg`` or ``rtstruct``)
        self.output_key = DICOM_WRITERS[fmt][0]
        self.loaded, self.segmenter = open_segmenter(model, opts)
        self.algorithm = AlgorithmInfo.for_model(self.loaded, postprocess=postprocess)
        self.nifti = nifti
        self.batch_size = batch_size

    @property
    def backend(self) -> str:
        return self.loaded.backend

    def process(self, folder: Path, out_dir: Path) -> dict[str, Any]:
        """Segment the DICOM series in ``folder``; write its outputs into ``out_dir``. Raises on a bad series
        (InputError with the reason) or a failed inference; returns ``{"outputs", "stats", "timings_ms",
        "<output_key>_sop_instance_uid"}``."""
        t0 = time.perf_counter()
        vol = read_image(folder)
        read_ms = (time.perf_counter() - t0) * 1000.0
        prepared = self.segmenter.prepare(vol)
        prepared.read_ms = read_ms
        [pred] = self.segmenter.run([prepared])
        t1 = time.perf_counter()
        opts = PredictOptions(out_dir=out_dir, fmt=self.fmt)
        outputs, extra = write_outputs(pred, vol, prepared.u8, STEM, opts, self.algorithm)
        outputs = {self.output_key: str(out_dir / outputs["mask"])}
        if self.nifti:
            path = out_dir / f"{STEM}_mask.nii.gz"
            write_nifti_labels(path, pred.slices, like=nifti_like(vol), geometry_known=vol.affine is not None)
            outputs["nifti"] = str(path)
        write_ms = (time.perf_counter() - t1) * 1000.0
        timings = {k: round(pred.timings[k], 3) for k in STAGES}
        timings["write"] = round(write_ms, 3)
        uid_key = f"{self.output_key}_sop_instance_uid"
        return {"outputs": outputs, "stats": prediction_stats(pred, vol), "timings_ms": timings,
                uid_key: extra[uid_key]}

    def close(self) -> None:
        self.segmenter.close()
