"""The exporter's options: one frozen object, checked in one place, each error stating the rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..runtime.errors import ExportError
from ..runtime.manifest import KV_CACHES, KV_DTYPES, PRECISIONS, REFERENCES
from .precision import QUANT_BITS, QUANT_BLOCK, QUANT_BLOCKS

OPSETS = (14, 21)  # the opsets validated against (inclusive)


@dataclass(frozen=True)
class ExportOptions:
    """``atol`` / ``rtol`` replace the validation tolerances of every graph (``max|diff| <= atol + rtol *
    max|reference|``), as optimum's ``--atol`` does. ``kv_cache``: None chooses the static cache where the
    model's head size allows it and concat otherwise. ``text_encoder`` / ``codec``: folders for the parts
    an audiocraft checkpoint only names (export/audiocraft.py). ``reference``: whose behaviour the folder
    reproduces where transformers and audiocraft differ (manifest.REFERENCES; default: the checkpoint's own
    format). ``stems``: a Demucs model (export/stems.py) to add as ``stems.onnx``, so that melodies are
    separated before their chroma as audiocraft does; ``stems_fast``: with it, the melody path's int8
    ``stems_fast.onnx`` too (export/stems_fast.py). ``block_size``: int8/int4 only, the weights per
    quantisation scale (None: precision.QUANT_BLOCK); coarser is faster on CPU and less precise."""

    precision: str = "fp32"
    opset: int = 17
    validate_graphs: bool = True
    force: bool = False
    allow_pickle: bool = False
    kv_cache: str | None = None
    kv_dtype: str | None = None
    source_label: str | None = None
    atol: float | None = None
    rtol: float | None = None
    text_encoder: str | None = None
    codec: str | None = None
    reference: str | None = None
    stems: str | None = None
    stems_fast: bool = True
    block_size: int | None = None

    def __post_init__(self) -> None:
        _choice("precision", self.precision, PRECISIONS)
        if self.kv_cache is not None:
            _choice("kv_cache", self.kv_cache, KV_CACHES)
        if self.kv_dtype is not None:
            _choice("kv_dtype", self.kv_dtype, KV_DTYPES)
        if self.kv_dtype == "fp16" and (self.precision not in QUANT_BITS or self.kv_cache == "concat"):
            raise ExportError(f"kv_dtype 'fp16' needs precision int8 or int4 with the static KV cache (fp16 keeps its "
                              f"cache in fp16 anyway; fp32 stays the exact reference), not "
                              f"{self.precision}/{self.kv_cache or 'static'}")
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < math.inf):
                raise ExportError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.block_size is not None:
            if self.precision not in QUANT_BITS:
                raise ExportError(f"block_size applies to precision int8 or int4 (weight-only quantisation), "
                                  f"not {self.precision}")
            if isinstance(self.block_size, bool) or self.block_size not in QUANT_BLOCKS:
                raise ExportError(f"block_size {self.block_size!r} is not supported; choose one of "
                                  f"{', '.join(map(str, QUANT_BLOCKS))}")
        if self.reference is not None:
            _choice("reference", self.reference, REFERENCES)
        if not isinstance(self.stems_fast, bool):
            raise ExportError(f"stems_fast must be True or False, got {self.stems_fast!r}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not OPSETS[0] <= self.opset <= OPSETS[1]:
            raise ExportError(f"opset {self.opset} is not supported; choose an opset in [{OPSETS[0]}, {OPSETS[1]}]")

    @property
    def quant_block(self) -> int:
        """The block size the decoder is quantised with (int8/int4)."""
        return QUANT_BLOCK if self.block_size is None else self.block_size

    @property
    def kv_dtype_written(self) -> str:
        """The cache's dtype at the graph boundary: fp16 graphs keep it in fp16 anyway."""
        return "fp16" if self.precision == "fp16" or self.kv_dtype == "fp16" else "fp32"


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ExportError(f"{name} {value!r} is not supported; choose one of {', '.join(allowed)}")
