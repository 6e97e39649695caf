"""Write an ONNX graph and its ``NAME.onnx.data`` one tensor at a time.

``onnx.save_model(..., save_as_external_data=True)`` needs every tensor's bytes in the ModelProto at
once; for the decoder of a 3.3B checkpoint that is a second 13 GB copy of the weights. Here a graph
is a ModelProto *skeleton* (structure, small tensors inline) plus a :class:`Source` per large
tensor that produces its bytes only when the writer reaches it, so at most one tensor is in memory.

The output is byte for byte what the exporter wrote before with ``onnx.save_model(...,
save_as_external_data=True, size_threshold=1024)`` (tests/export/test_export_streaming.py compares both):
tensors in initializer order, appended to one file without padding, every tensor of at least
``onnx``'s ``size_threshold`` (1024, as ``sys.getsizeof`` counts bytes) external, the
``location``/``offset``/``length`` entries in onnx's order, and ``data_location = DEFAULT`` written
out on a tensor that was external when loaded and is inline now (as ``onnx.load`` leaves it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

# onnx's own default, which the exporter has always used: smaller tensors stay in the .onnx file.
SIZE_THRESHOLD = 1024


@dataclass(frozen=True)
class FileRegion:
    """Bytes already in a file: the data file of a graph written before (rewritten as fp16 or quantised)."""

    path: Path
    offset: int
    length: int

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.length)
        if len(data) != self.length:
            from ..runtime.errors import ExportError

            raise ExportError(f"{self.path}: external data ends at {self.offset + len(data)}, "
                              f"before the {self.length} bytes at offset {self.offset}")
        return data


@dataclass(frozen=True)
class Source:
    """Where one tensor's bytes come from, read when the writer gets to it: ``read`` returns them."""

    read: Callable[[], bytes]
    length: int  # bytes the tensor will have once read (decides inline vs external before reading)


def tensors(graph) -> Iterator:
    """Initializers of ``graph`` and of its subgraphs, in onnx's ``_get_initializer_tensors`` order."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.ByteSize():
                yield from tensors(attr.g)
            for sub in attr.graphs:
                yield from tensors(sub)


def file_regions(model, folder: Path) -> dict[str, FileRegion]:
    """External tensors of a skeleton loaded with ``load_external_data=False``: name -> file region."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    regions = {}
    for t in tensors(model.graph):
        if uses_external_data(t):
            info = ExternalDataInfo(t)
            path = folder / info.location
            length = info.length if info.length is not None else os.path.getsize(path) - (info.offset or 0)
            regions[t.name] = FileRegion(path, info.offset or 0, length)
    return regions


def detach(tensor) -> None:
    """Make an external tensor look like ``onnx.load(load_external_data=True)`` leaves it, minus the
    bytes: no external entries, ``data_location`` explicitly DEFAULT."""
    from onnx import TensorProto

    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT


def data_bytes(model, sources: dict[str, Source]) -> int:
    """What ``sum(t.ByteSize() for t in graph.initializer)`` would be with every tensor's bytes
    loaded, counted from the lengths (the exporter's inline-or-external rule)."""
    total = 0
    for t in model.graph.initializer:
        src = sources.get(t.name)
        if src is None:
            total += t.ByteSize()
        else:  # the skeleton's own fields plus a raw_data field of `length` bytes
            n = src.length
            total += t.ByteSize() + 1 + _varint_len(n) + n
    return total


def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def write(model, path: Path, sources: dict[str, Source], external: bool) -> None:
    """Save ``model`` to ``path``; tensors named in ``sources`` get their bytes from there (they are
    :func:`detach`-ed skeletons). ``external``: tensors of at least SIZE_THRESHOLD bytes go, one at a
    time, to ``PATH.data`` (written under a temporary name, so a source may read the old data file);
    otherwise everything is inline, which materialises the bytes (callers keep this to small graphs)."""
    import onnx
    from onnx.external_data_helper import set_external_data

    data_path = path.with_name(path.name + ".data")
    if not external:
        for t in tensors(model.graph):
            src = sources.get(t.name)
            if src is not None:
                t.raw_data = src.read()
        data_path.unlink(missing_ok=True)
        onnx.save_model(model, str(path))
        return
    tmp = data_path.with_name(f".{data_path.name}.writing")
    offset = 0
    with open(tmp, "wb") as f:
        for t in tensors(model.graph):
            src = sources.get(t.name)
            if src is None and not t.HasField("raw_data"):
                continue  # float_data/int64_data etc.: onnx leaves those inline too
            raw = src.read() if src is not None else t.raw_data
            if sys.getsizeof(raw) < SIZE_THRESHOLD:  # onnx's own test, bytes object overhead included
                if src is not None:
                    t.raw_data = raw
                continue
            f.write(raw)
            t.ClearField("raw_data")
            set_external_data(_with_raw(t), data_path.name, offset, len(raw))
            t.ClearField("raw_data")
            offset += len(raw)
    onnx.save_model(model, str(path))
    os.replace(tmp, data_path)


def _with_raw(tensor):
    """``set_external_data`` insists on a raw_data field being present; an empty one satisfies it."""
    tensor.raw_data = b""
    return tensor


def float16_bytes(region: Callable[[], bytes]) -> Callable[[], bytes]:
    """fp32 bytes -> what onnxruntime's ``convert_tensor_float_to_float16`` stores (its clamping)."""
    from onnxruntime.transformers.float16 import convert_np_to_float16

    def read() -> bytes:
        return convert_np_to_float16(np.frombuffer(region(), dtype=np.float32)).tobytes()

    return read
