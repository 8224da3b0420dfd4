"""``hemseg serve``: a DICOM node (pynetdicom, the ``[dicom]`` extra) that segments the MR series a scanner sends.

Behaviour:

- **Listening**: a Storage SCP with AE title ``ae_title`` on ``host:port`` (``port=0``: an ephemeral port, told in
  the ``listening`` event), accepting MR Image, Enhanced MR Image and Legacy Converted Enhanced MR Image storage in
  every transfer syntax pynetdicom knows (compressed ones are kept only when a decoder is installed), and C-ECHO
  (Verification). With ``allow`` only associations from those calling AE titles are accepted (others are
  rejected and logged). Several associations are served at once (``max_associations``, default 10).
- **Receiving** (per C-STORE): the data set is parsed, its Series and SOP Instance UIDs checked, then it is written
  to the inbox (:mod:`hemseg.runtime.node.inbox`) and read back with hemseg's own DICOM reader; only when that
  succeeds is the file renamed into place (fsynced) and success (0x0000) answered. A corrupt data set is refused
  with 0xC000, a color, non-image or otherwise unreadable one with 0xA900, a storage failure with 0xA700; the
  reason goes back as Error Comment and into a ``refused`` event. No bad instance stops the node.
- **Segmenting**: a series is processed once no instance of it has arrived for ``series_timeout`` seconds: its
  instances are snapshotted, read as one series (:func:`hemseg.runtime.io.read_image`), segmented by the
  ``hemseg predict`` pipeline (:class:`hemseg.runtime.segmenter.Segmenter`, same post-processing), and written to
  ``results/<SeriesInstanceUID>/hemseg_seg.dcm`` (DICOM SEG, :mod:`hemseg.runtime.io.dicom_seg`; with
  ``fmt="dicom-rtstruct"`` ``hemseg_rtstruct.dcm``, an RT Structure Set, :mod:`hemseg.runtime.io.rtstruct_writer`,
  instead), plus ``hemseg_mask.nii.gz`` with ``nifti=True``. Series are processed one at a time, oldest first. Instances that
  arrive later for a processed series make it pending again: the whole series is segmented anew and a new SEG
  (new SOP Instance UID, same SEG series) is written and sent.
- **Sending**: with ``store_to`` the SEG (or RT Structure Set) is sent by C-STORE in its own SOP class (calling
  AE = ``ae_title``) by a sender thread, in the order the results were made, while the next series is segmented;
  a failed send is recorded (status ``send_failed``; the SEG stays in ``results/``) and not retried.
- **Events**: one JSON object per line in ``node.jsonl`` (and to the ``on_event`` callback; ``hemseg serve``
  prints them on stdout): ``listening``, ``refused`` (per instance: status, reason), ``association_rejected``,
  ``series`` (one per processed series: ``status`` ``ok``/``error``/``send_failed``, ``error``, ``instances``,
  ``slices``, ``lesion_area_px``, ``lesion_area_mm2``, ``lesion_volume_mm3``, ``outputs``,
  ``seg_sop_instance_uid`` (``rtstruct_sop_instance_uid``), ``sent``, ``timings_ms``: ``receive`` (first to last instance), ``wait`` (last
  instance to start), ``read``/``preprocess``/``copy_in``/``infer``/``copy_out``/``postprocess``, ``write``,
  ``send``, ``total``), ``stopped``.
- **Restart**: pending series found in the inbox at start-up (received, never processed) are processed at once.
- **Stopping** (:meth:`DicomNode.stop`, Ctrl-C or SIGTERM for ``hemseg serve``): no new associations; open ones
  get a grace period, then are aborted (an instance not yet answered is not acknowledged, so the sender retries
  it); the series being segmented is finished; every thread is joined. Pending series wait for the next start.
"""

from __future__ import annotations

from hemseg.runtime.node.config import Destination, NodeConfig
from hemseg.runtime.node.server import DicomNode

__all__ = ["Destination", "DicomNode", "NodeConfig"]
