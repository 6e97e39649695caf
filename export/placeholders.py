"""Trace the big graphs with placeholder weights; take the real tensors from the checkpoint later.

``torch.onnx.export`` serialises every weight it sees, and constant folding adds a transposed copy of
each ``nn.Linear`` weight (MatMul wants ``W.T``): with the real weights loaded that is two to three
copies of a 3.3B decoder at once. Here every large weight matrix of the text encoder and decoder is
swapped for a *marker*: one column expanded to the weight's shape (no memory), whose value is unique
to that weight and far outside any real activation or weight (about 2**64), negated below the first
row so that a square weight and its transpose differ. torch traces, folds and de-duplicates as
usual but serialises only the graph (:func:`.tracing.export_graph`); each initializer it would have
written whose value is a marker (read element by element, never expanded) is resolved back to its checkpoint tensor, as is or
transposed (the only folds seen on weights); anything else derived from a marker is an
:class:`ExportError` naming the initializer, as is a weight not found in the checkpoint by name,
shape and element type. :mod:`.external_data` then writes the real bytes, one tensor at a time.

Weights equal in value share one marker, so torch's de-duplication of equal initializers makes the
same graph as with the real weights; 1-D tensors (norms, biases) and buffers stay real (small, and
often equal to each other in value).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..runtime.errors import ExportError

log = logging.getLogger(__name__)

MARKER_SCALE = 2.0 ** 64  # exact in fp32; a weight times or plus anything ordinary stays huge
MARKER_FLOOR = 2.0 ** 40  # |value| above this in an initializer can only come from a marker
MARKER_STEP = 2 ** 16  # markers are SCALE * (1 + i / STEP): distinct in fp32 for i < STEP


def marker_value(index: int) -> float:
    if index >= MARKER_STEP:
        raise ExportError(f"more than {MARKER_STEP} weight matrices in one checkpoint; not supported")
    return float(np.float32(MARKER_SCALE * (1 + index / MARKER_STEP)))


def eligible(param: torch.Tensor) -> bool:
    """A weight matrix (or conv kernel) big enough to go to external data: these are the copies that count."""
    return param.is_floating_point() and param.dim() >= 2 and param.numel() * 4 >= 1024


@dataclass(frozen=True)
class Placeholder:
    name: str  # the checkpoint key its bytes come from
    shape: tuple[int, ...]
    read: Callable[[], torch.Tensor]  # the real tensor, fp32, read when needed


class CheckpointTensors:
    """Real tensors by checkpoint key, read one at a time (safetensors) or kept (pickle checkpoints,
    which cannot be read partially: those keep the real weights in memory, as before)."""

    def __init__(self, weight_files: list[Path]):
        self.files = weight_files
        self._where: dict[str, Path] = {}
        self._kept: dict[str, torch.Tensor] = {}
        self.safetensors = all(p.suffix == ".safetensors" for p in weight_files)
        if self.safetensors:
            from safetensors import safe_open

            for path in weight_files:
                with safe_open(str(path), framework="pt") as f:
                    for key in f.keys():
                        self._where[key] = path

    def keep(self, key: str, tensor: torch.Tensor) -> None:
        self._kept[key] = tensor

    def __contains__(self, key: str) -> bool:
        return key in self._where or key in self._kept

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._kept:
            return tuple(self._kept[key].shape)
        from safetensors import safe_open

        with safe_open(str(self._where[key]), framework="pt") as f:
            return tuple(f.get_slice(key).get_shape())

    def read(self, key: str) -> torch.Tensor:
        if key in self._kept:
            return self._kept[key].float()
        from safetensors import safe_open

        with safe_open(str(self._where[key]), framework="pt") as f:
            return f.get_tensor(key).float()  # load_model's model.float() does the same conversion


def _aliases(model: torch.nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every name it has (tied weights have several; the checkpoint stores one)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def swap_in(model: torch.nn.Module, modules: list[torch.nn.Module], checkpoint: CheckpointTensors) -> dict[float, Placeholder]:
    """Replace the eligible parameters of ``modules`` (parts of ``model``) by markers; returns
    marker value -> placeholder. Every other parameter and buffer of ``model`` is copied out of the
    checkpoint's memory map, so that once this returns no tensor keeps the mapped weights resident."""
    aliases = _aliases(model)
    seen: set[int] = set()
    params = []
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen and eligible(p):
                seen.add(id(p))
                params.append(p)
    groups: dict[tuple, list[tuple[torch.nn.Parameter, str]]] = {}  # equal-valued weights share a marker
    markers: dict[float, Placeholder] = {}
    by_tensor: list[tuple[torch.nn.Parameter, float]] = []
    for p in params:
        key = next((n for n in aliases[id(p)] if n in checkpoint), None)
        if key is None:
            raise ExportError(f"parameter {aliases[id(p)][0]!r} is not in the checkpoint's weight files under any "
                              f"of its names ({', '.join(aliases[id(p)])}); cannot stream it")
        if checkpoint.shape(key) != tuple(p.shape):
            raise ExportError(f"parameter {key!r}: checkpoint shape {checkpoint.shape(key)} != model shape "
                              f"{tuple(p.shape)}")
        if not checkpoint.safetensors:
            checkpoint.keep(key, p.detach())
        data = p.detach()
        probe = (tuple(data.shape), data.reshape(-1)[:256].numpy().tobytes())
        twin = next((m for q, m in groups.get(probe, []) if torch.equal(q, data)), None)
        if twin is None:
            value = marker_value(len(markers))
            markers[value] = Placeholder(key, tuple(p.shape), lambda key=key: checkpoint.read(key))
            groups.setdefault(probe, []).append((data, value))
        else:
            value = twin
        by_tensor.append((p, value))
    groups.clear()
    columns = {value: marker_tensor(value, markers[value].shape) for value in markers}
    with torch.no_grad():
        for p, value in by_tensor:
            p.data = columns[value]
        for p in model.parameters():
            if id(p) not in seen:
                p.data = p.data.clone()
        for module in model.modules():
            for name, b in module.named_buffers(recurse=False):
                if b is not None:
                    setattr(module, name, b.clone())
    log.info("%d weight matrices replaced by %d placeholders", len(by_tensor), len(markers))
    return markers


