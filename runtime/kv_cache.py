"""Past keys/values behind a small interface, so a static in-place cache or IOBinding can replace it.

The loop only asks a cache for its feeds and hands it each step's outputs.
"""

from __future__ import annotations

import numpy as np


class ConcatKVCache:
    """The portable cache: the graph concatenates past and new keys/values and returns the result,
    which becomes the next past. Simple and exact; the copy grows with the sequence."""

    def __init__(self, input_names: list[str], output_names: list[str], batch: int, num_heads: int,
                 head_dim: int, dtype=np.float32):
        self.input_names = input_names
        self.output_names = output_names
        empty = np.zeros((batch, num_heads, 0, head_dim), dtype=dtype)
        self._past = {name: empty for name in input_names}

    @property
    def length(self) -> int:
        return next(iter(self._past.values())).shape[2]

    def feeds(self) -> dict[str, np.ndarray]:
        return self._past

    def update(self, presents: list[np.ndarray]) -> None:
        self._past = dict(zip(self.input_names, presents))
