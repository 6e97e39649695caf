"""The codebook delay pattern (audiocraft ``DelayedPatternProvider``, transformers
``build_delay_pattern_mask``): pure numpy, shared by generation and tests.

Step ``s`` of the delayed sequence holds, for codebook ``k``, frame ``t = s - 1 - delays[k]``; step 0 is
the all-special start column, and every out-of-range position is the special token.
"""

from __future__ import annotations

import numpy as np


class DelayPattern:
    def __init__(self, delays, special_token: int):
        self.delays = np.asarray(delays, dtype=np.int64)
        self.special = int(special_token)

    def num_steps(self, frames: int) -> int:
        """Sequence length for ``frames`` frames: ``frames + max_delay + 1``."""
        return frames + int(self.delays.max()) + 1

    def valid(self, frames: int) -> np.ndarray:
        """``[K, steps]`` bool: where a real (non-special) token belongs."""
        t = np.arange(self.num_steps(frames))[None, :] - 1 - self.delays[:, None]
        return (t >= 0) & (t < frames)

    def delay(self, codes: np.ndarray) -> np.ndarray:
        """``codes [B, K, T]`` -> delayed sequence ``[B, K, T + max_delay + 1]``."""
        b, k, frames = codes.shape
        seq = np.full((b, k, self.num_steps(frames)), self.special, dtype=np.int64)
        for q in range(k):
            d = int(self.delays[q])
            seq[:, q, 1 + d: 1 + d + frames] = codes[:, q]
        return seq

    def undelay(self, seq: np.ndarray, stop: int, start: int = 0) -> np.ndarray:
        """Delayed sequence -> ``codes [B, K, stop - start]`` (frames ``start`` to ``stop``)."""
        b, k, _ = seq.shape
        codes = np.empty((b, k, stop - start), dtype=np.int64)
        for q in range(k):
            d = int(self.delays[q])
            codes[:, q] = seq[:, q, 1 + d + start: 1 + d + stop]
        return codes
