"""julius's ``resample_frac`` in numpy: the resampler audiocraft and Demucs convert audio with.

The melody path without stems resamples with soxr (``audio.resample``), which agrees with the
references to within resampler ripple. Stem separation is not that forgiving: Demucs is run on the
resampled audio and its stems feed an argmax, so the stems path reproduces audiocraft's exact chain
(``convert_audio``: julius ``resample_frac``, zeros 24, rolloff 0.945): a windowed-sinc kernel per
output phase, normalised to sum 1, replicate padding, output length ``floor(new * len / old)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

_BLOCK = 4096  # output phases' frames per matmul: bounded memory on hour-long input


@functools.lru_cache(maxsize=8)
def _kernels(old: int, new: int, zeros: int, rolloff: float) -> tuple[np.ndarray, int]:
    """``[new, 2 * width + old]`` float32 kernels (julius ``ResampleFrac._init_kernels``) and ``width``."""
    sr = min(new, old) * rolloff
    width = math.ceil(zeros * old / sr)
    # In float32, step by step as julius computes them in torch: float64 kernels differ from julius's by
    # up to 2e-5 of the signal (the sinc argument reaches 24 pi), which Demucs parity cannot absorb.
    f32 = np.float32
    idx = np.arange(-width, width + old, dtype=f32)
    t = (f32(-1) * np.arange(new, dtype=np.float64)[:, None] / new).astype(f32) + idx[None] / f32(old)
    t = np.clip(t * f32(sr), f32(-zeros), f32(zeros)) * f32(math.pi)
    window = np.cos(t / f32(zeros) / f32(2)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(t == 0, f32(1), np.sin(t) / t)
    kernel = sinc * window
    kernel /= kernel.sum(axis=1, keepdims=True, dtype=f32)
    return kernel.astype(np.float32), width


def resample_frac(x: np.ndarray, old_sr: int, new_sr: int, zeros: int = 24, rolloff: float = 0.945) -> np.ndarray:
    """Resample the last axis of ``x`` from ``old_sr`` to ``new_sr`` (float32), as julius does."""
    x = np.asarray(x, dtype=np.float32)
    gcd = math.gcd(int(old_sr), int(new_sr))
    old, new = int(old_sr) // gcd, int(new_sr) // gcd
    if old == new:
        return x
    kernel, width = _kernels(old, new, zeros, rolloff)
    shape, length = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, length)
    out_len = int(math.floor(new * length / old))
    out = np.empty((rows.shape[0], out_len), dtype=np.float32)
    taps = kernel.shape[1]
    for r, row in enumerate(rows):
        padded = np.pad(row, (width, width + old), mode="edge")  # torch 'replicate'
        frames = (padded.shape[0] - taps) // old + 1
        windows = np.lib.stride_tricks.sliding_window_view(padded, taps)[::old][:frames]
        for start in range(0, frames, _BLOCK):
            block = windows[start:start + _BLOCK] @ kernel.T  # [frames, new]: output j * new + i
            lo = start * new
            flat = block.reshape(-1)[: max(0, out_len - lo)]
            out[r, lo:lo + flat.shape[0]] = flat
    return out.reshape(*shape, out_len)
