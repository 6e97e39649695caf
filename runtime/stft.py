"""The short-time Fourier framing torch uses (``center=True, pad_mode='reflect'``, a periodic Hann
window), shared by the melody chroma (torchaudio's ``Spectrogram``) and the stems graph's
``torch.stft`` / ``torch.istft``."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=4)
def hann(n: int) -> np.ndarray:
    """``torch.hann_window(n)`` (periodic), float32."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def centered_frames(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``x [..., samples]`` reflect-padded by ``n_fft // 2`` on both sides, cut into ``n_fft``-sample
    frames every ``hop``: ``[..., 1 + samples // hop, n_fft]``, a strided view of the padded copy."""
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)], mode="reflect")
    return np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[..., ::hop, :]
