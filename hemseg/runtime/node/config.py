"""The node's settings (:class:`NodeConfig`) and the ``AE@HOST:PORT`` destination syntax of ``--store-to``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hemseg.errors import UsageError

#: What the node writes and sends per series.
NODE_FORMATS = ("dicom-seg", "dicom-rtstruct")

#: An AE title: 1 to 16 characters of the DICOM default repertoire, no backslash, not only spaces.
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def check_ae_title(value: str, what: str = "AE title") -> str:
    """``value`` stripped, or a UsageError when it is not a valid AE title."""
    text = str(value).strip()
    if not text or not _AE.match(text):
        raise UsageError(f"{what} {value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return text


def check_port(value: int, what: str = "port", allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        raise UsageError(f"{what} must be an integer in {low}..65535, got {value!r}")
    return value


@dataclass(frozen=True)
class Destination:
    """A C-STORE destination: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """``AE@HOST:PORT`` (an IPv6 host in brackets: ``AE@[::1]:104``)."""
        ae, sep, rest = str(text).rpartition("@")
        host, colon, port = rest.rpartition(":")
        if not sep or not colon or not host:
            raise UsageError(f"--store-to {text!r}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            number = int(port)
        except ValueError:
            raise UsageError(f"--store-to {text!r}: port {port!r} is not a number") from None
        return cls(check_ae_title(ae, "--store-to"), host, check_port(number, "--store-to port"))


#: the longest --send-timeout (an hour): far larger values overflow the socket layer's time arithmetic
MAX_SEND_TIMEOUT = 3600.0


@dataclass
class NodeConfig:
    """Everything ``hemseg serve`` is told. ``out_dir`` holds ``inbox/``, ``work/``, ``results/`` and
    ``node.jsonl`` (see :mod:`hemseg.runtime.node`)."""

    model: Path
    ae_title: str = "HEMSEG"
    host: str = "0.0.0.0"
    port: int = 11112
    out_dir: Path = Path("hemseg-node")
    store_to: Destination | None = None
    series_timeout: float = 10.0
    allow: tuple[str, ...] = ()
    nifti: bool = False
    #: the DICOM answer per series: ``dicom-seg`` (a DICOM SEG) or ``dicom-rtstruct`` (an RT Structure Set)
    fmt: str = "dicom-seg"
    backend: str = "auto"
    device: int = 0
    batch_size: int = 8
    postprocess: bool = True
    #: inference threads of a CPU engine (0: the engine's default)
    threads: int = 0
    max_associations: int = 10
    poll_interval: float = 0.1
    #: seconds each network step of sending a result may take (connect, associate, C-STORE answer)
    send_timeout: float = 30.0

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        self.out_dir = Path(self.out_dir)
        self.ae_title = check_ae_title(self.ae_title, "--ae-title")
        self.port = check_port(self.port, "--port", allow_zero=True)
        self.allow = tuple(check_ae_title(a, "--allow") for a in self.allow)
        if self.fmt not in NODE_FORMATS:
            raise UsageError(f"--format must be one of {', '.join(NODE_FORMATS)}, got {self.fmt!r}")
        if isinstance(self.store_to, str):
            self.store_to = Destination.parse(self.store_to)
        try:
            self.series_timeout = float(self.series_timeout)
        except (TypeError, ValueError):
            raise UsageError(f"--series-timeout must be a number of seconds, got {self.series_timeout!r}") from None
        if not self.series_timeout >= 0:
            raise UsageError(f"--series-timeout must be >= 0 seconds, got {self.series_timeout}")
        try:
            self.send_timeout = float(self.send_timeout)
        except (TypeError, ValueError):
            raise UsageError(f"--send-timeout must be a number of seconds, got {self.send_timeout!r}") from None
        if not 0 < self.send_timeout <= MAX_SEND_TIMEOUT:
            raise UsageError(f"--send-timeout must be more than 0 and at most {MAX_SEND_TIMEOUT:g} seconds, got "
                             f"{self.send_timeout}")
        if isinstance(self.max_associations, bool) or not isinstance(self.max_associations, int) \
                or self.max_associations < 1:
            raise UsageError(f"max_associations must be a positive integer, got {self.max_associations!r}")
