"""A tiny read-only ONNX protobuf scanner, so the runtime can vet a model without the ``onnx`` package.

Why: ``onnx`` is not a runtime dependency, and onnxruntime's own errors for two common deployment mistakes are
cryptic. The scanner walks the protobuf wire format (no schema compiler, no copies of tensor data) over the model
graph, every sub-graph (``If``/``Loop``/``Scan`` bodies) and every model-local function, and reports:

- tensors (initializers, sparse initializers, ``Constant`` attributes) whose ``data_location`` is ``EXTERNAL`` or
  which carry ``external_data`` entries: the weights live in a side file (``model.onnx.data``) and are refused,
  because a deployable hemseg model is one self-contained file;
- the operator domains used by nodes, so custom-op domains (which onnxruntime cannot run without a plugin library)
  can be named in a clear error;
- the model's ``metadata_props`` (key/value strings), so a backend that does not expose them (OpenVINO compiling
  the file from its path) can still read hemseg's metadata.

Field numbers are those of ``onnx.proto`` (ModelProto.graph = 7, .metadata_props = 14, .functions = 25;
StringStringEntryProto.key = 1, .value = 2; GraphProto.node = 1,
.initializer = 5, .sparse_initializer = 15; NodeProto.domain = 7, .attribute = 5; AttributeProto.t = 5, .g = 6,
.tensors = 10, .graphs = 11, .sparse_tensor = 22, .sparse_tensors = 23; TensorProto.name = 8, .external_data = 13,
.data_location = 14; SparseTensorProto.values = 1, .indices = 2; FunctionProto.node = 7, .domain = 10).
Anything that is not well-formed protobuf raises :class:`ScanError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

#: Domains onnxruntime implements itself (plus the default ``""`` / ``ai.onnx``).
BUILTIN_DOMAINS = frozenset({
    "", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "ai.onnx.training", "com.microsoft",
    "com.microsoft.nchwc", "com.microsoft.experimental", "com.ms.internal.nhwc",
})

_MAX_DEPTH = 64  # nested sub-graphs; a deeper nest is treated as malformed


class ScanError(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


@dataclass
class OnnxScan:
    ir_version: int = 0
    has_graph: bool = False
    node_count: int = 0
    node_domains: set[str] = field(default_factory=set)
    function_domains: set[str] = field(default_factory=set)
    external_tensors: list[str] = field(default_factory=list)
    external_files: set[str] = field(default_factory=set)
    metadata_props: dict[str, str] = field(default_factory=dict)

    @property
    def custom_domains(self) -> set[str]:
        """Node domains neither built into onnxruntime nor defined by the model's own functions."""
        return self.node_domains - BUILTIN_DOMAINS - self.function_domains


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ScanError("truncated or malformed varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, object]]:
    """Yield ``(field_number, wire_type, value)``; LEN values are ``(start, end)`` offsets, varints are ints."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ScanError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise ScanError("truncated fixed-width field")
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise ScanError("length-delimited field runs past the end of its message")
            yield number, wire, (pos, pos + n)
            pos += n
        else:
            raise ScanError(f"unsupported wire type {wire}")
    if pos != end:
        raise ScanError("message runs past its end")


def _text(buf: memoryview, span: object) -> str:
    a, b = span  # type: ignore[misc]
    return bytes(buf[a:b]).decode("utf-8", errors="replace")


class _Walker:
    def __init__(self, buf: memoryview, scan: OnnxScan):
        self.buf, self.scan = buf, scan

    def tensor(self, span, depth: int) -> None:
        name, external = "", False
        for num, wire, val in _fields(self.buf, *span):
            if num == 8 and wire == 2:
                name = _text(self.buf, val)
            elif num == 14 and wire == 0 and val == 1:
                external = True
            elif num == 13 and wire == 2:
                external = True
                key = value = ""
                for n2, w2, v2 in _fields(self.buf, *val):
                    if w2 == 2 and n2 in (1, 2):
                        key, value = (_text(self.buf, v2), value) if n2 == 1 else (key, _text(self.buf, v2))
                if key == "location":
                    self.scan.external_files.add(value)
        if external:
            self.scan.external_tensors.append(name or "<unnamed>")

    def sparse(self, span, depth: int) -> None:
        for num, wire, val in _fields(self.buf, *span):
            if num in (1, 2) and wire == 2:
                self.tensor(val, depth)

    def node(self, span, depth: int) -> None:
        self.scan.node_count += 1
        domain = ""
        for num, wire, val in _fields(self.buf, *span):
            if num == 7 and wire == 2:
                domain = _text(self.buf, val)
            elif num == 5 and wire == 2:
                self.attribute(val, depth)
        self.scan.node_domains.add(domain)

    def attribute(self, span, depth: int) -> None:
        for num, wire, val in _fields(self.buf, *span):
            if wire != 2:
                continue
            if num in (5, 10):
                self.tensor(val, depth)
            elif num in (22, 23):
                self.sparse(val, depth)
            elif num in (6, 11):
                self.graph(val, depth + 1)

    def graph(self, span, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ScanError("sub-graphs nested too deeply")
        for num, wire, val in _fields(self.buf, *span):
            if wire != 2:
                continue
            if num == 1:
                self.node(val, depth)
            elif num == 5:
                self.tensor(val, depth)
            elif num == 15:
                self.sparse(val, depth)

    def function(self, span) -> None:
        for num, wire, val in _fields(self.buf, *span):
            if num == 7 and wire == 2:
                self.node(val, 1)
            elif num == 10 and wire == 2:
                self.scan.function_domains.add(_text(self.buf, val))


def scan_onnx(data: bytes | bytearray | memoryview) -> OnnxScan:
    """Scan serialized ONNX ``ModelProto`` bytes. Raises :class:`ScanError` if they are not well-formed."""
    buf = memoryview(data)
    scan = OnnxScan()
    walker = _Walker(buf, scan)
    for num, wire, val in _fields(buf, 0, len(buf)):
        if num == 1 and wire == 0:
            scan.ir_version = int(val)  # type: ignore[arg-type]
        elif num == 7 and wire == 2:
            scan.has_graph = True
            walker.graph(val, 0)
        elif num == 14 and wire == 2:
            key = value = ""
            for n2, w2, v2 in _fields(buf, *val):  # type: ignore[misc]
                if w2 == 2 and n2 == 1:
                    key = _text(buf, v2)
                elif w2 == 2 and n2 == 2:
                    value = _text(buf, v2)
            scan.metadata_props[key] = value
        elif num == 25 and wire == 2:
            walker.function(val)
    return scan
