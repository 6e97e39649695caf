"""This project's own folders (``musicgen_onnx.json`` + its graphs): the adapter the runtime drives them by.

One of the two folder adapters (the other is :mod:`.optimum_layout`); both answer the same questions -
the manifest, where the graphs and the tokenizer are, and the conditioner, codec, stepper and stem
separator built on the folder's graphs - so that ``MusicGen`` and the generation loop never ask which
kind of folder they run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import null_prefill
from .codec import AudioCodec
from .conditioning import Conditioner
from .manifest import Manifest, folder_file, load_manifest, verify_files
from .capture import GraphIds
from .session import check_memory
from .stepper import BufferPool, CapturableStepper, ConcatStepper, Conditioning, DecoderIO, StaticStepper


@dataclass(frozen=True)
class NativeFolder:
    """An opened musicgen-onnx export: its checked manifest (files verified on :meth:`open`)."""

    folder: Path
    manifest: Manifest
    _decoder: dict = field(default_factory=dict, repr=False, compare=False)  # DecoderIO, cache dtype, pool: once
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    has_variants = False  # one precision per folder: ``precision=`` has nothing to choose here

    @classmethod
    def open(cls, folder: str | Path, precision: str | None = None, verify_hashes: bool = True) -> "NativeFolder":
        """``precision`` is ignored: the folder is one precision (a hub repo's sub-folder was chosen by it)."""
        folder = Path(folder)
        manifest = load_manifest(folder)
        verify_files(folder, manifest, hash_files=verify_hashes)
        return cls(folder, manifest)

    @property
    def graph_dir(self) -> Path:
        return self.folder

    @property
    def tokenizer_path(self) -> Path:
        return folder_file(self.folder, self.manifest.tokenizer)

    @property
    def layout(self) -> str:
        return f"musicgen-onnx export (format version {self.manifest.format_version})"

    variant = None  # one precision per folder

    @property
    def source_format(self) -> str:
        m = self.manifest
        return f"{m.source_format} format; follows {m.reference} where it and the other reference differ"

    def files_checked(self, hashed: bool) -> str:
        return "sizes and sha256 verified" if hashed else "sizes verified"

    @property
    def lacks(self) -> list[str]:
        if "audio_encoder" in self.manifest.graphs:
            return []
        return ["audio encoder: no continuation (generate_continuation, --continue)"]

    # ------------------------------------------------------------------ what MusicGen asks for
    def conditioner(self, tokenizer, graphs) -> Conditioner:
        return Conditioner(tokenizer, graphs, self.manifest)

    def codec(self, graphs) -> AudioCodec:
        return AudioCodec(graphs, self.manifest)

    def _decoder_io(self, graphs) -> dict:
        """The decoder's tensor names (``io``), its cache dtype (fp16 graphs take float16 caches) and, with
        CUDA graphs on a decoder that takes its step inputs (``positions``), the buffer pool and graph ids
        (capture.py, stepper.BufferPool): made once."""
        with self._lock:
            if not self._decoder:
                m, settings = self.manifest, graphs.settings
                io = DecoderIO.of(m.graphs["decoder"], m.num_layers, m.kv_cache, m.step_inputs)
                past_type = next(i.type for i in graphs["decoder"].get_inputs() if i.name == io.past[0])
                pool = graph_ids = None
                if settings.cuda_graph and m.step_inputs == "positions":
                    import onnxruntime as ort

                    graph_ids = GraphIds()
                    max_steps = int(np.ceil(m.max_duration * m.frame_rate)) + m.max_delay + 1
                    pool = BufferPool(ort, settings.device, max_steps, graph_ids)
                self._decoder.update(io=io, dtype=np.float16 if past_type == "tensor(float16)" else np.float32,
                                     pool=pool, graph_ids=graph_ids, null_prefill=null_prefill.NullPrefillCache())
            return self._decoder

    def new_stepper(self, graphs, rows: int, conditioning: Conditioning, steps: int):
        m = self.manifest
        d = self._decoder_io(graphs)
        io, dtype = d["io"], d["dtype"]
        # the CFG null rows' first call, reused (null_prefill.py) where the host writes the cache: not a GPU's
        reuse = d["null_prefill"] if null_prefill.enabled() and graphs.settings.device == "cpu" else None
        if m.kv_cache == "concat":
            return ConcatStepper(graphs["decoder"], io, conditioning, rows, m.num_heads, m.head_dim, dtype, reuse)
        check_memory("the static KV cache", 2 * m.num_layers * rows * m.num_heads * m.head_dim
                     * (conditioning.prefix_length + steps) * np.dtype(dtype).itemsize)
        args = (graphs["decoder"], io, conditioning, rows, m.num_heads, m.head_dim)
        kw = dict(max_length=conditioning.prefix_length + steps, logits_shape=(rows, m.num_codebooks, m.codebook_size),
                  device=graphs.settings.device, dtype=dtype, null_prefill=reuse)
        if m.step_inputs == "past_length":
            return StaticStepper(*args, **kw)
        pool = d["pool"] if d["pool"] is not None and steps <= d["pool"].max_steps else None
        return CapturableStepper(*args, **kw, pool=pool, graph_ids=d["graph_ids"])

    def stems(self, graphs, melody: bool = False, exact: bool = False):
        """The folder's :class:`~.stems.StemSeparator` (its graph opened on first use), or None: the exact
        graph, or with ``melody`` the one :func:`melody_stems_graph` picks for the melody path."""
        if self.manifest.stems is None:
            return None
        name = melody_stems_graph(self.manifest, graphs.settings.device, exact) if melody else "stems"
        from .stems import StemSeparator

        # apply_model's segment plan for both graphs: the fast plan (fewer segments) moved 8% of the chroma
        # frames of the held set on its own (README, stems/melody), so it is not a default
        return StemSeparator(graphs[name], self.manifest.stems, self.manifest.graphs[name])


def melody_stems_graph(manifest: Manifest, device: str, exact: bool = False) -> str | None:
    """The stems graph the melody path separates with: the int8 ``stems_fast`` where the folder has it,
    on CPU (its int8 kernels are CPU kernels; on CUDA they would fall back to the CPU), unless ``exact``
    is asked for; else the exact ``stems``. The melody only keeps the chroma of vocals + other, which the
    fast graph reproduces (export/stems_fast.py checks it); the ``stems`` command and ``/v1/stems``
    always take the exact graph. None: the folder has no stems."""
    if manifest.stems is None:
        return None
    return "stems_fast" if not exact and device == "cpu" and "stems_fast" in manifest.graphs else "stems"
