"""Trace a torch module into an ONNX file with its weights written one tensor at a time.

Used by both exporters (MusicGen's four graphs, Demucs's stems graph), so that every graph this project
writes goes through the same trace and the same data-file rule.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..runtime.errors import ExportError
from . import external_data, placeholders

# Weights go to NAME.onnx.data above this size (protobuf's own limit is 2 GiB). onnxruntime maps external
# data straight into tensors, while an inline graph is held twice while it loads: the melody int8 decoder
# peaked 2629 MB over its 1866 MB steady state inline, 1822 MB external (README, "Memory").
EXTERNAL_DATA_THRESHOLD = 64_000_000


@dataclass
class GraphSpec:
    """Everything needed to export and validate one graph."""

    name: str
    module: torch.nn.Module
    example: tuple
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    cases: list[tuple] = field(default_factory=list)  # validation inputs beyond the example


def export_graph(spec: GraphSpec, path: Path, opset: int, markers: dict | None = None) -> None:
    """Trace ``spec`` into ``path``. torch serialises only the graph (``export_params=False``): with its
    parameters a graph under 2 GB becomes one in-memory proto, held three times over (torch's proto, its
    bytes, onnx's copy; musicgen-small's decoder peaked at 5.8 GB for a 1.5 GB file), and a bigger one is
    scattered over one scratch file per tensor. The initializers torch would have written are taken as
    it hands them to its serialiser and written here one at a time: ``markers`` (:mod:`.placeholders`)
    resolve to checkpoint tensors read when the writer reaches them, the rest come from memory."""
    import onnx

    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        raw = Path(scratch) / path.name
        with warnings.catch_warnings(), torch.no_grad(), _initializers_of_export() as params:
            warnings.simplefilter("ignore")
            torch.onnx.export(
                spec.module, spec.example, str(raw), input_names=spec.input_names,
                output_names=spec.output_names, dynamic_axes=spec.dynamic_axes, opset_version=opset,
                dynamo=False, do_constant_folding=True, export_params=False,
            )
        model = onnx.load(str(raw))
    write_graph(model, path, _as_initializers(model, params, markers or {}))


_EXPORT_LOCK = threading.Lock()


@contextlib.contextmanager
def _initializers_of_export():
    """The initializers (name -> tensor) of the graph being exported, as torch's exporter passes them to
    its serialiser (after constant folding and de-duplication): the one call in between is wrapped."""
    captured: dict[str, torch.Tensor] = {}
    _EXPORT_LOCK.acquire()  # the wrapped call is process-wide (torch's exporter has global state anyway)
    original = torch._C._jit_pass_onnx_deduplicate_initializers

    def capture(*args):
        params = original(*args)
        captured.clear()
        captured.update(params)
        return params

    torch._C._jit_pass_onnx_deduplicate_initializers = capture
    try:
        yield captured
    finally:
        torch._C._jit_pass_onnx_deduplicate_initializers = original
        _EXPORT_LOCK.release()


def _as_initializers(model, params: dict[str, torch.Tensor], markers: dict) -> dict[str, external_data.Source]:
    """Turn the graph inputs that torch left for ``params`` back into initializers, in torch's order and
    encoding (dims, data type, name, raw data), each with a :class:`Source` for its bytes: a checkpoint
    tensor for a marker (as is or transposed), the tensor itself otherwise (made contiguous on read)."""
    from onnx import TensorProto, helper

    graph = model.graph
    inputs = list(graph.input)
    missing = sorted(set(params) - {i.name for i in inputs})
    if missing:
        raise ExportError(f"torch exported initializers that are not graph inputs: {', '.join(missing[:5])}")
    del graph.input[:]
    sources = {}
    for value in inputs:
        tensor = params.get(value.name)
        if tensor is None:
            graph.input.append(value)
            continue
        dtype = helper.np_dtype_to_tensor_dtype(np.dtype(str(tensor.dtype).removeprefix("torch.")))
        proto = TensorProto(name=value.name, dims=tuple(tensor.shape), data_type=dtype)
        graph.initializer.append(proto)
        found = None
        if tensor.dtype == torch.float32 and tensor.numel() >= 3:
            probe = np.array([tensor[idx].item() for idx in _probe_indices(tuple(tensor.shape))], np.float32)
            found = placeholders.resolve(value.name, dtype, tuple(tensor.shape), probe, markers)
        if found is None:
            sources[value.name] = external_data.Source(lambda t=tensor: t.detach().contiguous().numpy().tobytes(),
                                                       tensor.numel() * tensor.element_size())
        else:
            weight, transposed = found
            sources[value.name] = external_data.Source(
                lambda w=weight, tr=transposed: _tensor_bytes(w.read(), tr), 4 * int(np.prod(weight.shape)))
    return sources


def _probe_indices(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Indices of the first two and the last element in row-major order, read one element at a time
    (a marker is an expanded view: flattening it would make the full tensor)."""
    return [tuple(int(i) for i in np.unravel_index(flat, shape)) for flat in (0, 1, int(np.prod(shape)) - 1)]


def _tensor_bytes(tensor: torch.Tensor, transposed: bool) -> bytes:
    return (tensor.t() if transposed else tensor).contiguous().numpy().tobytes()


def write_graph(model, path: Path, sources: dict) -> None:
    """The exporters' one rule, streamed: a data file above EXTERNAL_DATA_THRESHOLD, inline otherwise."""
    external_data.write(model, path, sources, external_data.data_bytes(model, sources) > EXTERNAL_DATA_THRESHOLD)


def load_skeleton(path: Path):
    """The graph without its external bytes, and where each external tensor's bytes are."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return model, external_data.file_regions(model, path.parent)
