"""``hemseg serve MODEL``: run the DICOM node of :mod:`hemseg.runtime.node` until Ctrl-C or SIGTERM.

Prints every node event (``listening``, ``refused``, ``series``, ``stopped`` ...) as one JSON line on stdout;
logs go to stderr. Exit codes: 0 after a clean stop, 1 for a usage, model or dependency error (one line).
"""

from __future__ import annotations

import json
import signal
import threading

import click

from hemseg.cli._base import FiniteFloat, NonEmptyPath
from hemseg.runtime.backends.select import BACKENDS


@click.command()
@click.argument("model", type=NonEmptyPath(path_type=str))
@click.option("--ae-title", default="HEMSEG", show_default=True, help="This node's AE title: the calling AE of its sends (--store-to). Associations that call the node by another "
                   "title are accepted too (many senders are set up loosely); --allow restricts who may send.")
@click.option("--port", type=click.IntRange(0, 65535), default=11112, show_default=True,
              help="TCP port to listen on (0: any free port, printed in the 'listening' line).")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--store-to", default=None, metavar="AE@HOST:PORT",
              help="Send each result (the DICOM SEG or RT Structure Set) there (C-STORE).")
@click.option("--send-timeout", type=FiniteFloat(min=0.1, max=3600), default=30.0, show_default=True,
              help="Seconds each step of a send may take (connect, associate, the C-STORE answer; at most 3600). "
                   "Results are sent one at a time by a thread of their own, so a destination that hangs delays each "
                   "send by about one to two times this, not the segmenting of the next series; a failed send is "
                   "recorded (send_failed), the result kept, not retried.")
@click.option("--format", "fmt", type=click.Choice(["dicom-seg", "dicom-rtstruct"]), default="dicom-seg",
              show_default=True, help="The result per series: a DICOM SEG (hemseg_seg.dcm; needs highdicom) or an RT "
                                      "Structure Set (hemseg_rtstruct.dcm), for planning and contouring systems.")
@click.option("--out", "-o", "out_dir", default="hemseg-node", show_default=True, type=NonEmptyPath(file_okay=False),
              help="Folder for inbox/, results/ and node.jsonl.")
@click.option("--series-timeout", type=FiniteFloat(min=0), default=10.0, show_default=True,
              help="Segment a series once no instance of it arrived for this many seconds. Shorter than the gaps "
                   "between a sender's instances, it segments a series in parts (each later part re-segments the "
                   "whole series, and with --store-to every result is sent).")
@click.option("--allow", multiple=True, metavar="AE",
              help="Accept associations only from this calling AE title (repeat for several).")
@click.option("--nifti", is_flag=True, help="Also write a NIfTI label map per series.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto",
              show_default=True, help="Inference backend (as for hemseg predict).")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device index.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Slices per batch.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Inference threads of a CPU engine, at most the usable CPUs (as for hemseg predict); 0: the engine's default, every core.")
@click.option("--postprocess/--no-postprocess", default=True, show_default=True,
              help="Mask clean-up as in hemseg predict.")
@click.option("--max-associations", type=click.IntRange(min=1), default=10, show_default=True,
              help="Associations served at once.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def serve(model, ae_title, port, host, store_to, send_timeout, fmt, out_dir, series_timeout, allow, nifti, backend,
          device, batch_size, threads, postprocess, max_associations, debug) -> None:
    """Run a DICOM node: receive MR series (C-STORE), segment each with MODEL, write a DICOM SEG (or, with
    --format dicom-rtstruct, an RT Structure Set) per series and optionally send it on (--store-to). Stop with
    Ctrl-C or SIGTERM (results still queued are sent first; a second Ctrl-C / SIGTERM gives them up, and the next
    start segments and sends their series again)."""
    from hemseg.runtime.node import DicomNode, NodeConfig

    config = NodeConfig(model=model, ae_title=ae_title, host=host, port=port, out_dir=out_dir, store_to=store_to,
                        series_timeout=series_timeout, allow=tuple(allow), nifti=nifti, fmt=fmt, backend=backend,
                        device=device, batch_size=batch_size, postprocess=postprocess, threads=threads,
                        max_associations=max_associations, send_timeout=send_timeout)
    stop = threading.Event()
    node = DicomNode(config, on_event=lambda record: click.echo(json.dumps(record, default=str)))

    def on_signal(signum, frame):
        if stop.is_set():  # a second Ctrl-C / SIGTERM: stop without waiting for the destination
            node.abandon_sends()
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        node.start()
        while not stop.wait(0.5):
            pass
    finally:
        node.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
