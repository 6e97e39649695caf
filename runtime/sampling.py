"""Next-token choice: CFG combine (audiocraft ``LMModel._sample_next_token``, transformers
``ClassifierFreeGuidanceLogitsProcessor``), then greedy or temperature + top-k / top-p sampling.

audiocraft semantics: top-p, when > 0, *replaces* top-k; top-k keeps ties with the k-th probability.
Draws come from one seeded ``numpy.random.Generator`` per batch row, so a row's tokens depend on its
own seed and logits only, never on its batch mates (a server batches strangers' requests and must give
each the audio its seed promises). Same seed, same tokens on the same provider. Bit-identical draws
with torch are impossible (torch.multinomial's internals), which is why parity is shown with greedy
decoding.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

Seed = Union[int, None, Sequence[Optional[int]]]


def row_generators(seed: Seed, rows: int) -> list[np.random.Generator]:
    """One generator per row. A list gives each row its own seed (None: fresh OS entropy). An int ``s``
    gives row ``r`` the entropy ``[s, r]``; numpy's SeedSequence pads entropy with zeros, so row 0 draws
    exactly what ``default_rng(s)`` draws and a single prompt with seed ``s`` keeps the tokens it had
    before seeds were per row."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != rows:
            raise ValueError(f"{len(seed)} seeds for {rows} rows")
        return [np.random.default_rng(s) for s in seed]
    if seed is None:
        return [np.random.default_rng() for _ in range(rows)]
    return [np.random.default_rng([seed, r]) for r in range(rows)]


def classifier_free_guidance(logits: np.ndarray, scale: float) -> np.ndarray:
    """``[2B, K, V]`` (conditional rows first) -> ``uncond + (cond - uncond) * scale``, ``[B, K, V]``."""
    cond, uncond = np.split(logits, 2, axis=0)
    return uncond + (cond - uncond) * np.float32(scale)


class Sampler:
    def __init__(self, greedy: bool, temperature: float = 1.0, top_k: int = 250, top_p: float = 0.0,
                 seed: Seed = None, rows: int | None = None):
        """``seed``: an int, None, or one int (or None) per row; the generators are made now for ``rows``
        rows, or on the first call, when the number of rows is known."""
        self.greedy = greedy
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.seed = seed
        self.generators: list[np.random.Generator] | None = None if rows is None else row_generators(seed, rows)

    def keep_rows(self, index: np.ndarray) -> None:
        """Go on drawing for rows ``index`` only; each keeps its own generator (and so its draws)."""
        if self.generators is None:
            raise RuntimeError("rows can be dropped once the sampler knows its rows (give rows=)")
        self.generators = [self.generators[i] for i in index]

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
        if self.generators is None:
            self.generators = row_generators(self.seed, b)
        if len(self.generators) != b:
            raise ValueError(f"this sampler draws for {len(self.generators)} rows, got logits for {b}")
        u = np.concatenate([g.random((k, 1)) for g in self.generators]) * cdf[:, -1:]
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
