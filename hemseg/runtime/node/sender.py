"""Sending a result to a DICOM destination with C-STORE (pynetdicom, as a Storage SCU)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hemseg.runtime.node.config import Destination

log = logging.getLogger(__name__)


def _why_not_established(assoc, dest: Destination, sop_class, timeout: float, waited: float) -> str:
    """What an operator must fix: pynetdicom reports a refused connection, a peer that accepts none of the proposed
    contexts and one that never answers as an aborted association alike."""
    if assoc.is_rejected:
        primitive = getattr(getattr(assoc, "acceptor", None), "primitive", None)
        reason = getattr(primitive, "reason_str", None) or "no reason given"
        hint = {3: "the node's --ae-title is not among its allowed callers",
                7: f"it does not answer to the AE title {dest.ae_title!r} of --store-to"}.get(
            getattr(primitive, "diagnostic", None), "check its configuration for this node")
        return f"association rejected by {dest}: {reason} ({hint})"
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        name = getattr(sop_class, "name", "") or str(sop_class)
        return (f"{dest} accepts no {name} ({sop_class}): configure it to store that SOP class, or send the other "
                "--format")
    unreachable = _tcp_error(dest, timeout)
    if unreachable:
        return f"cannot connect to {dest}: {unreachable}"
    if waited >= 0.9 * timeout:
        return f"no answer from {dest} within --send-timeout {timeout:g} s"
    return f"association aborted by {dest}"


def _tcp_error(dest: Destination, timeout: float) -> str | None:
    """None when a TCP connection to ``dest`` opens, else the reason (connection refused, timed out, ...)."""
    import socket

    try:
        socket.create_connection((dest.host, dest.port), timeout=min(timeout, 5.0)).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def _tracked(in_flight: list | None) -> dict[str, Any]:
    """``associate``'s keyword arguments that put the association into ``in_flight`` as soon as its connection
    opens (an association that waits for a silent peer's answer is not returned until the ACSE timeout)."""
    if in_flight is None:
        return {}
    from pynetdicom import evt

    return {"evt_handlers": [(evt.EVT_CONN_OPEN, lambda event: in_flight.append(event.assoc))]}


def send_file(path: str | Path, dest: Destination, calling_ae: str, timeout: float = 30.0,
              dataset=None, in_flight: list | None = None) -> dict[str, Any]:
    """C-STORE the DICOM file ``path`` (a SEG or an RT Structure Set: the context is the file's SOP class) to
    ``dest``, or ``dataset``, that file as read earlier (``path`` then only names it); never raises for network or
    peer failures. ``in_flight``: a list that holds the association while it is open (another thread may abort it).

    Returns ``{"to": "AE@HOST:PORT", "ok": bool, "status": "0x0000" | None, "error": str | None, "ms": float}``.
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    t0 = time.perf_counter()
    result: dict[str, Any] = {"to": str(dest), "ok": False, "status": None, "error": None}
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    sop_class = (dataset if dataset is not None else
                 pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])).SOPClassUID
    ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, **_tracked(in_flight))
    except Exception as exc:  # name resolution and socket errors
        result["error"] = f"cannot connect to {dest}: {getattr(exc, 'strerror', None) or exc}"
    else:
        if not assoc.is_established:
            result["error"] = _why_not_established(assoc, dest, sop_class, timeout, time.perf_counter() - t0)
        else:
            try:
                status = assoc.send_c_store(dataset if dataset is not None else Path(path))
                code = int(status.Status) if status is not None and "Status" in status else None
                result["status"] = None if code is None else f"0x{code:04X}"
                result["ok"] = code in (0x0000, 0xB000, 0xB007, 0xB006)  # success or warning: stored
                if not result["ok"]:
                    comment = status.get("ErrorComment", "") if status is not None else ""
                    result["error"] = (f"C-STORE answered {result['status']}{': ' + str(comment) if comment else ''}"
                                       if code is not None else "no C-STORE response (timeout or abort)")
            except Exception as exc:
                result["error"] = f"C-STORE failed: {exc}"
            finally:
                if assoc.is_established:
                    assoc.release()
    if in_flight is not None:
        in_flight.clear()
    finally_ms = (time.perf_counter() - t0) * 1000.0
    result["ms"] = round(finally_ms, 3)
    if not result["ok"]:
        # with its folder, the source series' UID: every result is named hemseg_seg.dcm (a QA finding of stop 52)
        log.warning("sending %s to %s failed: %s", Path(*Path(path).parts[-2:]), dest, result["error"])
    return result
