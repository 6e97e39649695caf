"""Melody inputs -> mono waveforms at the chroma rate -> one-hot chroma (per generation window)."""

from __future__ import annotations

import math
import os

import numpy as np

from . import audio as audio_io
from .chroma import batch_chroma
from .errors import InvalidInputError
from .manifest import ChromaParams, StemsParams
from .resample_frac import resample_frac
from .stems import EXACT


_RESAMPLER_MARGIN_S = 1.0
"""Read past what the chroma uses: soxr's output differs from the whole file's only in the last
~300 samples of a cut input (measured, 44.1 -> 32 kHz HQ), so 1 s keeps every used sample exact."""


_JULIUS_MARGIN = 64
"""Samples at the chroma rate past the used span that julius's kernels reach on the way to the model's
rate and back (26 + 25 for 32 <-> 44.1 kHz, zeros 24, rolloff 0.945), with room."""


def prepare_melodies(melody, melody_sample_rate, batch: int, params: ChromaParams,
                     max_seconds: float | None = None, stems: StemsParams | None = None) -> list[np.ndarray] | None:
    """One melody for all prompts or one per prompt, each a path or an array, -> ``batch`` mono float32
    waveforms at ``params.sample_rate`` (None entries become audiocraft's 1-sample null wav); None when
    no melody is given at all.

    ``max_seconds``: the furthest point any window reads (generation duration + one model window);
    only that much of each melody (plus what the single-window chroma and the resampler need) is
    decoded, so the chroma equals the whole melody's while a two-hour file costs what is used.

    ``stems``: the melodies will be separated (``runtime/stems.py``) before their chroma, so they are
    resampled as audiocraft does (julius, not soxr) and read one Demucs segment and shift further
    (the stems of the used span depend on the segments that overlap it)."""
    if melody is None:
        return None
    items = _melody_items(melody, batch)
    if all(item is None for item in items):
        return None
    read_s = _seconds_to_read(max_seconds, params, stems)
    wavs = []
    for i, item in enumerate(items):
        what = f"melody[{i}]" if len(items) > 1 else "melody"
        if item is None:
            wavs.append(np.zeros(1, dtype=np.float32))  # audiocraft's null wav
            continue
        wavs.append(_prepare_one(item, melody_sample_rate, what, params, read_s, stems is not None))
    return wavs * batch if len(wavs) == 1 and batch > 1 else wavs


def _melody_items(melody, batch: int) -> list:
    melody = audio_io.as_array(melody, "melody")  # a torch tensor [B, C, T] or [C, T], as audiocraft takes
    if isinstance(melody, (str, os.PathLike)) or (isinstance(melody, np.ndarray) and melody.ndim <= 2):
        items = [melody]
    elif isinstance(melody, np.ndarray) and melody.ndim == 3:
        items = list(melody)
    elif isinstance(melody, (list, tuple)):
        items = list(melody)
    else:
        raise InvalidInputError(f"melody: expected a file path, an array or a list of them, got {type(melody).__name__}")
    if len(items) not in (1, batch):
        raise InvalidInputError(f"melody: got {len(items)} melodies for {batch} prompts; "
                                "give one melody for all prompts or one per prompt")
    return items


def _seconds_to_read(max_seconds: float | None, params: ChromaParams, stems: StemsParams | None = None) -> float | None:
    """A single window takes the chroma of the melody's first ``chroma_length`` frames whatever the
    duration (frames see ``n_fft // 2`` past their centre), long-form windows read up to
    ``max_seconds``; either way plus the resampler's margin, and with stems one Demucs segment and
    shift more (the stems of a span depend on every segment that overlaps it)."""
    if max_seconds is None:
        return None
    audio_io.check_seconds(max_seconds, "max_seconds")
    span = ((params.chroma_length - 1) * params.hop_length + params.n_fft // 2 + 1) / params.sample_rate
    extra = 0.0 if stems is None else (stems.segment_length + stems.max_shift) / stems.sample_rate
    return max(float(max_seconds), span) + _RESAMPLER_MARGIN_S + extra


def single_window_cut(wavs: list[np.ndarray], params: ChromaParams, stems: StemsParams,
                      plan: str = EXACT) -> list[np.ndarray]:
    """What a single window's stems need of each melody: its chroma is the first ``chroma_length``
    frames, whose stems (exact plan) depend on the melody up to one segment and shift (and the
    resampler's margin) past them. audiocraft separates the whole melody; the kept frames are the same,
    at a fraction of the cost for a long song.

    The fast plan's segments are placed by the length separated, so no cut keeps its stems equal to the
    whole melody's; it keeps the chroma span (and julius's reach) plus the largest shift lead rounded up
    to whole segments, less that lead: as many model calls as the span needs at the least, whatever the
    shift, the rest of the last segment as context past the span (for htdemucs and 235 frames:
    30.7 s, 4 segments, where the exact cut's 39.5 s take 6)."""
    if plan == EXACT:
        keep = math.ceil(_seconds_to_read(1.0 / params.sample_rate, params, stems) * params.sample_rate)
    else:
        need = (params.chroma_length - 1) * params.hop_length + params.n_fft // 2 + 1 + _JULIUS_MARGIN
        rate, seg = params.sample_rate, stems.segment_length
        segments = -(-(need * stems.sample_rate + stems.max_shift * rate) // (seg * rate))
        keep = (segments * seg - stems.max_shift) * rate // stems.sample_rate  # resampled + lead: whole segments
    return [w[:keep] for w in wavs]


def _prepare_one(item, melody_sample_rate, what: str, params: ChromaParams, read_s: float | None,
                 julius: bool = False) -> np.ndarray:
    """One melody -> mono float32 at the chroma rate, refusing what has no chroma to give: shorter
    than one chroma hop (the STFT would be all padding) or silent."""
    wav, sr, what = audio_io.read_input(item, melody_sample_rate, what, "melody", max_seconds=read_s)
    mono = audio_io.to_mono(wav)
    audio_io.check_min_samples(mono, sr, params.hop_length, params.sample_rate, what, "a melody (one chroma hop)")
    if float(np.max(np.abs(mono))) < 1e-4:
        cut = read_s is not None and mono.shape[0] >= math.ceil(read_s * sr)
        where = f" over its first {read_s:g} s (all this generation uses)" if cut else ""
        raise InvalidInputError(f"{what} is silent (peak below -80 dBFS){where} and carries no melody; "
                                "pass melody=None to generate from text alone")
    if julius:
        return resample_frac(mono, sr, params.sample_rate)
    return audio_io.resample(mono, sr, params.sample_rate)


def window_cut(wavs: list[np.ndarray], start_s: float, length_s: float, params: ChromaParams) -> list[np.ndarray]:
    """The ``length_s`` seconds of each melody starting at ``start_s``, taken from the melody's periodic
    extension (audiocraft ``MusicGen._generate_tokens``): ``pos = arange(a, a + n) % len``."""
    a = int(start_s * params.sample_rate)
    n = int(length_s * params.sample_rate)
    return [w[np.arange(a, a + n) % w.shape[0]] for w in wavs]


def window_chroma(wavs: list[np.ndarray], start_s: float, length_s: float, params: ChromaParams) -> np.ndarray:
    """Chroma of a long-form window's cut of each melody (:func:`window_cut`)."""
    return batch_chroma(window_cut(wavs, start_s, length_s, params), params)
