"""The DICOM node: a Storage SCP that segments each series it receives and can send the DICOM SEG on.

See :mod:`hemseg.runtime.node` for the behaviour; this module holds :class:`DicomNode`.
"""

from __future__ import annotations

import collections
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hemseg.errors import DependencyError, HemsegError, InputError, UsageError, os_error_line
from hemseg.runtime.io.writers import missing_folders, remove_empty_folders
from hemseg.runtime.node.config import NodeConfig
from hemseg.runtime.node.events import EventLog
from hemseg.runtime.node.inbox import Inbox, drop_temporary, valid_uid

log = logging.getLogger(__name__)

#: the lock file that keeps a second node off an output folder
LOCK_NAME = ".hemseg-node.lock"

#: The storage SOP classes accepted: MR Image, Enhanced MR Image, Legacy Converted Enhanced MR Image.
MR_STORAGE = ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4")
VERIFICATION = "1.2.840.10008.1.1"
#: C-STORE failure statuses (PS3.4 B.2.3): out of resources, data set does not match SOP class, cannot understand.
OUT_OF_RESOURCES, NOT_MATCHING, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
#: the root of DICOM's image (and other object) storage SOP class UIDs
STORAGE_PREFIX = "1.2.840.10008.5.1.4.1.1."


class Refusal(Exception):
    """An instance the node does not keep: a C-STORE failure status and the reason (sent as Error Comment)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _SendJob:
    """A segmented series waiting for its C-STORE: the result as read back (a later run of the series may replace
    the file meanwhile), and what its ``series`` event and inbox marker still need."""

    uid: str
    record: dict[str, Any]
    t0: float
    files: list[str]
    dataset: Any
    run: int


def _pynetdicom():
    try:
        import pynetdicom
    except ImportError as exc:
        raise DependencyError(f"hemseg serve needs pynetdicom ({exc}); pip install 'hemseg[dicom]'") from None
    return pynetdicom


def check_instance(path: Path) -> None:
    """Read a received file with hemseg's own DICOM reader (pixels decoded, geometry parsed): InputError if it
    would not be readable later (corrupt, color, no pixel data, no decoder for its transfer syntax, NaN ...)."""
    from hemseg.runtime.io.dicom import read_dicom_file
    from hemseg.runtime.io.intensity import check_finite

    vol = read_dicom_file(path)
    check_finite(vol.data, path)


class DicomNode:
    """A running node. ``start()`` loads the model, recovers the inbox and listens; ``stop()`` ends it cleanly.

    ``on_event`` receives every JSON event (also appended to ``out_dir/node.jsonl``).
    """

    def __init__(self, config: NodeConfig, on_event: Callable[[dict[str, Any]], None] | None = None):
        _pynetdicom()  # before any folder is made: without it the node cannot listen
        if config.fmt == "dicom-seg":
            from hemseg.runtime.io.dicom_seg import require_highdicom

            require_highdicom()
        self.config = config
        self._lock = None
        # the folders a start that fails (no model, a taken port) made: removed again, so that it leaves nothing
        self._created = missing_folders(config.out_dir)
        self.events = EventLog(Path(config.out_dir) / "node.jsonl", on_event)
        self.inbox: Inbox | None = None  # inbox/ and work/, made once the model is open
        self.results = Path(config.out_dir) / "results"
        self.processor = None
        self._ae = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._last: dict[str, float] = {}  # series UID -> monotonic time of the last arrival (pending series)
        self._first: dict[str, float] = {}
        self._callers: dict[str, set[str]] = {}
        self._recovered: set[str] = set()  # series received before a restart: their receive and wait are unknown
        self._refused: dict[str, list[str]] = {}  # series UID -> the instances refused since its last result
        self._busy: str | None = None
        # results waiting for their C-STORE, sent by a thread of their own so that a slow or silent destination
        # does not hold the next series (a send waits up to --send-timeout, twice)
        self._sends: collections.deque[_SendJob] = collections.deque()
        self._sending: str | None = None
        self._sender: threading.Thread | None = None
        self._give_up = False  # abandon_sends() was called: no result is sent any more (a second Ctrl-C)
        self._abandoned = 0  # the sends given up since: their series stay pending
        self._in_flight: list = []  # the association of the send under way (aborted when sends are given up)
        self._runs = 0  # series segmented so far, each run numbered: only a series' newest run marks it processed
        self._latest: dict[str, int] = {}  # series UID -> its newest run not finished yet
        self._stopping = False
        self._listening = False  # "listening" was emitted: "stopped" answers it
        self.processed: set[str] = set()  # series UIDs segmented (ok or not) by this node: a series counts once
        self.series_runs = 0  # segmentations, a series segmented anew (late or changed instances) counting each time

    # -- life cycle ----------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the node is not running")
        return int(self._server.server_address[1])

    def start(self) -> "DicomNode":
        _pynetdicom()
        from hemseg.runtime.node.processor import SeriesProcessor

        cfg = self.config
        self._lock_out_dir()
        try:
            self.processor = SeriesProcessor(cfg.model, backend=cfg.backend, device=cfg.device,
                                             batch_size=cfg.batch_size, postprocess=cfg.postprocess, nifti=cfg.nifti,
                                             fmt=cfg.fmt, threads=cfg.threads)
        except BaseException:
            self.stop()  # releases the lock
            self._remove_unused()
            raise
        fresh = not (Path(cfg.out_dir) / "inbox").exists()  # no earlier node's inbox here: nothing to keep
        try:
            self.inbox = Inbox(cfg.out_dir)
            self.inbox.drop_work()
            partial = self.inbox.drop_partial() + drop_temporary(self.results)  # results a killed node was writing
            if partial:  # never acknowledged (the sender still has them) or never renamed into place
                log.info("removed %d temporary file(s) an earlier node did not finish writing (e.g. %s)",
                         len(partial), partial[0])
            recovered = self.inbox.pending()
            now = time.monotonic()
            for uid in recovered:  # received before a restart and never processed: due at once
                self._last[uid] = now - cfg.series_timeout
                self._first[uid] = now - cfg.series_timeout
                self._recovered.add(uid)
            self._ae = self._make_ae()
            try:
                self._server = self._ae.start_server((cfg.host, cfg.port), block=False,
                                                     evt_handlers=self._handlers())
            except OSError as exc:  # port taken, no such host or address: name them (the OS text alone did not)
                raise UsageError(f"cannot listen on {cfg.host}:{cfg.port} (--host, --port): "
                                 f"{exc.strerror or exc}") from None
            # only a node that listens segments: a start refused for its port processed the recovered series
            self._thread = threading.Thread(target=self._run, name="hemseg-node-series", daemon=True)
            self._thread.start()
            if cfg.store_to is not None:
                self._sender = threading.Thread(target=self._send_loop, name="hemseg-node-sender", daemon=True)
                self._sender.start()
        except BaseException:
            self.stop()
            if fresh:
                self._remove_unused()
            raise
        self.events.emit("listening", ae_title=cfg.ae_title, host=cfg.host, port=self.port,
                         backend=self.processor.backend,
                         backend_precision=getattr(self.processor.loaded.runner, "precision", None),
                         engine_threads=cfg.threads or None,  # null: the engine's default, as predict's summary
                         model=str(self.processor.loaded.path),
                         ensemble_with=[str(p) for p in self.processor.loaded.members] or None,
                         model_sha256=self.processor.algorithm.model_sha256,
                         allow=list(cfg.allow) or None, store_to=str(cfg.store_to) if cfg.store_to else None,
                         series_timeout_s=cfg.series_timeout, recovered_series=recovered)
        self._listening = True
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stop listening, let open associations finish (``grace`` seconds, then abort them), finish the series
        being processed, join every thread and close the model. Pending series stay in the inbox. A node that
        listened says first what it is waiting for (a 'stopping' event: the series being segmented, the sends
        queued), as finishing them may take a while with no other sign of life."""
        if self._listening and not self._stopping:
            with self._cond:
                busy, queued = self._busy, len(self._sends) + (self._sending is not None)
            self.events.emit("stopping", segmenting=busy, sends_queued=queued,
                             grace_s=grace if self._server is not None else None)
        if self._server is not None:
            self._server.shutdown()
            deadline = time.monotonic() + grace
            while self._ae.active_associations and time.monotonic() < deadline and not self._give_up:
                time.sleep(0.05)
            for assoc in self._ae.active_associations:
                assoc.abort()
            for assoc in self._ae.active_associations:
                assoc.join(timeout=5.0)
            self._server = None
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._sender is not None:  # the results already made are sent before the node stops
            with self._cond:
                self._cond.notify_all()
            while self._sender.is_alive() and not self._give_up:  # abandon_sends() ends the wait
                self._sender.join(0.2)
            self._sender.join(5.0)  # its send's association aborted: it ends at once
            self._sender = None
        if self.processor is not None:
            self.processor.close()
            self.processor = None
        if self._listening:  # a start that failed (a taken port) never listened: no "stopped" either
            self._listening = False
            extra = {"sends_abandoned": self._abandoned} if self._give_up else {}
            self.events.emit("stopped", processed_series=len(self.processed), series_runs=self.series_runs,
                             pending_series=self._still_pending(), **extra)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def abandon_sends(self) -> int:
        """Send nothing more (a second Ctrl-C or SIGTERM while a stop waits for a destination that does not answer:
        up to twice --send-timeout per result): the results queued are given up, the send under way is aborted,
        and the result of a series still being segmented will not be sent. Their series stay unmarked in the inbox,
        so the next start segments and sends them again; nothing received is lost. Also ends the grace of open
        associations. Returns how many sends were given up so far (an 'abandoning_sends' event says it, once)."""
        with self._cond:
            first = not self._give_up
            self._give_up = True
            n = len(self._sends) + (self._sending is not None)
            self._abandoned += len(self._sends)  # the one under way counts when its send returns
            self._sends.clear()
            in_flight = list(self._in_flight)
            self._cond.notify_all()
        for assoc in in_flight:  # its connection closed: the send ends at once (an A-ABORT left the wait for the
            # peer's answer running, and pynetdicom's DUL thread kept the process alive, until --send-timeout)
            try:
                assoc.dul.socket.close()
            except Exception:  # noqa: BLE001 - it may have ended meanwhile
                pass
        if first:
            # without a destination nothing is sent: a series being segmented finishes and is done (the note said
            # it stayed pending: a QA finding of stop 52)
            note = ("their series stay pending (a series being segmented too: it finishes, unsent): the next start "
                    "segments and sends them again" if self.config.store_to is not None else
                    "no destination: a series being segmented finishes and is done; nothing stays pending")
            self.events.emit("abandoning_sends", sends=n, segmenting=self._busy, note=note)
        return n

    def _still_pending(self) -> list[str]:
        """The series the next start will segment: every one the inbox holds instances of that no result took in
        (a series the node itself failed to write, as on a full disk, too), not only those waiting for their
        series timeout."""
        try:
            return sorted(set(self.inbox.pending()) | set(self._last))
        except OSError as exc:
            log.warning("cannot list the pending series in the inbox: %s", _os_error(exc))
            return sorted(self._last)

    def _remove_unused(self) -> None:
        """After a start that failed before the node listened: the empty inbox/ and work/ it made, and the output
        folders it created, go again (a refused start leaves nothing; a folder holding anything stays)."""
        out = Path(self.config.out_dir)
        for sub in ("work", "inbox"):
            try:
                (out / sub).rmdir()
            except OSError:
                pass
        remove_empty_folders(self._created)

    def _lock_out_dir(self) -> None:
        """One node per output folder: two would both process its inbox (each series twice, or half of one). An
        exclusive lock on ``out_dir/.hemseg-node.lock`` (released when the node stops or its process ends)."""
        from hemseg.runtime.io.lock import FolderLock

        out = Path(self.config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(out, f"{out}: another hemseg serve uses this output folder (-o); give each node its "
                                     "own", name=LOCK_NAME).acquire()

    def __enter__(self) -> "DicomNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def idle(self) -> bool:
        """True when no series is pending, being processed or waiting for its send."""
        with self._cond:
            return not self._last and self._busy is None and not self._sends and self._sending is None

    # -- network -------------------------------------------------------------------------------------------------
    def _make_ae(self):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES

        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations
        for uid in MR_STORAGE:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        if cfg.allow:
            ae.require_calling_aet = list(cfg.allow)
        return ae

    def _handlers(self):
        from pynetdicom import evt

        return [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_ACCEPTED, self._on_accepted)]

    @staticmethod
    def _calling(event) -> str:
        try:
            return str(event.assoc.requestor.ae_title).strip()
        except Exception:
            return "?"

    def _on_echo(self, event) -> int:
        log.debug("C-ECHO from %s", self._calling(event))
        return 0x0000

    def _on_rejected(self, event) -> None:
        """Say why (pynetdicom keeps the reason to the A-ASSOCIATE-RJ it sends; its checks are redone here)."""
        requestor = event.assoc.requestor
        calling = self._calling(event)
        acceptors = sum(1 for a in event.assoc.ae.active_associations if a.is_acceptor)
        if acceptors > self.config.max_associations:  # pynetdicom checks it last, so its reason is the one sent
            reason = f"too many associations at once (--max-associations {self.config.max_associations})"
        elif self.config.allow and calling not in {a.strip() for a in self.config.allow}:
            reason = "calling AE title not in --allow"
        else:
            reason = "rejected"
        self.events.emit("association_rejected", calling_ae=calling, address=f"{requestor.address}:{requestor.port}",
                         reason=reason)

    def _on_accepted(self, event) -> None:
        """An association that proposed image storage and got no MR storage context (a CT or secondary-capture
        sender): it can send nothing here and only learns 'no presentation context', so the node says what it
        turned down and for whom. Senders that propose many classes and MR among them (storescu, a PACS) are
        normal and get no event."""
        try:
            rejected = [str(c.abstract_syntax) for c in event.assoc.rejected_contexts]
            accepted = {str(c.abstract_syntax) for c in event.assoc.accepted_contexts}
        except Exception:  # the association's state as pynetdicom keeps it: never fail an accepted association
            return
        storage = [uid for uid in rejected if uid.startswith(STORAGE_PREFIX)]
        if not storage or accepted & set(MR_STORAGE):
            return
        from pydicom.uid import UID

        classes = sorted({UID(uid).name for uid in storage})
        requestor = event.assoc.requestor
        self.events.emit("contexts_rejected", calling_ae=self._calling(event),
                         address=f"{requestor.address}:{requestor.port}", sop_classes=classes,
                         reason="this node takes MR image storage and verification only")

    def _on_store(self, event):
        calling = self._calling(event)
        sop_uid = series_uid = None
        try:
            try:
                data = event.encoded_dataset(include_meta=True)
                header = self._header(data)
            except Refusal:
                raise
            except Exception as exc:
                raise Refusal(CANNOT_UNDERSTAND, f"cannot parse the data set: {_one_line(exc)}") from None
            sop_uid = str(header.get("SOPInstanceUID", "") or event.request.AffectedSOPInstanceUID or "")
            series_uid = str(header.get("SeriesInstanceUID", "") or "")
            if not valid_uid(sop_uid):
                raise Refusal(NOT_MATCHING, f"missing or malformed SOPInstanceUID {sop_uid!r}")
            if not valid_uid(series_uid):
                raise Refusal(NOT_MATCHING, f"missing or malformed SeriesInstanceUID {series_uid!r}")
            if self._stopping:
                raise Refusal(OUT_OF_RESOURCES, "the node is shutting down")
            if self._already_processed(series_uid, sop_uid, data):  # a resend of what a result took in
                log.debug("series %s: instance %s received again unchanged; its result stands", series_uid, sop_uid)
                return 0x0000
            replaced: list[str] = []
            try:
                self.inbox.store(series_uid, sop_uid, data, check=check_instance,
                                 on_replace=lambda new, old: replaced.append(_what_differs(new, old)))
            except InputError as exc:
                raise Refusal(NOT_MATCHING, exc.reason) from None
            except OSError as exc:
                raise Refusal(OUT_OF_RESOURCES, f"cannot store the instance: {exc.strerror or exc}") from None
        except Refusal as refusal:
            if series_uid and valid_uid(series_uid) and not self._stopping and not (
                    valid_uid(sop_uid) and (self.inbox.series_dir(series_uid) / f"{sop_uid}.dcm").is_file()):
                # a refused copy of an instance the inbox holds (a bad resend) leaves the result whole
                with self._cond:
                    refused = self._refused.setdefault(series_uid, [])
                    if (sop_uid or "?") not in refused:
                        refused.append(sop_uid or "?")
            self.events.emit("refused", calling_ae=calling, series_uid=series_uid, sop_instance_uid=sop_uid,
                             status=f"0x{refusal.status:04X}", reason=refusal.reason)
            return _status(refusal.status, refusal.reason)
        except Exception as exc:  # anything unforeseen: refuse this instance, keep serving
            log.exception("C-STORE handler failed")
            self.events.emit("refused", calling_ae=calling, series_uid=series_uid, sop_instance_uid=sop_uid,
                             status=f"0x{OUT_OF_RESOURCES:04X}", reason=f"internal error: {_one_line(exc)}")
            return _status(OUT_OF_RESOURCES, "internal error")
        if replaced and replaced[0]:
            self.events.emit("replaced", calling_ae=calling, series_uid=series_uid, sop_instance_uid=sop_uid,
                             differs=replaced[0])
        elif replaced and self._in_last_result(series_uid, sop_uid):
            # the same data set in another transfer syntax (a PACS forwarding what the modality sent): no news, and
            # the series' result stands (it was segmented again, a second SEG sent with --store-to)
            log.debug("series %s: instance %s received again in another transfer syntax; its result stands",
                      series_uid, sop_uid)
            return 0x0000
        with self._cond:
            now = time.monotonic()
            self._last[series_uid] = now
            self._first.setdefault(series_uid, now)
            self._callers.setdefault(series_uid, set()).add(calling)
            if sop_uid in self._refused.get(series_uid, ()):  # refused before, received now
                self._refused[series_uid] = [s for s in self._refused[series_uid] if s != sop_uid]
            self._cond.notify_all()
        return 0x0000

    def _already_processed(self, series_uid: str, sop_uid: str, data: bytes) -> bool:
        """Whether ``data`` is byte for byte an instance the inbox holds and the series' last result took in: a
        PACS or modality sending a series again made it pending, and a node with --store-to sent a second SEG of the
        same slices. A series not processed yet (or whose processing failed for the node's own reasons) still
        counts the instance, and one being segmented goes on as it is."""
        path = self.inbox.series_dir(series_uid) / f"{sop_uid}.dcm"
        try:
            if path.stat().st_size != len(data) or path.read_bytes() != data:
                return False
        except OSError:
            return False
        return self._in_last_result(series_uid, sop_uid)

    def _in_last_result(self, series_uid: str, sop_uid: str) -> bool:
        """Whether the series' last result took in instance ``sop_uid`` and the series is neither pending nor being
        segmented now."""
        with self._cond:
            if series_uid in self._last or self._busy == series_uid:
                return False  # pending or being segmented: the arrival still counts
        marker = self.inbox.marker(series_uid)
        if marker.get("status") == "send_failed":  # never delivered: sending the series again retries it
            return False
        return f"{sop_uid}.dcm" in set(marker.get("files", []))

    @staticmethod
    def _header(data: bytes):
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        for elem in ds:  # parse every element now: a corrupt header fails here, not later
            _ = elem.value
        return ds

    # -- processing ----------------------------------------------------------------------------------------------
    def _next_due(self) -> str | None:
        """Called with the condition held: a series whose last instance is ``series_timeout`` old, or None."""
        now = time.monotonic()
        due = [(t, uid) for uid, t in self._last.items() if now - t >= self.config.series_timeout]
        return min(due)[1] if due else None

    def _run(self) -> None:
        while True:
            with self._cond:
                uid = None
                while not self._stopping:
                    uid = self._next_due()
                    if uid is not None:
                        break
                    self._cond.wait(self.config.poll_interval)
                if self._stopping:
                    return
                last = self._last.pop(uid)
                first = self._first.pop(uid, last)
                refused = self._refused.pop(uid, [])
                callers = sorted(self._callers.pop(uid, set()))
                self._busy = uid
            try:
                self._process(uid, first, last, callers, refused)
            except Exception:  # never let one series stop the node
                log.exception("processing series %s failed", uid)
            finally:
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()

    def _process(self, uid: str, first: float, last: float, callers: list[str], refused: list[str]) -> None:
        t0 = time.monotonic()
        record: dict[str, Any] = {"series_uid": uid, "calling_ae": callers or None, "status": "ok", "error": None}
        work, files = None, []
        key = self.processor.output_key  # the DICOM answer: seg or rtstruct
        job = None
        with self._cond:
            self._runs += 1
            run = self._latest[uid] = self._runs
        try:
            work, files = self.inbox.snapshot(uid)
            record["instances"] = len(files)
            gone = _instances_gone(self.results / uid, files)
            result = self.processor.process(work, self.results / uid)
            record.update(result["stats"])
            if refused:  # said per instance when refused; the result, made without them, says it too
                record["refused_instances"] = refused
                record["warnings"] = [*record.get("warnings", []), (
                    f"{len(refused)} instance(s) of this series were refused on receipt (e.g. {refused[0]}; see their "
                    "'refused' events): this result lacks them")]
            if gone:  # the inbox was cleared (retention) and an instance came again: say what the result lost
                note = (f"the earlier result of this series referenced {len(gone)} instance(s) no longer in the inbox "
                        f"(e.g. {gone[0]}); it is replaced by this result of the {len(files)} held now (keep received "
                        "instances while late or repeated ones may come)")
                log.warning("series %s: %s", uid, note)
                record["warnings"] = [*record.get("warnings", []), note]
            record["outputs"] = result["outputs"]
            # an earlier run's other files (another --format, --nifti dropped) no longer match this result
            stale = _remove_results(self.results / uid, keep={Path(p).name for p in result["outputs"].values()})
            if stale:
                record["removed"] = stale
            record[f"{key}_sop_instance_uid"] = result[f"{key}_sop_instance_uid"]
            recovered = uid in self._recovered  # received by an earlier node: when, this one does not know
            self._recovered.discard(uid)
            timings = {"receive": None if recovered else round((last - first) * 1000.0, 3),
                       "wait": None if recovered else round((t0 - last) * 1000.0, 3), **result["timings_ms"]}
            timings["total"] = round((time.monotonic() - t0) * 1000.0, 3)
            record["timings_ms"] = timings
            if self.config.store_to is not None:
                import pydicom

                job = _SendJob(uid, record, t0, files, pydicom.dcmread(result["outputs"][key]), run)
        except Exception as exc:
            record["status"] = "error"
            record["error"] = _series_error(exc, work)
            record["timings_ms"] = {"total": round((time.monotonic() - t0) * 1000.0, 3)}
            # the node's own failure (a full disk, permissions), not the series': it stays pending, segmented
            # when an instance of it arrives or the node starts again (nothing received is lost)
            record["retry"] = isinstance(exc, OSError)
            removed = _remove_results(self.results / uid)  # an earlier run's result no longer matches the inbox
            if removed:
                record["removed"] = removed
            log.debug("series %s failed", uid, exc_info=True)
        finally:
            if work is not None:
                self.inbox.drop_work(work)
        if job is not None:  # its event and marker come once it is sent
            with self._cond:
                if self._give_up:  # sends given up while it was segmented: unmarked, sent after the next start
                    self._abandoned += 1
                    return
                self._sends.append(job)
                self._cond.notify_all()
            return
        self._finish(uid, record, files, run)

    def _finish(self, uid: str, record: dict[str, Any], files: list[str], run: int) -> None:
        """Record a series as processed (the inbox marker, unless the node itself failed or a newer run of the
        series, started by late instances, records its own files) and emit its event."""
        key = self.processor.output_key
        with self._cond:
            newest = self._latest.get(uid) == run
            if newest:
                del self._latest[uid]
            self.processed.add(uid)
            self.series_runs += 1
        if newest and files and not record.get("retry"):
            try:
                self.inbox.mark(uid, files, {"status": record["status"], "error": record["error"],
                                             key: (record.get("outputs") or {}).get(key)})
            except OSError as exc:  # unmarked, the series is segmented again on the next start
                log.error("series %s: cannot record it as processed: %s", uid, _os_error(exc))
        self.events.emit("series", **record)

    def _send_loop(self) -> None:
        """The sender thread: C-STORE each result in the order made; after a stop, the queue is emptied first, the
        result of the series being segmented when the stop came included."""
        while True:
            with self._cond:
                # a stop ends the loop only once no series is being segmented: its result is queued after the stop
                while not self._sends and not (self._stopping and self._busy is None):
                    self._cond.wait(self.config.poll_interval)
                if not self._sends:  # stopping, nothing left
                    return
                job = self._sends.popleft()
                self._sending = job.uid
            try:
                self._send_job(job)
            except Exception:  # never let one send stop the node
                log.exception("sending the result of series %s failed", job.uid)
            finally:
                with self._cond:
                    self._sending = None
                    self._cond.notify_all()

    def _send_job(self, job: _SendJob) -> None:
        key = self.processor.output_key
        sent = _send(job.record["outputs"][key], self.config, job.dataset, self._in_flight)
        if self._give_up:  # given up while it was sent: unmarked, sent again after the next start
            with self._cond:
                self._abandoned += 1
            return
        job.record["sent"] = sent
        timings = job.record["timings_ms"]
        timings["send"] = sent.get("ms")
        if not sent["ok"]:
            job.record["status"] = "send_failed"
            job.record["error"] = sent["error"]
        timings["total"] = round((time.monotonic() - job.t0) * 1000.0, 3)  # up to the end of its send
        self._finish(job.uid, job.record, job.files, job.run)


