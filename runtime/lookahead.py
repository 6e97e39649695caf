"""How many frames past a span the codec decoder must see before the span's audio is final.

EnCodec's decoder is causal on the left only in its LSTMs; its convolutions (symmetric padding, kernel
sizes, strides) read a few frames ahead. How far is a fact of the graph's structure, not of its weights,
so it is measured once on random codes: export records it in the manifest (``codec_lookahead``) and
``StreamDecoder`` holds each span back by it. numpy + onnxruntime only, so the exporter and a
maintenance script (``benchmarks/codec_lookahead.py``) measure with the same code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from .codec import AudioCodec
from .manifest import MAX_CODEC_LOOKAHEAD, Manifest, folder_file
from .session import SessionSettings, open_session

log = logging.getLogger(__name__)

# "Unchanged" is a difference at most this fraction of the one-shot audio's peak. Float noise between two
# decodes of different lengths is ~1e-6 of the peak; a frame inside the convolutions' reach moves by
# ~1e-1 of it (full-size 32 kHz codec, random weights: look-ahead 3 differs by 1.1e-2 at a peak of 0.1).
RELATIVE_TOLERANCE = 1e-4
PROBES = 3  # span ends checked; the look-ahead is the largest any of them shows
SPACING = 7  # frames between span ends: each probe sees other codes around its end


def measure_lookahead(decode: Callable[[np.ndarray], np.ndarray], num_codebooks: int, codebook_size: int,
                      cap: int = MAX_CODEC_LOOKAHEAD, seed: int = 0) -> int | None:
    """The smallest ``L`` such that audio of frames ``< t`` is unchanged (within :data:`RELATIVE_TOLERANCE`
    of the peak) whatever the codes at frames ``>= t + L``, or None where it exceeds ``cap``.

    Two ways of changing the future are probed at several span ends ``p``: replacing every codebook of
    frames ``>= p`` by other random codes, and cutting the codes at ``p`` (what a stream's decode does,
    whose padding then mirrors the cut). Each gives the first audio frame ``f`` that moved, so the
    look-ahead ``p - f`` is read off directly rather than searched for: by construction ``L`` leaves the
    audio unchanged at every probe and ``L - 1`` changes it at the probe that set ``L``. Probes start past
    ``cap`` so that any reach up to it is seen; a reach beyond it moves frame 0 and reads as ``> cap``.
    """
    rng = np.random.default_rng(seed)
    ends = [cap + 1 + SPACING * i for i in range(PROBES)]
    frames = ends[-1] + 4
    codes = rng.integers(0, codebook_size, (1, num_codebooks, frames), dtype=np.int64)
    changed = []
    for p in ends:
        other = codes.copy()
        shift = rng.integers(1, codebook_size, (1, num_codebooks, frames - p), dtype=np.int64)
        other[:, :, p:] = (other[:, :, p:] + shift) % codebook_size  # every code differs
        changed.append(other)
    audio = decode(np.concatenate([codes, *changed]))
    hop = audio.shape[2] // frames
    full = audio[:1]
    tolerance = RELATIVE_TOLERANCE * float(np.max(np.abs(full)))
    reach = 0
    for p, moved in zip(ends, audio[1:]):
        reach = max(reach, p - _first_moved_frame(moved[None], full, hop, tolerance))
    for p in ends:
        cut = decode(codes[:, :, :p])
        reach = max(reach, p - _first_moved_frame(cut, full[:, :, :p * hop], hop, tolerance))
    log.debug("codec look-ahead: %d frames (hop %d, tolerance %.3g)", reach, hop, tolerance)
    return reach if reach <= cap else None


def _first_moved_frame(audio: np.ndarray, reference: np.ndarray, hop: int, tolerance: float) -> int:
    """The first frame where ``audio`` and ``reference`` (over their common length) differ by more than
    ``tolerance``; the frame count when none does."""
    n = min(audio.shape[2], reference.shape[2]) // hop
    diff = np.abs(audio[:, :, :n * hop] - reference[:, :, :n * hop]).reshape(-1, n, hop).max(axis=(0, 2))
    moved = np.flatnonzero(diff > tolerance)
    return int(moved[0]) if moved.size else n


def folder_lookahead(folder: str | Path, manifest: Manifest, settings: SessionSettings = SessionSettings(),
                     cap: int = MAX_CODEC_LOOKAHEAD) -> int | None:
    """:func:`measure_lookahead` of a native folder's ``audio_decoder``, decoded as the runtime decodes
    (stereo codes through both sides)."""
    path = folder_file(folder, manifest.graphs["audio_decoder"].file)
    codec = AudioCodec({"audio_decoder": open_session(path, settings)}, manifest)
    return measure_lookahead(codec.decode, manifest.num_codebooks, manifest.codebook_size, cap)
