"""``hemseg serve``: the DICOM node end to end on loopback (127.0.0.1, ephemeral ports, bounded waits).

A pynetdicom SCU plays the modality, a second pynetdicom SCP plays the destination (PACS). The node runs in this
process (DicomNode) except in the CLI test. Every node is stopped and its threads joined by the fixtures.
Model: tests/data/tiny_64.onnx (bright = lesion).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pynetdicom = pytest.importorskip("pynetdicom")
hd = pytest.importorskip("highdicom")

import pydicom  # noqa: E402
from dicom_series import mr_series  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    CTImageStorage,
    MRImageStorage,
    RTStructureSetStorage,
    SegmentationStorage,
    Verification,
)

from hemseg.errors import UsageError  # noqa: E402
from hemseg.runtime.node import DicomNode, NodeConfig  # noqa: E402
from hemseg.runtime.node.config import Destination  # noqa: E402
from hemseg.runtime.node.inbox import MARKER, Inbox  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).resolve().parent / "data" / "tiny_64.onnx"
LOCAL = "127.0.0.1"
WAIT = 30.0  # seconds: upper bound of every wait (never reached when things work)


# -- helpers -----------------------------------------------------------------------------------------------------
def wait_for(predicate, timeout: float = WAIT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Destination_SCP:
    """A Storage SCP for SEG and RT Structure Set objects on an ephemeral port; keeps what it receives."""

    def __init__(self, ae_title: str = "PACS"):
        self.received: list[pydicom.Dataset] = []
        self.lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(SegmentationStorage)
        self.ae.add_supported_context(RTStructureSetStorage)
        self.server = self.ae.start_server((LOCAL, 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self.server.server_address[1]
        self.address = f"{ae_title}@{LOCAL}:{self.port}"

    def _on_store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received.append(ds)
        return 0x0000

    def segs(self) -> list[pydicom.Dataset]:
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.ae.shutdown()


def modality(ae_title: str = "MODALITY", syntaxes=None) -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(MRImageStorage, *([syntaxes] if syntaxes else []))
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae


def send(port: int, datasets, calling: str = "MODALITY", syntaxes=None) -> list[tuple[int, str]]:
    """One association (MR storage in ``syntaxes``, default pynetdicom's): C-STORE every data set; returns (status,
    error comment) per data set."""
    assoc = modality(calling, syntaxes).associate(LOCAL, port, ae_title="HEMSEG")
    assert assoc.is_established
    out = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            out.append((int(status.Status), str(status.get("ErrorComment", ""))))
    finally:
        assoc.release()
    return out


def corrupt_instance(series_uid: str) -> pydicom.Dataset:
    """An MR instance whose pixel data is cut short (half the bytes)."""
    [ds] = mr_series(1, series_uid=series_uid)
    ds.SOPInstanceUID = generate_uid()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return ds


def colour_instance(series_uid: str) -> pydicom.Dataset:
    """An MR instance with RGB pixels."""
    [ds] = mr_series(1, series_uid=series_uid)
    ds.SOPInstanceUID = generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.full((64, 64, 3), 128, np.uint8).tobytes()
    return ds


def no_pixels_instance(series_uid: str) -> pydicom.Dataset:
    [ds] = mr_series(1, series_uid=series_uid)
    ds.SOPInstanceUID = generate_uid()
    del ds.PixelData
    return ds


def seg_by_series(segs, source_series_uid: str) -> pydicom.Dataset:
    found = [s for s in segs if s.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series_uid]
    assert len(found) == 1, f"{len(found)} SEGs for series {source_series_uid}"
    return found[0]


def check_seg_against(seg: pydicom.Dataset, sources: list[pydicom.Dataset]) -> None:
    """References, frame of reference, geometry and the segment of a SEG that arrived at the destination."""
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    ref = seg.ReferencedSeriesSequence[0]
    assert sorted(i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence) == \
        sorted(s.SOPInstanceUID for s in sources)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == \
        pytest.approx([float(v) for v in sources[0].PixelSpacing])
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
        pytest.approx([float(v) for v in sources[0].ImageOrientationPatient])
    by_uid = {s.SOPInstanceUID: s for s in sources}
    assert len(seg.PerFrameFunctionalGroupsSequence) >= 1
    for item in seg.PerFrameFunctionalGroupsSequence:
        src = by_uid[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient] == \
            pytest.approx([float(v) for v in src.ImagePositionPatient])
    [segment] = seg.SegmentSequence
    assert segment.SegmentLabel == "hemangioma"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "400210000"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "hemseg"


@pytest.fixture
def destination():
    scp = Destination_SCP()
    yield scp
    scp.close()


@pytest.fixture
def start_node(tmp_path):
    """Start DicomNodes; every one is stopped (threads joined) at the end."""
    nodes = []

    def start(out_dir: Path | None = None, **overrides) -> tuple[DicomNode, list[dict]]:
        events: list[dict] = []
        cfg = dict(model=TINY, host=LOCAL, port=0, out_dir=out_dir or tmp_path / "node", series_timeout=0.5)
        cfg.update(overrides)
        node = DicomNode(NodeConfig(**cfg), on_event=events.append)
        nodes.append(node)
        node.start()
        return node, events

    yield start
    for node in nodes:
        node.stop()
    assert all(node._thread is None and node._server is None for node in nodes)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("hemseg-node")]


# -- end to end --------------------------------------------------------------------------------------------------
def test_loopback_series_bad_instances_and_parallel_association(tmp_path, destination, start_node):
    # a series is due after series_timeout s without a new instance: long enough here that a slow, loaded machine
    # (CI) cannot split one association's series into two SEGs between two C-STOREs (0.5 s once did)
    node, events = start_node(store_to=destination.address, series_timeout=3.0)
    series_a = mr_series(4, dark=(2,))
    series_b = mr_series(3, iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    uid_a = series_a[0].SeriesInstanceUID
    bad = [corrupt_instance(uid_a), colour_instance(uid_a), no_pixels_instance(uid_a)]
    results: dict[str, list] = {}

    def second():  # a second association in parallel with the first
        results["b"] = send(node.port, series_b, calling="MODALITY2")

    thread = threading.Thread(target=second)
    thread.start()
    # one association: two good slices, the corrupt and the colour instance, then the rest of the series
    results["a"] = send(node.port, [series_a[0], series_a[1], *bad, series_a[2], series_a[3]])
    thread.join(WAIT)
    assert not thread.is_alive()

    statuses = results["a"]
    assert [s for s, _ in statuses[:2] + statuses[5:]] == [0, 0, 0, 0]
    corrupt, colour, no_pixels = statuses[2:5]
    assert corrupt[0] == 0xA900 and "pixel data" in corrupt[1]
    assert colour[0] == 0xA900 and "color" in colour[1]
    assert no_pixels[0] == 0xA900 and "no pixel data" in no_pixels[1]
    assert [s for s, _ in results["b"]] == [0, 0, 0]

    uid_b = series_b[0].SeriesInstanceUID

    def seg_series() -> list[str]:
        return sorted(s.ReferencedSeriesSequence[0].SeriesInstanceUID for s in destination.segs())

    wait_for(lambda: len(seg_series()) >= 2, what="two SEGs at the destination")
    assert seg_series() == sorted([uid_a, uid_b]), "one SEG per series, each series segmented once"
    segs = destination.segs()
    check_seg_against(seg_by_series(segs, uid_a), series_a)
    check_seg_against(seg_by_series(segs, series_b[0].SeriesInstanceUID), series_b)
    # the black slice 2 of series A has no frame (empty frames are omitted)
    seg_a = seg_by_series(segs, uid_a)
    framed = {i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
              for i in seg_a.PerFrameFunctionalGroupsSequence}
    assert series_a[2].SOPInstanceUID not in framed and series_a[0].SOPInstanceUID in framed

    # the refused instances were never stored; the good ones were
    inbox = Inbox(tmp_path / "node")
    assert sorted(p.stem for p in inbox.instances(uid_a)) == sorted(s.SOPInstanceUID for s in series_a)
    # one JSON line per series, and one per refused instance, in node.jsonl too
    wait_for(lambda: sum(e["event"] == "series" for e in events) == 2, what="two series events")
    lines = [json.loads(x) for x in (tmp_path / "node" / "node.jsonl").read_text().splitlines()]
    assert [e["event"] for e in lines if e["event"] != "listening"] == [e["event"] for e in events
                                                                         if e["event"] != "listening"]
    series_events = {e["series_uid"]: e for e in events if e["event"] == "series"}
    ev = series_events[uid_a]
    assert ev["status"] == "ok" and ev["instances"] == 4 and ev["slices"] == 4 and ev["sent"]["ok"]
    assert ev["calling_ae"] == ["MODALITY"] and series_events[series_b[0].SeriesInstanceUID]["calling_ae"] == [
        "MODALITY2"]
    assert ev["lesion_volume_mm3"] == pytest.approx(ev["lesion_area_px"] * 0.3125 ** 2 * 3.0, rel=1e-6)
    assert ev["lesion_volume_mm3"] > 0 and 2 not in ev["lesion_slices"]
    for key in ("receive", "wait", "read", "infer", "write", "send", "total"):
        assert ev["timings_ms"][key] >= 0
    assert Path(ev["outputs"]["seg"]).is_file()
    refused = [e for e in events if e["event"] == "refused"]
    assert len(refused) == 3 and all(e["reason"] and e["status"] == "0xA900" for e in refused)
    # the series' result says it lacks them (it read plain 'ok', the gap unexplained)
    assert sorted(ev["refused_instances"]) == sorted(e["sop_instance_uid"] for e in refused)
    assert any("3 instance(s) of this series were refused on receipt" in w for w in ev["warnings"])
    assert "refused_instances" not in series_events[uid_b]


def test_echo_and_non_mr_storage_refused_at_negotiation(start_node):
    """A CT sender only learnt 'no presentation context'; the node's log said nothing of it."""
    node, events = start_node()
    assoc = modality().associate(LOCAL, node.port, ae_title="HEMSEG")
    try:
        assert assoc.send_c_echo().Status == 0x0000
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        assert MRImageStorage in accepted and CTImageStorage not in accepted
    finally:
        assoc.release()
    assert not any(e["event"] == "contexts_rejected" for e in events)  # it may send MR: nothing to say
    ct_only = AE(ae_title="CTSCANNER")
    ct_only.add_requested_context(CTImageStorage)
    assoc = ct_only.associate(LOCAL, node.port, ae_title="HEMSEG")
    assert not assoc.is_established  # accepted without a context, the requestor aborts: it learns no more
    ev = wait_for(lambda: next((e for e in events if e["event"] == "contexts_rejected"), None),
                  what="contexts_rejected event")
    assert ev["calling_ae"] == "CTSCANNER" and ev["sop_classes"] == ["CT Image Storage"]


