"""Which files an ONNX graph will read: the external-data locations inside its protobuf.

onnxruntime opens whatever file a tensor's ``external_data`` names (relative to the graph), so a
folder whose manifest hashes every file it lists can still have a graph that reads an unlisted
one. The runtime does not ship the ``onnx`` package, and needs only these strings: this walks the
protobuf wire format over a memory map (no copy of the weights) through the message fields that
can hold tensors, and returns every location it finds.
"""

from __future__ import annotations

import mmap
import time
from pathlib import Path

# message -> {field number: message type of that (length-delimited) field}
_FIELDS = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
    "entry": {},
}
_MAX_DEPTH = 64  # nested subgraphs (If / Loop bodies); released graphs have none
_MAX_FIELDS = 1 << 21
"""Fields walked per graph (keys only: weights are skipped by their length). Exported graphs need about
10 per node (the tiny stems graph: 19 000; a full htdemucs or melody-large decoder: about 100 000); past
this the file is not a graph we wrote or optimum did, and the walk stops (about 5 s)."""
_MAX_SECONDS = 10.0  # the same walk's wall-clock bound, for a slow disk or a starved CPU


class MalformedGraph(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise MalformedGraph("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


class _Budget:
    """What one graph's walk may spend: fields visited and seconds."""

    def __init__(self):
        self.fields = 0
        self.deadline = time.monotonic() + _MAX_SECONDS

    def spend(self) -> None:
        self.fields += 1
        if self.fields > _MAX_FIELDS:
            raise MalformedGraph(f"more than {_MAX_FIELDS} protobuf fields (not an ONNX graph, or padded)")
        if not self.fields & 0xFFFF and time.monotonic() > self.deadline:
            raise MalformedGraph(f"scanning its protobuf took over {_MAX_SECONDS:g} s")


def _fields(buf, start: int, end: int, budget: _Budget):
    """Yield ``(field number, start, end)`` of each length-delimited field; skip the others. Field
    number 0 does not exist in protobuf: it is where zero padding or garbage starts, refused at once."""
    pos = start
    while pos < end:
        budget.spend()
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise MalformedGraph(f"invalid protobuf field number 0 at byte {pos - 1}")
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise MalformedGraph("field runs past its message")
            yield number, pos, pos + length
            pos += length
        else:
            raise MalformedGraph(f"unsupported wire type {wire}")
    if pos != end:
        raise MalformedGraph("message runs past its end")


def external_data_locations(path: str | Path) -> set[str]:
    """Every ``location`` an external-data tensor of the graph at ``path`` names."""
    found: set[str] = set()
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            return found
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            budget = _Budget()
            stack = [("model", 0, size, 0)]
            while stack:
                kind, start, end, depth = stack.pop()
                if depth > _MAX_DEPTH:
                    raise MalformedGraph("graphs nested too deeply")
                if kind == "entry":
                    key = value = b""
                    for number, a, b in _fields(buf, start, end, budget):
                        if number == 1:
                            key = bytes(buf[a:b])
                        elif number == 2:
                            value = bytes(buf[a:b])
                    if key == b"location":
                        found.add(value.decode("utf-8", "replace"))
                    continue
                children = _FIELDS[kind]
                for number, a, b in _fields(buf, start, end, budget):
                    child = children.get(number)
                    if child is not None:
                        stack.append((child, a, b, depth + (child == "graph")))
    return found
