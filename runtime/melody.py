"""Melody inputs -> mono waveforms at the chroma rate -> one-hot chroma (per generation window)."""

from __future__ import annotations

import os

import numpy as np

from . import audio as audio_io
from .chroma import batch_chroma
from .errors import InvalidInputError
from .manifest import ChromaParams


def prepare_melodies(melody, melody_sample_rate, batch: int, params: ChromaParams) -> list[np.ndarray] | None:
    """One melody for all prompts or one per prompt, each a path or an array, -> ``batch`` mono float32
    waveforms at ``params.sample_rate`` (None entries become audiocraft's 1-sample null wav); None when
    no melody is given at all."""
    if melody is None:
        return None
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
    if all(item is None for item in items):
        return None
    wavs = []
    for i, item in enumerate(items):
        what = f"melody[{i}]" if len(items) > 1 else "melody"
        if item is None:
            wavs.append(np.zeros(1, dtype=np.float32))  # audiocraft's null wav
            continue
        wav, sr, what = audio_io.read_input(item, melody_sample_rate, what, "melody")
        mono = audio_io.to_mono(wav)
        if float(np.max(np.abs(mono))) < 1e-4:
            raise InvalidInputError(f"{what} is silent (peak below -80 dBFS) and carries no melody; "
                                    "pass melody=None to generate from text alone")
        wavs.append(audio_io.resample(mono, sr, params.sample_rate))
    return wavs * batch if len(wavs) == 1 and batch > 1 else wavs


def window_chroma(wavs: list[np.ndarray], start_s: float, length_s: float, params: ChromaParams) -> np.ndarray:
    """Chroma of the ``length_s`` seconds of each melody starting at ``start_s``, taken from the melody's
    periodic extension (audiocraft ``MusicGen._generate_tokens``): ``pos = arange(a, a + n) % len``."""
    a = int(start_s * params.sample_rate)
    n = int(length_s * params.sample_rate)
    cut = [w[np.arange(a, a + n) % w.shape[0]] for w in wavs]
    return batch_chroma(cut, params)
