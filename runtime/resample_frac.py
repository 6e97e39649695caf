"""julius's ``resample_frac`` in numpy: the resampler audiocraft and Demucs convert audio with.

The melody path without stems resamples with soxr (``audio.resample``), which agrees with the
references to within resampler ripple. Stem separation is not that forgiving: Demucs is run on the
resampled audio and its stems feed an argmax, so the stems path reproduces audiocraft's exact chain
(``convert_audio``: julius ``resample_frac``, zeros 24, rolloff 0.945): a windowed-sinc kernel per
output phase, normalised to sum 1, replicate padding, output length ``floor(new * len / old)``.

julius builds ``new x (2 * width + old)`` kernels (rates reduced by their gcd). For the usual rates
that is a few KB and is done here exactly as julius does it (bit for bit the same kernels). For rates
that share no factor (44099 Hz -> 44100 Hz: 7.8 GB of kernels) each output's kernel is computed
instead over the only taps where julius's is not (numerically) zero, ``2 * width + 2`` around the
output's position, block by block: memory is a few copies of the audio, never the kernel table.
Accuracy of that path: the same float32 operations on the same taps, normalised over those taps;
julius's other taps are clipped to its last zero crossing (each below 1e-20), so the two differ by
float32 rounding only: within 1e-6 of the signal's peak, checked against julius itself where julius
fits in memory (tests/export/test_stems_parity.py).
"""

from __future__ import annotations

import functools
import math

import numpy as np

_BLOCK = 4096  # output phases' frames per matmul: bounded memory on hour-long input
_DENSE_ELEMENTS = 1 << 22  # julius's kernel table up to 16 MiB is built whole, as julius does
_SPARSE_BLOCK = 1 << 18  # outputs x taps per block of the per-output path (1 MiB per temporary)


def _width(old: int, new: int, zeros: int, rolloff: float) -> tuple[float, int]:
    sr = min(new, old) * rolloff
    return sr, math.ceil(zeros * old / sr)


def _kernel_values(phase: np.ndarray, idx: np.ndarray, old: int, new: int, zeros: int, sr: float) -> np.ndarray:
    """julius's kernel at output phases ``phase [P, 1]`` (int) and taps ``idx`` (float32, broadcast
    against it), unnormalised. In float32, step by step as julius computes them in torch: float64
    kernels differ from julius's by up to 2e-5 of the signal (the sinc argument reaches 24 pi), which
    Demucs parity cannot absorb."""
    f32 = np.float32
    t = (f32(-1) * phase.astype(np.float64) / new).astype(f32) + idx / f32(old)
    t = np.clip(t * f32(sr), f32(-zeros), f32(zeros)) * f32(math.pi)
    window = np.cos(t / f32(zeros) / f32(2)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(t == 0, f32(1), np.sin(t) / t)
    return sinc * window


@functools.lru_cache(maxsize=8)
def _kernels(old: int, new: int, zeros: int, rolloff: float) -> tuple[np.ndarray, int]:
    """``[new, 2 * width + old]`` float32 kernels (julius ``ResampleFrac._init_kernels``) and ``width``."""
    sr, width = _width(old, new, zeros, rolloff)
    idx = np.arange(-width, width + old, dtype=np.float32)
    kernel = _kernel_values(np.arange(new)[:, None], idx[None], old, new, zeros, sr)
    kernel /= kernel.sum(axis=1, keepdims=True, dtype=np.float32)
    return kernel.astype(np.float32), width


def _phase_kernels(phase: np.ndarray, old: int, new: int, width: int, zeros: int, sr: float) -> np.ndarray:
    """``[P, 2 * width + 2]``: julius's kernel of each output phase over its support, which starts at
    column ``phase * old // new`` of julius's row (taps past the row's end are zero, as in julius)."""
    taps = 2 * width + 2
    cols = (phase * old // new)[:, None] + np.arange(taps)
    kernel = _kernel_values(phase[:, None], (cols - width).astype(np.float32), old, new, zeros, sr)
    kernel[cols >= 2 * width + old] = 0
    kernel /= kernel.sum(axis=1, keepdims=True, dtype=np.float32)
    return kernel


def resample_frac(x: np.ndarray, old_sr: int, new_sr: int, zeros: int = 24, rolloff: float = 0.945) -> np.ndarray:
    """Resample the last axis of ``x`` from ``old_sr`` to ``new_sr`` (float32), as julius does."""
    x = np.asarray(x, dtype=np.float32)
    gcd = math.gcd(int(old_sr), int(new_sr))
    old, new = int(old_sr) // gcd, int(new_sr) // gcd
    if old == new:
        return x
    shape, length = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, length)
    out_len = int(math.floor(new * length / old))
    _, width = _width(old, new, zeros, rolloff)
    if new * (2 * width + old) <= _DENSE_ELEMENTS:
        out = _dense(rows, old, new, zeros, rolloff, out_len)
    else:
        out = _sparse(rows, old, new, zeros, rolloff, out_len)
    return out.reshape(*shape, out_len)


def _dense(rows: np.ndarray, old: int, new: int, zeros: int, rolloff: float, out_len: int) -> np.ndarray:
    """julius's strided convolution with its whole kernel table."""
    kernel, width = _kernels(old, new, zeros, rolloff)
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
    return out


def _sparse(rows: np.ndarray, old: int, new: int, zeros: int, rolloff: float, out_len: int) -> np.ndarray:
    """Output ``k`` (frame ``k // new``, phase ``k % new``) reads julius's padded input from
    ``k * old // new`` on, through its phase's kernel support. When the audio is long enough to reuse
    the phases' kernels and their table is small next to it, they are tabled and applied phase by phase
    (strided views, a matrix-vector product each: a minute of 47999 Hz stereo in about 0.5 s); else each
    block of outputs computes and gathers its own."""
    sr, width = _width(old, new, zeros, rolloff)
    taps = 2 * width + 2
    padded = np.pad(rows, ((0, 0), (width, width + old)), mode="edge")  # torch 'replicate'
    table = None
    if out_len > new and new * taps <= 4 * rows.shape[1]:
        table = np.empty((new, taps), dtype=np.float32)
        step = max(1, _SPARSE_BLOCK // taps)
        for lo in range(0, new, step):
            table[lo:lo + step] = _phase_kernels(np.arange(lo, min(lo + step, new)), old, new, width, zeros, sr)
    out = np.empty((rows.shape[0], out_len), dtype=np.float32)
    if table is not None:  # phase by phase: outputs i, i + new, ... read every old-th window from i * old // new
        windows = np.lib.stride_tricks.sliding_window_view(padded, taps, axis=-1)
        for i in range(new):
            n = len(range(i, out_len, new))
            out[:, i::new] = windows[:, i * old // new::old][:, :n] @ table[i]
        return out
    step = max(1, _SPARSE_BLOCK // (taps * rows.shape[0]))
    offsets = np.arange(taps)
    for lo in range(0, out_len, step):
        k = np.arange(lo, min(lo + step, out_len), dtype=np.int64)
        phase = k % new
        kernel = table[phase] if table is not None else _phase_kernels(phase, old, new, width, zeros, sr)
        windows = padded[:, (k * old // new)[:, None] + offsets]  # [rows, outputs, taps]
        out[:, lo:lo + k.shape[0]] = np.einsum("rot,ot->ro", windows, kernel)
    return out
