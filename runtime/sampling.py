"""Next-token choice: CFG combine (audiocraft ``LMModel._sample_next_token``, transformers
``ClassifierFreeGuidanceLogitsProcessor``), then greedy or temperature + top-k / top-p sampling.

audiocraft semantics: top-p, when > 0, *replaces* top-k; top-k keeps ties with the k-th probability.
Draws come from a seeded ``numpy.random.Generator``: same seed, same tokens on the same provider.
Bit-identical draws with torch are impossible (torch.multinomial's internals), which is why parity is
shown with greedy decoding.
"""

from __future__ import annotations

import numpy as np


def classifier_free_guidance(logits: np.ndarray, scale: float) -> np.ndarray:
    """``[2B, K, V]`` (conditional rows first) -> ``uncond + (cond - uncond) * scale``, ``[B, K, V]``."""
    cond, uncond = np.split(logits, 2, axis=0)
    return uncond + (cond - uncond) * np.float32(scale)


class Sampler:
    def __init__(self, greedy: bool, temperature: float = 1.0, top_k: int = 250, top_p: float = 0.0,
                 seed: int | None = None):
        self.greedy = greedy
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """``[B, K, V]`` logits -> ``[B, K]`` int64 tokens, each (b, k) an independent draw."""
        if self.greedy:
            return np.argmax(logits, axis=-1).astype(np.int64)
        b, k, v = logits.shape
        x = logits.reshape(b * k, v).astype(np.float64) / self.temperature
        x -= x.max(axis=-1, keepdims=True)
        probs = np.exp(x)
        probs /= probs.sum(axis=-1, keepdims=True)
        if self.top_p > 0:
            probs = self._top_p(probs)
        elif self.top_k > 0:
            kth = -np.partition(-probs, min(self.top_k, v) - 1, axis=-1)[:, min(self.top_k, v) - 1: min(self.top_k, v)]
            probs = np.where(probs >= kth, probs, 0.0)
        cdf = np.cumsum(probs, axis=-1)
        u = self.rng.random((b * k, 1)) * cdf[:, -1:]
        tokens = np.minimum((cdf <= u).sum(axis=-1), v - 1)
        return tokens.reshape(b, k).astype(np.int64)

    def _top_p(self, probs: np.ndarray) -> np.ndarray:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        drop = np.cumsum(sorted_p, axis=-1) - sorted_p > self.top_p  # audiocraft's sample_top_p
        sorted_p[drop] = 0.0
        out = np.zeros_like(probs)
        np.put_along_axis(out, order, sorted_p, axis=-1)
        return out
