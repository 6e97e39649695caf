"""A MusicGen folder opened through its adapter, and the one description of it.

Two adapters answer the same questions (:mod:`.native_layout` for this project's exports,
:mod:`.optimum_layout` for optimum / transformers.js folders), so nothing above this module branches on
the kind of folder; :func:`~.folder_kind.folder_kind` picks the adapter (and ``StemSeparator.from_folder``
the stems manifest). :func:`describe` is what ``info`` prints and ``GET /v1/model`` serves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from .codec import AudioCodec
from .errors import ModelFolderError
from .folder_kind import OPTIMUM, STEMS, folder_kind
from .manifest import Manifest
from .native_layout import NativeFolder, melody_stems_graph
from .optimum_layout import OptimumFolder
from .options import GenerationOptions
from .stepper import Conditioning


class FolderLayout(Protocol):
    """The seam between a folder's format and everything that runs it: what both adapters provide."""

    folder: Path
    manifest: Manifest
    has_variants: bool  # whether ``precision=`` chooses among variants inside the folder
    graph_dir: Path
    tokenizer_path: Path
    layout: str  # one line for ``info``
    variant: str | None  # the chosen variant and those available, where there are several
    source_format: str | None
    lacks: list[str]  # what this runtime does with its own exports but not with this folder

    def files_checked(self, hashed: bool) -> str: ...
    def conditioner(self, tokenizer, graphs): ...
    def codec(self, graphs) -> AudioCodec: ...
    def new_stepper(self, graphs, rows: int, conditioning: Conditioning, steps: int): ...
    def stems(self, graphs, melody: bool = False, exact: bool = False): ...


def layout_class(folder: str | os.PathLike) -> type[NativeFolder] | type[OptimumFolder]:
    """The adapter that reads ``folder``. A stems-only folder holds no MusicGen: refused here by what it
    is (the native reader would only say its manifest is missing, as if nothing had been exported)."""
    kind = folder_kind(folder)
    if kind == STEMS:
        raise ModelFolderError(f"{folder} is a stems-only folder (export-stems): it separates stems (the stems "
                               f"command, serve --stems) but holds no MusicGen to generate with")
    return OptimumFolder if kind == OPTIMUM else NativeFolder


def open_layout(folder: str | os.PathLike, precision: str | None = None, verify_hashes: bool = True) -> FolderLayout:
    """The folder's adapter, its files checked (``precision``: the variant of a folder that has several)."""
    return layout_class(folder).open(folder, precision, verify_hashes)


def describe(layout: FolderLayout, options: GenerationOptions | None = None, device: str = "cpu",
             exact_stems: bool = False) -> dict:
    """The folder's facts as JSON values: what ``info`` prints and ``/v1/model`` serves. ``options``: the
    defaults a loaded model generates with (``set_generation_params``), else the folder's; ``device`` and
    ``exact_stems`` (a loaded model's): which stems graph melodies go through (``melody_stems``)."""
    m = layout.manifest
    src = m.source or {}
    d = options or m.defaults
    return {
        "checkpoint": src.get("checkpoint"), "revision": src.get("revision"), "source_format": layout.source_format,
        "layout": layout.layout, "variant": layout.variant, "family": m.family, "melody": m.is_melody,
        "sample_rate": m.sample_rate, "channels": m.audio_channels, "frame_rate": m.frame_rate,
        "window_s": m.max_duration, "codebooks": m.num_codebooks, "codebook_size": m.codebook_size,
        "precision": m.graphs["decoder"].precision, "kv_cache": m.kv_cache, "kv_dtype": m.kv_dtype,
        "can_continue": "audio_encoder" in m.graphs,
        "decoder": {"layers": m.num_layers, "heads": m.num_heads, "hidden_size": m.hidden_size,
                    "delays": list(m.delays)},
        "chroma": None if m.chroma is None else {
            "n_fft": m.chroma.n_fft, "hop_length": m.chroma.hop_length, "bins": m.chroma.num_chroma,
            "frames": m.chroma.chroma_length},
        "stems": None if m.stems is None else describe_stems(m.stems),
        "melody_stems": melody_stems_graph(m, device, exact_stems),
        "defaults": {"duration": d.duration, "top_k": d.top_k, "top_p": d.top_p, "temperature": d.temperature,
                     "guidance": d.guidance_scale, "greedy": d.greedy},
        "graphs": {name: {"precision": g.precision, "size_bytes": g.size_bytes, "files": list(g.files)}
                   for name, g in m.graphs.items()},
        "lacks": layout.lacks,
    }


def describe_stems(p) -> dict:
    """A Demucs graph's facts (``StemsParams``), for a stems-only folder or a melody folder's stems."""
    return {"sources": list(p.sources), "sample_rate": p.sample_rate, "channels": p.audio_channels,
            "segment_s": p.segment_length / p.sample_rate, "n_fft": p.n_fft, "melody_stems": list(p.melody_stems)}