def marker_tensor(value: float, shape: tuple[int, ...]) -> torch.Tensor:
    """``value`` in the first row, ``-value`` in the others, expanded from one column (``shape[0]``
    numbers in memory): the first row tells a square weight from its transpose."""
    column = torch.full((shape[0],) + (1,) * (len(shape) - 1), -value, dtype=torch.float32)
    column[0] = value
    return column.expand(shape)


def resolve(name: str, dtype: int, dims: tuple[int, ...], probe: np.ndarray,
            markers: dict[float, Placeholder]) -> tuple[Placeholder, bool] | None:
    """Which checkpoint tensor an exported initializer is: ``(placeholder, transposed)``, or None for
    a real constant. ``probe``: its first two and last elements (fp32)."""
    from onnx import TensorProto

    if dtype != TensorProto.FLOAT or probe.size < 3:
        return None
    if not (np.abs(probe) >= MARKER_FLOOR).any() or not np.isfinite(probe).all() or (np.abs(probe) > 2.0 ** 100).all():
        return None  # ordinary values (a mask's float-min is beyond every marker's range)
    first, second, last = (float(v) for v in probe)
    placeholder = markers.get(first)
    if placeholder is None:
        raise ExportError(f"initializer {name!r} is computed from a placeholder weight by an operation the "
                          "streamed export cannot reproduce (constant folding of more than a transpose)")
    shape = placeholder.shape
    rows, cols = shape[0], int(np.prod(shape[1:]))
    # as is: first row `first`, the last element from another row; transposed: the first row runs down the rows
    as_is = dims == shape and second == (first if cols > 1 else -first) and last == (-first if rows > 1 else first)
    transposed = (len(dims) == 2 and dims == shape[::-1] and second == (-first if rows > 1 else first)
                  and last == (-first if rows > 1 else first))
    if as_is:
        return placeholder, False
    if transposed:
        return placeholder, True
    raise ExportError(f"initializer {name!r} of shape {dims} comes from weight {placeholder.name!r} of shape "
                      f"{shape}, neither as is nor transposed")