def test_allow_list_rejects_other_calling_ae_titles(start_node):
    node, events = start_node(allow=("MODALITY",))
    intruder = modality("INTRUDER").associate(LOCAL, node.port, ae_title="HEMSEG")
    assert intruder.is_rejected
    wait_for(lambda: any(e["event"] == "association_rejected" for e in events), what="rejection event")
    [rejected] = [e for e in events if e["event"] == "association_rejected"]
    assert rejected["calling_ae"] == "INTRUDER"
    friend = modality("MODALITY").associate(LOCAL, node.port, ae_title="HEMSEG")
    assert friend.is_established
    assert friend.send_c_echo().Status == 0x0000
    friend.release()


def test_a_rejection_for_too_many_associations_says_so(start_node):
    """--max-associations 1 and a second association: the event's reason read only 'rejected' (with --allow set
    too, 'not in --allow', while pynetdicom sent 'local limit exceeded')."""
    node, events = start_node(max_associations=1, allow=("MODALITY",))
    first = modality("MODALITY").associate(LOCAL, node.port, ae_title="HEMSEG")
    assert first.is_established
    try:
        second = modality("OTHER").associate(LOCAL, node.port, ae_title="HEMSEG")
        assert second.is_rejected
        wait_for(lambda: any(e["event"] == "association_rejected" for e in events), what="rejection event")
    finally:
        first.release()
    [rejected] = [e for e in events if e["event"] == "association_rejected"]
    assert rejected["calling_ae"] == "OTHER"
    assert rejected["reason"] == "too many associations at once (--max-associations 1)"


