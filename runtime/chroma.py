"""Melody conditioning: the winner-takes-all chroma of audiocraft's ``ChromaExtractor`` (modules/chroma.py), in numpy.

Reproduces audiocraft's ``ChromaExtractor`` and transformers' ``MusicgenMelodyFeatureExtractor``
(torchaudio ``Spectrogram(normalized=True, power=2, center=True)`` + librosa's chroma filter bank,
inf-norm, argmax one-hot) without torch, torchaudio or librosa. No Demucs: the chroma is taken
from the full mix (README, "Melody conditioning").
"""

from __future__ import annotations

import functools

import numpy as np

from .manifest import ChromaParams
from .stft import centered_frames, hann


@functools.lru_cache(maxsize=4)
def chroma_filter_bank(sample_rate: int, n_fft: int, num_chroma: int = 12, tuning: float = 0.0,
                       ctroct: float = 5.0, octwidth: float = 2.0) -> np.ndarray:
    """``librosa.filters.chroma`` with its defaults (tuning 0, ctroct 5, octwidth 2, norm=2, base_c=True),
    which both references use; ``[num_chroma, n_fft//2+1]``."""
    freqs = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    frqbins = num_chroma * np.log2(freqs / (440.0 * 2.0 ** (tuning / num_chroma) / 16.0))
    frqbins = np.concatenate(([frqbins[0] - 1.5 * num_chroma], frqbins))
    binwidth = np.concatenate((np.maximum(frqbins[1:] - frqbins[:-1], 1.0), [1.0]))
    d = np.subtract.outer(frqbins, np.arange(0, num_chroma, dtype="d")).T
    half = np.round(num_chroma / 2)
    d = np.remainder(d + half + 10 * num_chroma, num_chroma) - half
    weights = np.exp(-0.5 * (2 * d / np.tile(binwidth, (num_chroma, 1))) ** 2)
    weights = weights / np.maximum(np.sqrt(np.sum(weights ** 2, axis=0, keepdims=True)), np.finfo(float).tiny)
    weights *= np.tile(np.exp(-0.5 * (((frqbins / num_chroma - ctroct) / octwidth) ** 2)), (num_chroma, 1))
    weights = np.roll(weights, -3 * (num_chroma // 12), axis=0)
    return np.ascontiguousarray(weights[:, : 1 + n_fft // 2], dtype=np.float32)


def power_spectrogram(wav: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``|STFT|^2 / sum(window^2)``, centred with reflect padding; ``[n_fft//2+1, 1 + len // hop]``."""
    view = centered_frames(wav.astype(np.float32), n_fft, hop)
    frames = view.shape[0]
    window = hann(n_fft)
    spec = np.empty((n_fft // 2 + 1, frames), dtype=np.float32)
    for start in range(0, frames, 64):  # bounded memory: 64 frames of n_fft at a time
        idx = np.arange(start, min(frames, start + 64))
        block = view[idx] * window
        spectrum = np.fft.rfft(block.astype(np.float64), axis=-1)
        spec[:, idx] = (spectrum.real ** 2 + spectrum.imag ** 2).T.astype(np.float32)
    return spec / np.float32(np.sum(window.astype(np.float64) ** 2))


def chroma_onehot(wav: np.ndarray, params: ChromaParams, max_frames: int | None = None) -> np.ndarray:
    """Mono ``wav`` at ``params.sample_rate`` -> one-hot chroma ``[frames, num_chroma]`` (float32).

    ``max_frames`` lets long melodies be cut before the STFT without changing the kept frames: a
    frame only sees ``n_fft // 2`` samples either side of its centre.
    """
    n_fft, hop = params.n_fft, params.hop_length
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    if peak > 1e4:  # far beyond any real recording: scale (chroma is scale-free) so |STFT|^2 fits float32
        wav = wav * np.float32(1e4 / peak)
    if max_frames is not None:
        keep = (max_frames - 1) * hop + n_fft // 2 + 1
        wav = wav[:keep] if wav.shape[0] > keep else wav
    if wav.shape[0] < n_fft:
        pad = n_fft - wav.shape[0]
        wav = np.pad(wav, (pad // 2, pad // 2 + pad % 2))
    spec = power_spectrogram(wav, n_fft, hop)
    raw = chroma_filter_bank(params.sample_rate, n_fft, params.num_chroma) @ spec  # [chroma, frames]
    norm = raw / np.maximum(np.max(np.abs(raw), axis=0, keepdims=True), 1e-6)
    winners = np.argmax(norm, axis=0)
    if max_frames is not None:
        winners = winners[:max_frames]
    onehot = np.zeros((winners.shape[0], params.num_chroma), dtype=np.float32)
    onehot[np.arange(winners.shape[0]), winners] = 1.0
    return onehot


def null_chroma(frames: int, num_chroma: int) -> np.ndarray:
    """The CFG null / no-melody chroma: bin 0 (C) in every frame (audiocraft: chroma of the zeroed null wav;
    transformers: ``input_features[..., 0] = 1``)."""
    out = np.zeros((frames, num_chroma), dtype=np.float32)
    out[:, 0] = 1.0
    return out


def batch_chroma(wavs: list[np.ndarray], params: ChromaParams) -> np.ndarray:
    """One-hot chroma of each melody, padded as both references collate: every wav right-padded with
    zeros to the longest of the batch first, so shorter ones gain silent (bin 0) frames that are then
    tiled with the rest. ``[batch, frames, num_chroma]``."""
    longest = max(w.shape[0] for w in wavs)
    padded = [np.pad(w, (0, longest - w.shape[0])) for w in wavs]
    return np.stack([chroma_onehot(w, params, max_frames=params.chroma_length) for w in padded])