def _what_differs(new: Path, old: Path) -> str:
    """What an instance received again under its SOP Instance UID changes in the stored one: ``"pixel data"``,
    ``"header: PatientName, ..."`` (the data set's keywords, file meta aside), both joined by ``"; "``, or ``""``
    when the two data sets are equal (sent again in another transfer syntax)."""
    import pydicom

    try:
        a, b = pydicom.dcmread(new), pydicom.dcmread(old)
    except Exception as exc:  # checked when received: only a file changed since gives this
        return f"unknown ({_one_line(exc)})"
    parts = []
    if "PixelData" in a or "PixelData" in b:
        try:
            if a.get("PixelData") != b.get("PixelData") and not (
                    a.file_meta.TransferSyntaxUID != b.file_meta.TransferSyntaxUID
                    and (a.pixel_array == b.pixel_array).all()):
                parts.append("pixel data")
        except Exception:  # pixels that do not decode here: their bytes differ
            parts.append("pixel data")
    tags = sorted((set(a.keys()) | set(b.keys())) - {pydicom.tag.Tag("PixelData")})
    changed = [pydicom.datadict.keyword_for_tag(t) or str(t) for t in tags
               if a.get(t) != b.get(t) and not _same_encoding(a.get(t), b.get(t))]
    if changed:  # a moved slice (ImagePositionPatient) beside new pixels is news of its own
        parts.append(f"header: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}")
    return "; ".join(parts)