def test_refused_instances_are_counted_once_and_not_when_the_inbox_holds_them(tmp_path, start_node):
    """One instance refused twice was listed twice; a bad copy of an instance the inbox holds (a resend) was said
    to be missing from a result that held it."""
    node, events = start_node(series_timeout=1.0)
    series = mr_series(3)
    uid = series[0].SeriesInstanceUID
    bad = corrupt_instance(uid)
    assert [s for s, _ in send(node.port, [series[0], series[1], bad, bad])] == [0, 0, 0xA900, 0xA900]
    wait_for(lambda: any(e["event"] == "series" for e in events), what="the first result")
    [first] = [e for e in events if e["event"] == "series"]
    assert first["refused_instances"] == [bad.SOPInstanceUID]
    assert any("1 instance(s) of this series were refused" in w for w in first["warnings"])
    copy_bad = copy.deepcopy(series[0])
    copy_bad.PixelData = copy_bad.PixelData[: len(copy_bad.PixelData) // 2]
    assert [s for s, _ in send(node.port, [copy_bad, series[2]])] == [0xA900, 0]
    wait_for(lambda: sum(e["event"] == "series" for e in events) == 2, what="the second result")
    second = [e for e in events if e["event"] == "series"][1]
    assert second["instances"] == 3 and "refused_instances" not in second
    assert not any("were refused" in w for w in second["warnings"])


def test_a_start_removes_the_temporary_files_of_results_a_killed_node_was_writing(tmp_path, start_node):
    """A node killed while writing a result left .hemseg_seg.dcm.<random>.tmp in results/<series>/ for good (a
    later run's event listed it as an earlier result removed)."""
    results = tmp_path / "node" / "results"
    (results / "1.2.3").mkdir(parents=True)
    (results / "1.2.3" / ".hemseg_seg.dcm.k7x.tmp").write_bytes(b"half")
    (results / "1.2.4").mkdir()
    (results / "1.2.4" / ".hemseg_seg.dcm.abc.tmp").write_bytes(b"half")
    (results / "1.2.4" / "hemseg_seg.dcm").write_bytes(b"a result")
    start_node(out_dir=tmp_path / "node")
    assert not (results / "1.2.3").exists()
    assert [p.name for p in (results / "1.2.4").iterdir()] == ["hemseg_seg.dcm"]


def test_a_send_failed_result_is_sent_again_when_its_series_is(tmp_path, destination, start_node, caplog):
    """A series whose result could not be sent, sent again unchanged, was answered and ignored without a word: a
    resend is how a PACS retries, so its result is made and sent again."""
    out = tmp_path / "node"
    dead = socket.socket()
    dead.bind((LOCAL, 0))
    port = dead.getsockname()[1]
    dead.close()  # nobody listens there
    node, events = start_node(out_dir=out, store_to=Destination("PACS", LOCAL, port), send_timeout=2.0)
    series = mr_series(2)
    with caplog.at_level("WARNING", logger="hemseg.runtime.node.sender"):
        send(node.port, series)
        wait_for(lambda: any(e["event"] == "series" for e in events), what="the failed send")
    assert [e["status"] for e in events if e["event"] == "series"] == ["send_failed"]
    # the log line names the series (its result folder): every result is hemseg_seg.dcm (QA, stop 52)
    assert f"sending {series[0].SeriesInstanceUID}/hemseg_seg.dcm to PACS@" in caplog.text
    node.stop()
    node, events = start_node(out_dir=out, store_to=destination.address)
    assert events[0]["recovered_series"] == []  # marked: not pending by itself
    send(node.port, series)
    wait_for(lambda: len(destination.segs()) == 1, what="the result sent on the resend")
    wait_for(lambda: any(e["event"] == "series" for e in events), what="its event")
    assert [e["status"] for e in events if e["event"] == "series"] == ["ok"]


@pytest.mark.parametrize("fmt", ["dicom-seg", "dicom-rtstruct"])
def test_a_result_replaced_after_the_inbox_was_cleared_says_what_it_lost(tmp_path, start_node, fmt):
    """The inbox cleared (retention), the node restarted, one instance of a segmented series sent again: its one-
    slice result replaced the full one without a word. Now the series event warns, naming the lost instances."""
    import shutil

    out = tmp_path / "node"
    first, events = start_node(out_dir=out, fmt=fmt)
    series = mr_series(3)
    uid = series[0].SeriesInstanceUID
    send(first.port, series)
    wait_for(lambda: any(e["event"] == "series" for e in events), what="the first result")
    [done] = [e for e in events if e["event"] == "series"]
    assert done["status"] == "ok" and not [w for w in done["warnings"] if "no longer in the inbox" in w]
    first.stop()
    shutil.rmtree(out / "inbox" / uid)
    second, events = start_node(out_dir=out, fmt=fmt)
    send(second.port, series[:1])
    wait_for(lambda: any(e["event"] == "series" for e in events), what="the second result")
    [again] = [e for e in events if e["event"] == "series"]
    assert again["status"] == "ok" and again["instances"] == 1
    [note] = [w for w in again["warnings"] if "no longer in the inbox" in w]
    assert "referenced 2 instance(s) no longer in the inbox" in note and "of the 1 held now" in note


def test_restart_processes_what_was_received_but_not_segmented(tmp_path, destination, start_node):
    out = tmp_path / "node"
    first, first_events = start_node(out_dir=out, series_timeout=600.0, store_to=destination.address)
    series = mr_series(3)
    uid = series[0].SeriesInstanceUID
    assert [s for s, _ in send(first.port, series)] == [0, 0, 0]
    # acknowledged means on disk, before any processing
    assert len(Inbox(out).instances(uid)) == 3 and Inbox(out).pending() == [uid]
    first.stop()  # a stop (or a crash) before the series timeout: nothing processed, nothing sent
    assert destination.segs() == [] and not any(e["event"] == "series" for e in first_events)
    stopped = [e for e in first_events if e["event"] == "stopped"]
    assert stopped and stopped[0]["pending_series"] == [uid]

    # a restart refused for its port segmented the recovered series (and would have sent it) before failing
    from hemseg.errors import UsageError

    with socket.socket() as taken:
        taken.bind((LOCAL, 0))
        taken.listen()
        with pytest.raises(UsageError, match="cannot listen"):
            start_node(out_dir=out, series_timeout=600.0, store_to=destination.address, port=taken.getsockname()[1])
    assert Inbox(out).pending() == [uid] and not (out / "results").exists() and destination.segs() == []

    second, events = start_node(out_dir=out, series_timeout=600.0, store_to=destination.address)
    assert events[0]["event"] == "listening" and events[0]["recovered_series"] == [uid]
    # what computes, as a SEG's parameters say it (a fold ensemble said its first fold alone)
    assert "backend_precision" in events[0] and events[0]["ensemble_with"] is None
    wait_for(lambda: destination.segs(), what="the recovered series' SEG")
    wait_for(lambda: any(e["event"] == "series" for e in events), what="the series event")
    timings = next(e for e in events if e["event"] == "series")["timings_ms"]
    assert timings["receive"] is None and timings["wait"] is None  # they were -600000 and 600000 ms
    check_seg_against(seg_by_series(destination.segs(), uid), series)
    wait_for(lambda: second.idle(), what="the node to be idle")
    assert Inbox(out).pending() == []
    marker = json.loads((out / "inbox" / uid / MARKER).read_text())
    assert marker["status"] == "ok" and len(marker["files"]) == 3


def test_late_instances_make_the_whole_series_pending_again(tmp_path, destination, start_node):
    node, events = start_node(store_to=destination.address, nifti=True)
    series = mr_series(4)
    send(node.port, series[:2])
    wait_for(lambda: len(destination.segs()) == 1, what="first SEG")
    send(node.port, series[2:])
    wait_for(lambda: len(destination.segs()) == 2, what="second SEG")
    first, second = destination.segs()
    assert first.SeriesInstanceUID == second.SeriesInstanceUID  # one SEG series per source series and model
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert len(second.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 4
    wait_for(lambda: sum(e["event"] == "series" for e in events) == 2, what="two series events")
    last = [e for e in events if e["event"] == "series"][-1]
    assert last["instances"] == 4 and last["slices"] == 4
    nib = pytest.importorskip("nibabel")
    label = nib.load(last["outputs"]["nifti"])  # --nifti: the label map beside the SEG
    assert label.shape == (64, 64, 4) and int(np.asarray(label.dataobj).sum()) == last["lesion_area_px"]
    node.stop()  # one series, segmented twice: 'processed_series' counted runs (2)
    (stopped,) = [e for e in events if e["event"] == "stopped"]
    assert stopped["processed_series"] == 1 and stopped["series_runs"] == 2


def test_rtstruct_format_sends_a_structure_set_that_reads_back_as_the_mask(tmp_path, destination, start_node):
    """--format dicom-rtstruct: an RT Structure Set per series, sent by C-STORE in its own SOP class, which
    hemseg's RTSTRUCT reader turns back into exactly the mask of the NIfTI label map written beside it."""
    from dicom_series import save_series

    from hemseg.runtime.io import read_image, read_mask
    from hemseg.runtime.io.dicom_mask import read_dicom_mask_and_labels

    node, events = start_node(store_to=destination.address, nifti=True, fmt="dicom-rtstruct")
    series = mr_series(4, dark=(1,))
    send(node.port, series)
    ev = wait_for(lambda: next((e for e in events if e["event"] == "series"), None), what="series event")
    assert ev["status"] == "ok" and ev["sent"]["ok"], ev
    assert set(ev["outputs"]) == {"rtstruct", "nifti"} and ev["outputs"]["rtstruct"].endswith("hemseg_rtstruct.dcm")
    assert "seg_sop_instance_uid" not in ev
    [received] = destination.segs()
    assert received.SOPClassUID == RTStructureSetStorage
    assert received.SOPInstanceUID == ev["rtstruct_sop_instance_uid"]
    folder = save_series(series, tmp_path / "series")
    vol = read_image(folder)
    path = tmp_path / "received.dcm"
    received.save_as(path, enforce_file_format=True)
    mask, _ = read_dicom_mask_and_labels(path, vol, None)
    assert mask.sum() == ev["lesion_area_px"] > 0 and mask[1].sum() == 0
    assert np.array_equal(mask, read_mask(ev["outputs"]["nifti"], image=vol))
    with pytest.raises(UsageError, match="--format"):
        NodeConfig(model=TINY, fmt="png")


def test_a_bad_series_is_logged_and_the_node_goes_on(tmp_path, destination, start_node):
    node, events = start_node(store_to=destination.address)
    clash = mr_series(2)
    twin = copy.deepcopy(clash[0])
    twin.SOPInstanceUID = generate_uid()  # a second instance at the same position: not one volume
    send(node.port, [*clash, twin])
    good = mr_series(2)
    send(node.port, good)
    wait_for(lambda: sum(e["event"] == "series" for e in events) == 2, what="two series events")
    by_uid = {e["series_uid"]: e for e in events if e["event"] == "series"}
    bad = by_uid[clash[0].SeriesInstanceUID]
    assert bad["status"] == "error" and "same slice position" in bad["error"]
    assert by_uid[good[0].SeriesInstanceUID]["status"] == "ok"
    assert len(destination.segs()) == 1


def test_a_failed_resegmentation_names_the_instance_and_removes_the_earlier_result(tmp_path, start_node):
    """A late instance of another size makes the series unreadable: the error names that instance (it named a good
    slice), and the earlier SEG / NIfTI, which no longer match the inbox, are removed and listed."""
    node, events = start_node(nifti=True)
    series = mr_series(3)
    uid = series[0].SeriesInstanceUID
    send(node.port, series)
    wait_for(lambda: any(e["event"] == "series" for e in events), what="first series event")
    results = tmp_path / "node" / "results" / uid
    assert sorted(p.name for p in results.iterdir()) == ["hemseg_mask.nii.gz", "hemseg_seg.dcm"]
    odd = copy.deepcopy(series[0])
    odd.SOPInstanceUID = odd.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    odd.ImagePositionPatient = [float(v) + 9.0 * n for v, n in zip(odd.ImagePositionPatient, (1, 0, 0))]
    odd.Rows = int(odd.Rows) + 2
    odd.PixelData = np.zeros((int(odd.Rows), int(odd.Columns)), np.int16).tobytes()
    assert [s for s, _ in send(node.port, [odd])] == [0]
    wait_for(lambda: sum(e["event"] == "series" for e in events) == 2, what="second series event")
    last = [e for e in events if e["event"] == "series"][-1]
    assert last["status"] == "error" and last["error"].startswith(f"{odd.SOPInstanceUID}.dcm: "), last["error"]
    assert last["retry"] is False and sorted(last["removed"]) == ["hemseg_mask.nii.gz", "hemseg_seg.dcm"]
    assert list(results.iterdir()) == []
    assert Inbox(tmp_path / "node").pending() == []  # the series' own fault: marked, not retried


def test_a_write_failure_of_the_node_leaves_the_series_pending_for_the_next_start(tmp_path, start_node):
    """A full disk while writing the result is the node's failure, not the series': it was marked processed and
    never segmented again, even after a restart with space free."""
    out = tmp_path / "node"
    node, events = start_node(out_dir=out)
    full = OSError(28, "No space left on device", str(out / "results" / "x" / "hemseg_seg.dcm"))

    def no_space(*args, **kwargs):
        raise full

    node.processor.process = no_space
    series = mr_series(2)
    uid = series[0].SeriesInstanceUID
    send(node.port, series)
    ev = wait_for(lambda: next((e for e in events if e["event"] == "series"), None), what="series event")
    assert ev["status"] == "error" and ev["retry"] is True
    assert ev["error"] == f"{full.filename}: No space left on device"
    assert Inbox(out).pending() == [uid] and not (out / "inbox" / uid / MARKER).exists()
    node.stop()
    assert [e["event"] for e in events][-2:] == ["stopping", "stopped"]  # a word before the wait, then the end
    (stopped,) = [e for e in events if e["event"] == "stopped"]
    assert stopped["pending_series"] == [uid]  # was [] (only series waiting for their timeout counted)
    again, events2 = start_node(out_dir=out)
    assert events2[0]["recovered_series"] == [uid]
    ev2 = wait_for(lambda: next((e for e in events2 if e["event"] == "series"), None), what="recovered series")
    assert ev2["status"] == "ok" and ev2["instances"] == 2
    assert Inbox(out).pending() == []


def test_send_failure_is_recorded(tmp_path, start_node):
    dead = Destination_SCP()
    address = dead.address
    dead.close()  # nobody listens there any more
    node, events = start_node(store_to=address)
    send(node.port, mr_series(1))
    ev = wait_for(lambda: next((e for e in events if e["event"] == "series"), None), what="series event")
    assert ev["status"] == "send_failed" and ev["error"] and not ev["sent"]["ok"]
    assert Path(ev["outputs"]["seg"]).is_file()
    # the reason an operator can act on: nothing listens there (it said "association aborted by PACS@...")
    assert ev["error"].startswith(f"cannot connect to {address}:") and "refused" in ev["error"].lower()


@contextlib.contextmanager
def silent_destination():
    """(a Destination that accepts connections and never answers, the connections it holds), closed at the end."""
    silent = socket.create_server((LOCAL, 0))
    held: list[socket.socket] = []

    def accept():
        try:
            while True:
                held.append(silent.accept()[0])  # accepted, never answered
        except OSError:
            return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield Destination("PACS", LOCAL, silent.getsockname()[1]), held
    finally:
        silent.close()
        for conn in held:
            conn.close()


def test_a_silent_destination_does_not_hold_the_next_series(tmp_path, start_node):
    """The send ran in the segmenting thread: a destination that accepts the connection and never answers held every
    later series for one to two --send-timeout periods. Now series B is segmented while A's send still waits, and
    each series' event comes once its send has ended."""
    with silent_destination() as (silent, held):
        node, events = start_node(store_to=silent, send_timeout=20.0)
        a, b = mr_series(1), mr_series(1)
        send(node.port, a)
        results = tmp_path / "node" / "results"
        wait_for(lambda: (results / a[0].SeriesInstanceUID / "hemseg_seg.dcm").is_file(), what="series A's SEG")
        wait_for(lambda: held, what="A's send connected")
        send(node.port, b)
        wait_for(lambda: (results / b[0].SeriesInstanceUID / "hemseg_seg.dcm").is_file(), what="series B's SEG")
        assert not [e for e in events if e["event"] == "series"]  # A is still being sent
        assert not node.idle()
    done = wait_for(lambda: [e for e in events if e["event"] == "series"] if len(
        [e for e in events if e["event"] == "series"]) == 2 else None, what="both series events")
    assert [e["series_uid"] for e in done] == [a[0].SeriesInstanceUID, b[0].SeriesInstanceUID]
    for e in done:
        assert e["status"] == "send_failed" and e["timings_ms"]["send"] is not None
        assert e["timings_ms"]["total"] >= e["timings_ms"]["send"]
    wait_for(node.idle, what="idle")
    marker = json.loads((tmp_path / "node" / "inbox" / a[0].SeriesInstanceUID / MARKER).read_text())
    assert marker["status"] == "send_failed"


def test_a_second_stop_request_gives_up_the_sends_a_silent_destination_holds(tmp_path, start_node):
    """A stop with results still to send to a destination that never answers waited up to twice --send-timeout per
    result, a second Ctrl-C or SIGTERM ignored. abandon_sends() (the CLI's second signal) ends the wait at once;
    the series given up stay unmarked, so the next start segments and sends them again."""
    with silent_destination() as (silent, held):
        node, events = start_node(store_to=silent, send_timeout=60.0)
        a, b = mr_series(1), mr_series(1)
        send(node.port, a)
        send(node.port, b)
        wait_for(lambda: held and len(node._sends) == 1, what="A being sent, B queued")
        stopper = threading.Thread(target=node.stop, kwargs={"grace": 0.5})
        stopper.start()
        wait_for(lambda: any(e["event"] == "stopping" for e in events), what="the stop")
        time.sleep(0.5)
        assert stopper.is_alive()  # waiting for the silent destination
        t0 = time.monotonic()
        assert node.abandon_sends() == 2
        stopper.join(10)
        assert not stopper.is_alive() and time.monotonic() - t0 < 5
        # the send under way is aborted, not left to time out (the process waited for it up to --send-timeout)
        wait_for(lambda: not [t for t in threading.enumerate() if t.name == "hemseg-node-sender"], timeout=5,
                 what="the sender gone while the destination is still silent")
    [stopped] = [e for e in events if e["event"] == "stopped"]
    assert stopped["sends_abandoned"] == 2
    assert set(stopped["pending_series"]) == {a[0].SeriesInstanceUID, b[0].SeriesInstanceUID}
    assert not [e for e in events if e["event"] == "series"]
    inbox = tmp_path / "node" / "inbox"
    assert not (inbox / a[0].SeriesInstanceUID / MARKER).exists() and not (inbox / b[0].SeriesInstanceUID / MARKER).exists()
    assert not [e for e in events if e["event"] == "series"]  # and records nothing after the stop


def test_sends_given_up_leave_a_result_still_being_made_unsent_and_pending(tmp_path, start_node):
    """A second signal while a series was being segmented found nothing queued and was ignored: the result was then
    sent (waiting on a silent destination) and its series marked done. Given up, it is neither sent nor marked."""
    with silent_destination() as (silent, held):
        node, events = start_node(store_to=silent, send_timeout=60.0)
        node.abandon_sends()  # before the result exists: as while it is being segmented
        series = mr_series(2)
        send(node.port, series)
        uid = series[0].SeriesInstanceUID
        wait_for(lambda: (tmp_path / "node" / "results" / uid / "hemseg_seg.dcm").is_file(), what="the result")
        wait_for(node.idle, what="idle")
        assert not held  # nothing sent
        node.stop()
    [given_up] = [e for e in events if e["event"] == "abandoning_sends"]
    assert given_up["sends"] == 0 and given_up["note"].startswith("their series stay pending")
    [stopped] = [e for e in events if e["event"] == "stopped"]
    assert stopped["sends_abandoned"] == 1 and stopped["pending_series"] == [uid]
    assert not (tmp_path / "node" / "inbox" / uid / MARKER).exists()


def test_the_nodes_engine_threads_can_be_capped(start_node):
    """hemseg serve --threads N, as hemseg predict: the engine's inference threads (QA, stop 52)."""
    node, events = start_node(threads=1, backend="ort-cpu")
    assert node.processor.loaded.runner.session.get_session_options().intra_op_num_threads == 1
    [listening] = [e for e in events if e["event"] == "listening"]
    assert listening["engine_threads"] == 1  # recorded, as predict's summary.json (QA, stop 53)


def test_a_second_signal_without_a_destination_says_nothing_stays_pending(tmp_path, start_node):
    """Without --store-to, the second signal's event said 'their series stay pending: the next start segments and
    sends them again' while the series being segmented finished and was done (a QA finding of stop 52)."""
    node, events = start_node()
    node.abandon_sends()
    series = mr_series(2)
    send(node.port, series)
    uid = series[0].SeriesInstanceUID
    wait_for(lambda: (tmp_path / "node" / "inbox" / uid / MARKER).exists(), what="the series done")
    node.stop()
    [given_up] = [e for e in events if e["event"] == "abandoning_sends"]
    assert given_up["note"].startswith("no destination") and "nothing stays pending" in given_up["note"]
    [stopped] = [e for e in events if e["event"] == "stopped"]
    assert stopped["pending_series"] == []


def test_a_destination_that_stores_no_rt_structure_sets_is_named_as_such(tmp_path):
    """A PACS accepting MR but not RT Structure Set storage was reported as 'association aborted by PACS'."""
    from pydicom.data import get_testdata_file
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian

    from hemseg.runtime.node.config import Destination
    from hemseg.runtime.node.sender import send_file

    rt = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)  # a bare data set: give it file meta
    rt.file_meta = FileMetaDataset()
    rt.file_meta.MediaStorageSOPClassUID, rt.file_meta.MediaStorageSOPInstanceUID = rt.SOPClassUID, rt.SOPInstanceUID
    rt.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    rt.save_as(tmp_path / "rt.dcm", enforce_file_format=True)
    scp = AE(ae_title="PACS")
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage only
    server = scp.start_server((LOCAL, 0), block=False)
    try:
        dest = Destination("PACS", LOCAL, server.server_address[1])
        sent = send_file(tmp_path / "rt.dcm", dest, "HEMSEG", timeout=5.0)
    finally:
        scp.shutdown()
    assert not sent["ok"] and sent["error"].startswith(f"{dest} accepts no RT Structure Set Storage")


def test_a_new_result_removes_the_earlier_files_it_did_not_write(tmp_path, start_node):
    """Re-segmented after a restart without --nifti, the series kept the earlier, no longer matching label map."""
    out = tmp_path / "node"
    node, events = start_node(out_dir=out, nifti=True)
    series = mr_series(2)
    send(node.port, series[:1])
    ev = wait_for(lambda: next((e for e in events if e["event"] == "series"), None), what="first series")
    nifti = Path(ev["outputs"]["nifti"])
    assert nifti.is_file()
    node.stop()
    again, events2 = start_node(out_dir=out)
    send(again.port, series[1:])
    ev2 = wait_for(lambda: next((e for e in events2 if e["event"] == "series"), None), what="second series")
    assert ev2["status"] == "ok" and ev2["instances"] == 2 and ev2["removed"] == [nifti.name]
    assert not nifti.exists() and Path(ev2["outputs"]["seg"]).is_file()


def test_send_timeout_is_checked_and_reaches_the_sender():
    with pytest.raises(UsageError, match="--send-timeout"):
        NodeConfig(model=TINY, send_timeout=0)
    assert NodeConfig(model=TINY, send_timeout=2.5).send_timeout == 2.5


# -- configuration and inbox -------------------------------------------------------------------------------------
def test_destination_and_config_validation(tmp_path):
    d = Destination.parse("PACS@10.0.0.5:104")
    assert (d.ae_title, d.host, d.port) == ("PACS", "10.0.0.5", 104) and str(d) == "PACS@10.0.0.5:104"
    assert Destination.parse("X@[::1]:11112").host == "::1"
    for bad in ("PACS10.0.0.5:104", "PACS@host", "PACS@host:x", "@host:104", "A" * 17 + "@h:1", "P@h:70000"):
        with pytest.raises(UsageError):
            Destination.parse(bad)
    with pytest.raises(UsageError):
        NodeConfig(model=TINY, series_timeout=-1)
    with pytest.raises(UsageError):
        NodeConfig(model=TINY, allow=("BAD\\AE",))
    with pytest.raises(UsageError):
        NodeConfig(model=TINY, port=70000)


def test_inbox_store_is_atomic_and_checked(tmp_path):
    inbox = Inbox(tmp_path)
    uid = "1.2.3"

    def refuse(path):
        assert path.is_file() and path.name.startswith(".")
        raise ValueError("no")

    with pytest.raises(ValueError):
        inbox.store(uid, "1.2.3.4", b"data", check=refuse)
    assert not (tmp_path / "inbox" / uid).exists()  # nothing kept, no temporary file, no empty series folder
    for bad in ("../x", "1.2/3", "", "1." * 40):
        with pytest.raises(ValueError):
            inbox.store(bad, "1.2", b"x")
        with pytest.raises(ValueError):
            inbox.store(uid, bad, b"x")
    inbox.store(uid, "1.2.3.4", b"data")
    inbox.store(uid, "1.2.3.5", b"data")
    assert inbox.pending() == [uid]
    inbox.mark(uid, ["1.2.3.4.dcm", "1.2.3.5.dcm"], {"status": "ok"})
    assert inbox.pending() == []
    inbox.store(uid, "1.2.3.6", b"data")  # a late instance
    with pytest.raises(ValueError):
        inbox.store(uid, "1.2.3.7", b"data", check=refuse)  # refused beside kept instances: they stay
    assert inbox.pending() == [uid] and [p.name for p in inbox.unprocessed(uid)] == ["1.2.3.6.dcm"]
    work, files = inbox.snapshot(uid)
    assert sorted(p.name for p in work.iterdir()) == sorted(files) and len(files) == 3
    inbox.drop_work()
    assert not work.exists()
    # what a node killed mid-receipt leaves (never acknowledged): removed at the next start, with a folder it
    # alone made; a user's file and the instances stay
    (tmp_path / "inbox" / uid / ".1.2.3.8.abc123.tmp").write_bytes(b"half")
    (tmp_path / "inbox" / "1.2.9").mkdir()
    (tmp_path / "inbox" / "1.2.9" / ".1.2.9.1.x.tmp").write_bytes(b"half")
    assert sorted(p.name for p in inbox.drop_partial()) == [".1.2.3.8.abc123.tmp", ".1.2.9.1.x.tmp"]
    assert not (tmp_path / "inbox" / "1.2.9").exists()
    assert sorted(p.name for p in (tmp_path / "inbox" / uid).iterdir() if p.suffix == ".dcm") == [
        "1.2.3.4.dcm", "1.2.3.5.dcm", "1.2.3.6.dcm"]


# -- the command line --------------------------------------------------------------------------------------------
def test_serve_cli_prints_json_lines_answers_echo_and_stops_on_sigterm(tmp_path):
    cmd = [sys.executable, "-c", "from hemseg.cli import entry; entry()", "-q", "serve", str(TINY),
           "--host", LOCAL, "--port", "0", "--out", str(tmp_path / "node"), "--series-timeout", "0.5"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        listening = json.loads(proc.stdout.readline())
        assert listening["event"] == "listening" and listening["port"] > 0
        assoc = modality().associate(LOCAL, listening["port"], ae_title="HEMSEG")
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assert [s for s, _ in send(listening["port"], mr_series(2))] == [0, 0]
        assoc.release()
        series = json.loads(proc.stdout.readline())
        assert series["event"] == "series" and series["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["event"] == "stopped"


def test_serve_cli_bad_model_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from hemseg.cli import entry; entry()", "serve",
                           str(tmp_path / "missing.onnx"), "--port", "0", "--out", str(tmp_path / "n")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hemseg: error:")
    assert not (tmp_path / "n").exists()  # inbox/ and work/ were left behind


def test_a_taken_port_is_refused_naming_the_address(tmp_path, start_node):
    """'Address already in use' did not say which address or option."""
    from hemseg.errors import UsageError

    node, _ = start_node()
    with pytest.raises(UsageError, match=rf"cannot listen on {LOCAL}:{node.port} \(--host, --port\)"):
        start_node(out_dir=tmp_path / "second", port=node.port)
    # the failed node never listened: no "stopped" event in its log either (it had one, with no "listening"), and
    # it leaves nothing (inbox/ and work/ stayed behind)
    assert not (tmp_path / "second").exists()


def test_two_nodes_do_not_share_an_output_folder(tmp_path, start_node):
    """Both would process its inbox (a series twice, or split); the second is refused, and a stopped node's folder
    can be used again."""
    from hemseg.errors import UsageError

    first, _ = start_node(out_dir=tmp_path / "shared")
    with pytest.raises(UsageError, match="another hemseg serve uses this output folder"):
        start_node(out_dir=tmp_path / "shared")
    first.stop()
    again, _ = start_node(out_dir=tmp_path / "shared")
    assert again.port > 0


def test_a_node_without_pynetdicom_makes_no_folder(tmp_path, monkeypatch):
    """The one-line 'needs pynetdicom' came after inbox/ and work/ were made."""
    from hemseg.errors import DependencyError
    from hemseg.runtime.node import server

    def missing():
        raise DependencyError("hemseg serve needs pynetdicom (No module named 'pynetdicom'); pip install "
                              "'hemseg[dicom]'")

    monkeypatch.setattr(server, "_pynetdicom", missing)
    with pytest.raises(DependencyError, match="needs pynetdicom"):
        DicomNode(NodeConfig(model=TINY, host=LOCAL, port=0, out_dir=tmp_path / "node"))
    assert not (tmp_path / "node").exists()


def test_a_rejection_names_its_reason_and_the_send_timeout_has_a_ceiling(tmp_path):
    """A wrong called AE title was reported with advice about the calling one; --send-timeout 1e10 was accepted and
    then broke every send ('timestamp out of range')."""
    from pydicom.data import get_testdata_file
    from pynetdicom import AllStoragePresentationContexts

    from hemseg.runtime.node.config import Destination
    from hemseg.runtime.node.sender import send_file

    scp = AE(ae_title="PACS")
    scp.supported_contexts = AllStoragePresentationContexts
    scp.require_called_aet = True
    server = scp.start_server((LOCAL, 0), block=False)
    try:
        sent = send_file(get_testdata_file("MR_small.dcm"), Destination("WRONG", LOCAL, server.server_address[1]),
                         "HEMSEG", timeout=5.0)
    finally:
        scp.shutdown()
    assert "Called AE title not recognised" in sent["error"] and "'WRONG' of --store-to" in sent["error"]
    with pytest.raises(UsageError, match="--send-timeout must be more than 0 and at most 3600"):
        NodeConfig(model=TINY, send_timeout=1e10)


def test_the_event_log_on_a_full_disk_keeps_whole_lines_and_the_events(tmp_path, caplog):
    """node.jsonl on a full disk: the write raised out of the C-STORE handler (the sender got 0xC211, not the
    documented refusal, and no 'refused' event reached stdout), and a half-written line had the next event glued
    onto it, so the log no longer parsed line by line."""
    import signal

    import hemseg.runtime.node.events as events

    resource = pytest.importorskip("resource")
    seen = []
    log_ = events.EventLog(tmp_path / "node.jsonl", callback=seen.append)
    log_.emit("listening", port=1)
    # the file may grow by 20 more bytes (a full disk, as `ulimit -f` makes one): the next line is cut short
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, ((tmp_path / "node.jsonl").stat().st_size + 20, hard))
    try:
        with caplog.at_level("WARNING"):
            record = log_.emit("refused", reason="cannot store the instance: No space left on device")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert record["event"] == "refused" and seen[-1] is record  # still handed on (stdout)
    assert "'refused' event is on stdout only" in caplog.text
    log_.emit("series", status="ok")
    kinds = [json.loads(x)["event"] for x in (tmp_path / "node.jsonl").read_text().splitlines()]
    assert kinds == ["listening", "series"]


def test_a_send_to_a_host_that_does_not_resolve_names_the_destination(tmp_path):
    """'cannot connect: [Errno -2] Name or service not known': the only send error that did not name where."""
    from hemseg.runtime.node.sender import send_file

    path = tmp_path / "x.dcm"
    mr_series(1)[0].save_as(path, enforce_file_format=True)
    dest = Destination("PACS", "no-such-host.invalid", 104)
    sent = send_file(path, dest, "HEMSEG", timeout=2.0)
    assert not sent["ok"] and sent["error"].startswith(f"cannot connect to {dest}: "), sent["error"]


def test_an_event_that_stdout_cannot_take_either_is_one_warning_not_a_traceback(tmp_path, caplog):
    """`hemseg serve ... > node.log` on the full disk: printing the event raised too, and the log got 'event
    callback failed' with a whole traceback."""
    import errno

    import hemseg.runtime.node.events as events

    def full(record):
        raise OSError(errno.EFBIG, "File too large")

    log_ = events.EventLog(tmp_path / "node.jsonl", callback=full)
    with caplog.at_level("WARNING"):
        log_.emit("series", series_uid="1.2.3", status="ok")
    assert "the 'series' event (1.2.3) could not be printed either: File too large" in caplog.text
    assert "Traceback" not in caplog.text and "callback failed" not in caplog.text


def test_a_stop_while_a_series_is_segmented_still_sends_and_records_it(tmp_path, destination, start_node):
    """SIGTERM while a series was being segmented, with --store-to: the sender saw an empty queue and the stop and
    ended before the result was queued; the SEG sat in results/ unsent, with no 'series' event, and 'stopped' listed
    the series as pending."""
    node, events = start_node(store_to=destination.address)
    gate, real = threading.Event(), node.processor.process

    def held(*args, **kwargs):
        gate.wait(30)
        return real(*args, **kwargs)

    node.processor.process = held
    series = mr_series(2)
    send(node.port, series)
    wait_for(lambda: node._busy is not None, what="segmenting to begin")
    stopper = threading.Thread(target=node.stop)
    stopper.start()
    wait_for(lambda: node._stopping, what="the stop")
    time.sleep(0.3)  # the sender has looked at its empty queue by now
    gate.set()
    stopper.join(30)
    assert not stopper.is_alive()
    [done] = [e for e in events if e["event"] == "series"]
    assert done["status"] == "ok" and done["sent"]["ok"]
    check_seg_against(seg_by_series(destination.segs(), series[0].SeriesInstanceUID), series)
    assert events[-1]["event"] == "stopped" and events[-1]["pending_series"] == []


def test_an_instance_received_again_with_other_content_is_reported(tmp_path, start_node):
    """An instance sent again under its SOP Instance UID with other pixels replaced the stored one with no record:
    the series was segmented anew from data its earlier result does not describe. The replacement stays (a PACS
    resends an instance under its UID after a correction), and a 'replaced' event says what changed."""
    node, events = start_node(series_timeout=600.0)
    series = mr_series(2)
    assert send(node.port, series) == [(0, "")] * 2
    send(node.port, [series[0]])  # the same again: no news
    renamed = copy.deepcopy(series[0])
    renamed.PatientName = "Corrected^Name"
    other = copy.deepcopy(series[1])
    other.PixelData = bytes(len(other.PixelData))
    moved = copy.deepcopy(series[1])  # the first pixels again, and another position: both are said
    moved.ImagePositionPatient = [0, 0, 99]
    assert send(node.port, [renamed, other, moved]) == [(0, "")] * 3
    replaced = [e for e in events if e["event"] == "replaced"]
    assert [(e["sop_instance_uid"], e["differs"]) for e in replaced] == [
        (series[0].SOPInstanceUID, "header: PatientName"), (series[1].SOPInstanceUID, "pixel data"),
        (series[1].SOPInstanceUID, "pixel data; header: ImagePositionPatient")]
    stored = pydicom.dcmread(node.inbox.series_dir(series[0].SeriesInstanceUID) / f"{series[1].SOPInstanceUID}.dcm")
    assert [float(v) for v in stored.ImagePositionPatient] == [0, 0, 99]  # the newer copy is the one kept


def test_a_series_sent_again_unchanged_is_not_segmented_and_sent_again(tmp_path, destination, start_node):
    """A series resent byte for byte after its result was made was segmented again, and with --store-to a second SEG
    of the same slices went to the PACS."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    node, events = start_node(store_to=destination.address)
    series = mr_series(2)
    for ds in series:  # a vendor's private block pydicom does not know: UN when read from implicit VR, LO/DS/OB not
        block = ds.private_block(0x0019, "ACME 1.0", create=True)
        block.add_new(0x10, "LO", "vendor text")
        block.add_new(0x11, "DS", "1.5")
        block.add_new(0x12, "OB", b"\x01\x02")
    send(node.port, series, syntaxes=[ExplicitVRLittleEndian])
    wait_for(lambda: len(destination.segs()) == 1, what="the first SEG")
    wait_for(lambda: node.idle(), what="the node idle")
    assert send(node.port, series, syntaxes=[ExplicitVRLittleEndian]) == [(0, "")] * 2
    time.sleep(1.5)  # three series timeouts
    assert node.idle() and len(destination.segs()) == 1
    assert sum(e["event"] == "series" for e in events) == 1
    # the same again in another transfer syntax (a PACS forwarding what the modality sent): other bytes, the same
    # data set; it was segmented again, a second SEG sent, with no event saying why
    implicit = []
    for ds in series:
        ds = copy.deepcopy(ds)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.set_original_encoding(True, True, ds.original_character_set)
        implicit.append(ds)
    assert send(node.port, implicit, syntaxes=[ImplicitVRLittleEndian]) == [(0, "")] * 2
    stored = node.inbox.series_dir(series[0].SeriesInstanceUID) / f"{series[0].SOPInstanceUID}.dcm"
    assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian  # received in that syntax
    time.sleep(1.5)
    assert node.idle() and len(destination.segs()) == 1
    assert sum(e["event"] == "series" for e in events) == 1
    assert send(node.port, series, syntaxes=[ExplicitVRLittleEndian]) == [(0, "")] * 2  # and back
    time.sleep(1.5)
    assert node.idle() and len(destination.segs()) == 1
    assert sum(e["event"] == "series" for e in events) == 1 and not [e for e in events if e["event"] == "replaced"]
    changed = copy.deepcopy(series[0])
    changed.PatientName = "Corrected^Name"
    send(node.port, [changed])  # another content: segmented and sent again
    wait_for(lambda: len(destination.segs()) == 2, what="a second SEG after a change")
