"""Integrated loudness exactly as audiocraft measures it (torchaudio ``functional.loudness``, which audiocraft's ``normalize_loudness`` calls), in numpy.

torchaudio designs RBJ-cookbook biquads at the signal's own rate (an approximation of BS.1770's
48 kHz K-weighting) and clamps each filter's output to [-1, 1]; this module does the same, so
``normalize_loudness`` lands where audiocraft's would. The IIR filters run as an FFT convolution
with their impulse response, truncated once it has decayed below 1e-9 of its peak: numpy has no
``lfilter``, and scipy (~110 MB) is not worth two biquads.
"""

from __future__ import annotations

import functools
import math

import numpy as np

CHANNEL_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)


def _treble_shelf(sr: int, gain_db: float = 4.0, f0: float = 1500.0, q: float = 1 / math.sqrt(2)):
    w0 = 2 * math.pi * f0 / sr
    alpha = math.sin(w0) / 2 / q
    a = math.exp(gain_db / 40 * math.log(10))
    t1 = 2 * math.sqrt(a) * alpha
    t2 = (a - 1) * math.cos(w0)
    t3 = (a + 1) * math.cos(w0)
    b = [a * ((a + 1) + t2 + t1), -2 * a * ((a - 1) + t3), a * ((a + 1) + t2 - t1)]
    den = [(a + 1) - t2 + t1, 2 * ((a - 1) - t3), (a + 1) - t2 - t1]
    return b, den


def _highpass(sr: int, f0: float = 38.0, q: float = 0.5):
    w0 = 2 * math.pi * f0 / sr
    alpha = math.sin(w0) / 2 / q
    b = [(1 + math.cos(w0)) / 2, -1 - math.cos(w0), (1 + math.cos(w0)) / 2]
    den = [1 + alpha, -2 * math.cos(w0), 1 - alpha]
    return b, den


@functools.lru_cache(maxsize=8)
def _impulse_response(b: tuple, a: tuple, max_len: int = 1 << 17) -> np.ndarray:
    b0, b1, b2 = (x / a[0] for x in b)
    a1, a2 = a[1] / a[0], a[2] / a[0]
    h = np.zeros(max_len)
    x1 = x2 = y1 = y2 = 0.0
    peak = 0.0
    for n in range(max_len):
        x0 = 1.0 if n == 0 else 0.0
        y0 = b0 * x0 + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2
        h[n] = y0
        peak = max(peak, abs(y0))
        x2, x1, y2, y1 = x1, x0, y1, y0
        if n > 16 and abs(y0) < 1e-9 * peak and abs(y1) < 1e-9 * peak:
            return h[: n + 1]
    return h


def _biquad(x: np.ndarray, coeffs) -> np.ndarray:
    """``lfilter(x, a, b, clamp=True)`` along the last axis."""
    h = _impulse_response(tuple(coeffs[0]), tuple(coeffs[1]))
    n = x.shape[-1] + h.shape[0] - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size, axis=-1) * np.fft.rfft(h, size), size, axis=-1)[..., : x.shape[-1]]
    return np.clip(y, -1.0, 1.0)


def integrated_loudness(wav: np.ndarray, sr: int) -> float:
    """LUFS of ``wav [channels, samples]``; NaN when there is less than one 400 ms block."""
    x = np.asarray(wav, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    x = _biquad(_biquad(x, _treble_shelf(sr)), _highpass(sr))
    block = round(0.4 * sr)
    step = round(block * 0.25)
    if x.shape[-1] < block:
        return float("nan")
    starts = np.arange(0, x.shape[-1] - block + 1, step)
    csum = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x ** 2, axis=-1)], axis=-1)
    energy = (csum[:, starts + block] - csum[:, starts]) / block  # [channels, blocks]
    g = np.asarray(CHANNEL_WEIGHTS[: x.shape[0]])[:, None]
    with np.errstate(divide="ignore"):
        block_loudness = -0.691 + 10 * np.log10(np.sum(g * energy, axis=0))
    gated = block_loudness > -70
    if not gated.any():
        return float("-inf")
    rel = -0.691 + 10 * np.log10(np.sum(g[:, 0] * energy[:, gated].mean(axis=1))) - 10
    gated &= block_loudness > rel
    if not gated.any():
        return float("-inf")
    return float(-0.691 + 10 * np.log10(np.sum(g[:, 0] * energy[:, gated].mean(axis=1))))