def _same_encoding(x, y) -> bool:
    """Whether two data elements of one tag hold the same bytes once written in Implicit VR Little Endian: a private
    element pydicom does not know reads as UN (raw bytes) from an implicit-VR file and as LO, DS ... from an explicit
    one, and the two compared unequal (a series resent in the other syntax was segmented and sent again)."""
    if x is None or y is None:
        return False
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    def encoded(elem) -> bytes | None:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, True
        try:
            write_data_element(fp, elem)
        except Exception:  # noqa: BLE001 - a value pydicom cannot write back: compared as it was read
            return None
        return fp.getvalue()

    ex, ey = encoded(x), encoded(y)
    return ex is not None and ex == ey


def _send(path: str, cfg: NodeConfig, dataset=None, in_flight: list | None = None) -> dict[str, Any]:
    from hemseg.runtime.node.sender import send_file

    return send_file(path, cfg.store_to, cfg.ae_title, timeout=cfg.send_timeout, dataset=dataset, in_flight=in_flight)


def _status(code: int, reason: str):
    from pydicom.dataset import Dataset

    status = Dataset()
    status.Status = code
    status.ErrorComment = reason.replace("\\", "/")[:64]  # LO: at most 64 characters, no backslash
    return status


def _os_error(exc: OSError) -> str:
    """``path: reason`` of an OSError (the file it could not write, say), else its type and one-line text."""
    return os_error_line(exc) if exc.filename is not None else f"{type(exc).__name__}: {_one_line(exc)}"


