"""Next-token choice by the committed sampling graphs (sampler.onnx, greedy.onnx; built by
export/sampling_graphs.py), so that on a GPU the tokens are picked where the logits are.

:class:`GraphSampler` wraps a numpy :class:`~.sampling.Sampler`: its settings and its per-row generators
(the uniform numbers the graph draws with come from them, so seeds and row drops mean what they mean on
the host path). It takes the decoder's raw CFG logits and returns the tokens and the graph's
non-finite flags (decoder logits, guided logits) in place of the host's two ``isfinite`` passes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .sampling import Sampler, row_generators

HERE = Path(__file__).resolve().parent
VOCAB = 2048  # the graphs' fixed vocabulary (export/sampling_graphs.VOCAB)
_SESSIONS: dict = {}
_LOCK = threading.Lock()


def available(codebook_size: int, use_cfg: bool) -> bool:
    """Whether the graphs fit the call: they combine CFG rows and are built for one vocabulary size."""
    return use_cfg and codebook_size == VOCAB


class GraphSampler:
    def __init__(self, sampler: Sampler, guidance_scale: float, settings=None):
        """``settings``: how the graph is opened (its providers; it is not captured, see below)."""
        from .session import SessionSettings, open_session

        self.sampler = sampler
        name = "greedy" if sampler.greedy else "sampler"
        settings = settings or SessionSettings()
        with _LOCK:  # one session per graph and settings, shared by every call (run() is thread-safe)
            key = (name, repr(settings))
            if key not in _SESSIONS:
                # opened as a graph that is never captured: run() copies its feeds to new memory on every
                # call, which a replay would not see; capturing it needs it bound to the decoder's logits
                # buffer and fixed input buffers (IOBinding), not done yet
                _SESSIONS[key] = open_session(HERE / f"{name}.onnx", settings, None)
            self.session = _SESSIONS[key]
        self.feeds = {"guidance_scale": np.array(guidance_scale, dtype=np.float32)}
        if not sampler.greedy:
            self.feeds.update(temperature=np.array(sampler.temperature, dtype=np.float64),
                              top_k=np.array(min(max(sampler.top_k, 0), VOCAB), dtype=np.int64),
                              top_p=np.array(max(sampler.top_p, 0.0), dtype=np.float64))

    def keep_rows(self, index: np.ndarray) -> None:
        self.sampler.keep_rows(index)

    def __call__(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw decoder logits ``[2B, K, V]`` (conditional rows first) -> tokens ``[B, K]`` int64 and
        ``nonfinite`` [2] bool (decoder logits, guided logits)."""
        feeds = {"logits": logits, **self.feeds}
        if not self.sampler.greedy:
            b, k = logits.shape[0] // 2, logits.shape[1]
            s = self.sampler
            if s.generators is None:
                s.generators = row_generators(s.seed, b)
            if len(s.generators) != b:
                raise ValueError(f"this sampler draws for {len(s.generators)} rows, got logits for {b}")
            feeds["uniform"] = np.concatenate([g.random((k, 1)) for g in s.generators]).reshape(b, k, 1)
        tokens, nonfinite = self.session.run(["tokens", "nonfinite"], feeds)
        return tokens, nonfinite
