"""Next-token choice by the committed sampling graphs (sampler.onnx, greedy.onnx; built by
export/sampling_graphs.py), so that on a GPU the tokens are picked where the logits are.

:class:`GraphSampler` wraps a numpy :class:`~.sampling.Sampler`: its settings and its per-row generators
(the uniform numbers the graph draws with come from them, so seeds and row drops mean what they mean on
the host path). It takes the decoder's raw CFG logits and returns the tokens and the graph's
non-finite flags (decoder logits, guided logits) in place of the host's two ``isfinite`` passes.

Attached to a capturable stepper (``attach``), it reads the decoder's logits where the decoder wrote
them: it is bound with IOBinding to the stepper's device logits buffer, and its knobs, uniform numbers,
tokens and flags live in fixed device buffers kept beside that buffer set (:class:`SamplerBuffers`), so
every bound address is fixed and a CUDA graph captured over it replays right for every window that
gets the set from the pool; it gets a graph id per (buffer set, graph), i.e. per (rows, text length,
sampler). Without a capturable stepper (older folders, the concat graph) it runs with ``run()``, whose
feeds land in new memory each call and which is therefore never captured.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np

from .capture import PREFILL
from .sampling import Sampler, row_generators

HERE = Path(__file__).resolve().parent
VOCAB = 2048  # the graphs' fixed vocabulary (export/sampling_graphs.VOCAB)
_SESSIONS: dict = {}
_LOCK = threading.Lock()


def available(codebook_size: int, use_cfg: bool) -> bool:
    """Whether the graphs fit the call: they combine CFG rows and are built for one vocabulary size."""
    return use_cfg and codebook_size == VOCAB


def _session(name: str, settings, captured: bool):
    """One session per graph, settings and capture, shared by every call; ``captured``: opened with
    ``enable_cuda_graph`` where the settings ask for CUDA graphs (only the bound path can replay)."""
    from .session import open_session

    with _LOCK:
        key = (name, repr(settings), captured)
        if key not in _SESSIONS:
            _SESSIONS[key] = open_session(HERE / f"{name}.onnx", settings, "sampler" if captured else None)
        return _SESSIONS[key]


class SamplerBuffers:
    """The sampling graph's fixed device buffers beside one decoder buffer set (stepper.StepBuffers):
    the set's logits as input, the knobs, the uniform numbers, the tokens and the flags; made once per
    set and graph, so their addresses live as long as the set's."""

    def __init__(self, ort, device: str, logits, greedy: bool, graph_id: int, session):
        rows, k = logits.shape()[0] // 2, logits.shape()[1]

        def alloc(shape, dtype):
            return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, device, 0)

        self.inputs = {"logits": logits, "guidance_scale": alloc((), np.float32)}
        if not greedy:
            self.inputs.update(temperature=alloc((), np.float64), top_k=alloc((), np.int64),
                               top_p=alloc((), np.float64), uniform=alloc((rows, k, 1), np.float64))
        self.tokens = alloc((rows, k), np.int64)
        self.nonfinite = alloc((2,), np.bool_)
        self.graph_id = graph_id
        self.session = session
        self.owner = None  # the token of the GraphSampler whose knobs are in the buffers
        self.binding = session.io_binding()
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        self.binding.bind_ortvalue_output("tokens", self.tokens)
        self.binding.bind_ortvalue_output("nonfinite", self.nonfinite)

    def bound(self) -> dict[str, int]:
        """Each bound buffer, by name -> its address (what a captured graph keeps)."""
        named = {**self.inputs, "tokens": self.tokens, "nonfinite": self.nonfinite}
        return {name: value.data_ptr() for name, value in named.items()}


class GraphSampler:
    def __init__(self, sampler: Sampler, guidance_scale: float, settings=None):
        """``settings``: how the graph is opened (its providers, and CUDA graphs for the bound path)."""
        from .session import SessionSettings

        self.sampler = sampler
        self.name = "greedy" if sampler.greedy else "sampler"
        self.settings = settings or SessionSettings()
        self.session = _session(self.name, self.settings, False)
        self.stepper = None  # a weak reference to the capturable stepper whose device logits the graph reads
        self.token = object()  # who wrote the knobs of a shared buffer set (not self: no reference cycle)
        self.buffers: SamplerBuffers | None = None  # the last call's, for tests and the GPU script
        self.feeds = {"guidance_scale": np.array(guidance_scale, dtype=np.float32)}
        if not sampler.greedy:
            self.feeds.update(temperature=np.array(sampler.temperature, dtype=np.float64),
                              top_k=np.array(min(max(sampler.top_k, 0), VOCAB), dtype=np.int64),
                              top_p=np.array(max(sampler.top_p, 0.0), dtype=np.float64))

    def keep_rows(self, index: np.ndarray) -> None:
        self.sampler.keep_rows(index)

    def attach(self, stepper) -> None:
        """Read the logits from ``stepper``'s device buffer from now on, where it has one (a window's
        capturable stepper); otherwise from the host logits each call is given."""
        # weak: the stepper hands its buffer set back to the pool when its window ends
        self.stepper = weakref.ref(stepper) if getattr(stepper, "buffer_set", None) is not None else None

    def _uniform(self, b: int, k: int) -> np.ndarray:
        s = self.sampler
        if s.generators is None:
            s.generators = row_generators(s.seed, b)
        if len(s.generators) != b:
            raise ValueError(f"this sampler draws for {len(s.generators)} rows, got logits for {b}")
        return np.concatenate([g.random((k, 1)) for g in s.generators]).reshape(b, k, 1)

    def __call__(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw decoder logits ``[2B, K, V]`` (conditional rows first) -> tokens ``[B, K]`` int64 and
        ``nonfinite`` [2] bool (decoder logits, guided logits). Attached, ``logits`` is the host copy of
        the device buffer the graph reads, and only its shape is used."""
        b, k = logits.shape[0] // 2, logits.shape[1]
        if self.stepper is not None:
            return self._bound(b, k)
        feeds = {"logits": logits, **self.feeds}
        if not self.sampler.greedy:
            feeds["uniform"] = self._uniform(b, k)
        tokens, nonfinite = self.session.run(["tokens", "nonfinite"], feeds)
        return tokens, nonfinite

    def _bound(self, b: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        step = self.stepper()
        buffer_set, graph_ids = step.buffer_set, step.graph_ids
        bufs = buffer_set.extras.get(self.name)  # a row drop moves the stepper to another set
        if bufs is None:
            import onnxruntime as ort

            graph_id = PREFILL if graph_ids is None or buffer_set.key is None else \
                graph_ids.id_for((buffer_set.key, self.name))
            session = _session(self.name, self.settings, graph_ids is not None)
            bufs = buffer_set.extras[self.name] = SamplerBuffers(ort, step.device, buffer_set.logits,
                                                                 self.sampler.greedy, graph_id, session)
        if bufs.owner is not self.token:  # this call's knobs, written in place (the graph keeps the addresses)
            for name, value in self.feeds.items():
                bufs.inputs[name].update_inplace(value)
            bufs.owner = self.token
        if not self.sampler.greedy:
            bufs.inputs["uniform"].update_inplace(self._uniform(b, k))
        self.buffers = bufs
        if graph_ids is None:
            bufs.session.run_with_iobinding(bufs.binding)
        else:
            with graph_ids.lock:
                bufs.session.run_with_iobinding(bufs.binding, graph_ids.run_options(bufs.graph_id))
        return bufs.tokens.numpy(), bufs.nonfinite.numpy()