def _series_error(exc: Exception, work: Path | None) -> str:
    """The ``error`` of a failed series event: an input error names the instance it is about (the file name in
    the work folder is the instance's SOP Instance UID), an OSError the file it could not write."""
    if isinstance(exc, InputError):
        path = Path(exc.path)
        if work is not None and path.parent == work:
            return f"{path.name}: {exc.reason}"
        return exc.reason
    if isinstance(exc, HemsegError):
        return str(exc)
    if isinstance(exc, OSError):
        return _os_error(exc)
    return f"{type(exc).__name__}: {_one_line(exc)}"


def _instances_gone(folder: Path, files: list[str]) -> list[str]:
    """The SOP Instance UIDs an earlier result in ``folder`` (a SEG, an RT Structure Set) references that are not
    among the inbox's instance files ``files`` (``<sop>.dcm``): instances removed from the inbox since."""
    import pydicom

    from hemseg.runtime.io.dicom_sort import references_of

    held = {Path(f).stem for f in files}
    gone: set[str] = set()
    for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else ():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            refs = references_of(ds)[1]
        except Exception:  # noqa: BLE001 - an unreadable earlier result: nothing to compare
            continue
        gone |= refs - held - {str(ds.get("StudyInstanceUID", ""))}  # an RTSTRUCT names its study that way too
    return sorted(gone)


def _remove_results(folder: Path, keep: set[str] = frozenset()) -> list[str]:
    """Remove the files of an earlier result of a series (all of them when its new run failed; those the new run
    did not write, ``keep`` being its own, when it succeeded); their names."""
    removed = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name not in keep:
                try:
                    path.unlink()
                    removed.append(path.name)
                except OSError as exc:
                    log.error("cannot remove the earlier result %s: %s", path, _os_error(exc))
    return removed


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
