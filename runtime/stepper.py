"""One decoder call per step behind one small interface, so the loop never knows which graph it drives.

A stepper is made per generation window, from the decoder's tensor names and the window's
:class:`Conditioning`. ``stepper.run(ids, new_positions)`` runs one decoder call on the new token
columns and returns the last position's logits; the loop says how many positions the call adds to
the cache (the first call adds the prefix too). Two implementations, matching the two decoder graphs
(manifest ``kv_cache``):

* :class:`ConcatStepper` - the portable graph concatenates past and new keys/values and returns the
  result, which becomes the next past. Exact and simple; every step copies the whole past.
* :class:`StaticStepper` - one buffer per layer, sized for the whole window once and bound with
  IOBinding as both the past input and the present output, so GroupQueryAttention writes each new
  column in place. Everything constant for the window (cache buffers, cross-attention keys/values,
  masks, the logits buffer) is bound once; a step writes its token ids and the past length into
  fixed buffers. This is where a device-resident or CUDA-graph step plugs in.

Both can drop rows between steps (``keep_rows``: a server's client left): every per-row tensor is cut
to the rows that stay and the loop goes on with a smaller batch. The static stepper copies its cache
rows into new, smaller buffers and binds everything again (once per drop, not per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import roles


@dataclass(frozen=True)
class DecoderIO:
    """The decoder's tensor names, resolved from the manifest's roles once per model."""

    ids: str
    logits: str
    past: list[str]
    present: list[str]
    past_length: str | None  # static cache only

    @classmethod
    def of(cls, graph, num_layers: int, kv_cache: str) -> "DecoderIO":
        return cls(graph.name(roles.TOKEN_IDS), graph.name(roles.LOGITS), graph.names(roles.layers("past", num_layers)),
                   graph.names(roles.layers("present", num_layers)),
                   graph.name(roles.PAST_LENGTH) if kv_cache == "static" else None)


@dataclass(frozen=True)
class Conditioning:
    """What the decoder needs besides token ids and the cache, for one window: ``first`` on the first
    call (melody models: the prefix), ``steps`` on every later call (the empty prefix, or the
    cross-attention keys/values and mask, constant over the window); ``prefix_length`` positions
    the first call adds before its token columns."""

    first: dict[str, np.ndarray]
    steps: dict[str, np.ndarray]
    prefix_length: int

    def rows(self, index: np.ndarray) -> "Conditioning":
        """The conditioning of decoder rows ``index`` (every tensor here is per row on axis 0)."""
        first = {name: value[index] for name, value in self.first.items()}
        steps = first if self.steps is self.first else {name: value[index] for name, value in self.steps.items()}
        return Conditioning(first, steps, self.prefix_length)


class ConcatStepper:
    def __init__(self, session, io: DecoderIO, conditioning: Conditioning, rows: int, num_heads: int,
                 head_dim: int, dtype=np.float32):
        self.session = session
        self.io = io
        self._outputs = [io.logits, *io.present]
        self._conditioning = conditioning
        self._feeds = conditioning.first
        empty = np.zeros((rows, num_heads, 0, head_dim), dtype=dtype)
        self._past = {name: empty for name in io.past}

    def run(self, ids: np.ndarray, new_positions: int) -> np.ndarray:
        logits, *presents = self.session.run(self._outputs, {self.io.ids: ids, **self._feeds, **self._past})
        self._feeds = self._conditioning.steps
        self._past = dict(zip(self.io.past, presents))
        return logits

    def keep_rows(self, index: np.ndarray) -> None:
        """Go on with decoder rows ``index`` only."""
        first = self._feeds is self._conditioning.first
        self._conditioning = self._conditioning.rows(index)
        self._feeds = self._conditioning.first if first else self._conditioning.steps
        self._past = {name: value[index] for name, value in self._past.items()}


class StaticStepper:
    def __init__(self, session, io: DecoderIO, conditioning: Conditioning, rows: int, num_heads: int,
                 head_dim: int, max_length: int, logits_shape: tuple[int, ...], device: str = "cpu",
                 dtype=np.float32):
        import onnxruntime as ort

        self.length = 0
        self.max_length = max_length
        self._ort = ort
        self._device = device
        self._session = session
        self._io = io
        self._conditioning = conditioning
        shape = (rows, num_heads, max_length, head_dim)
        self._bind_window([np.zeros(shape, dtype=dtype) for _ in io.past], logits_shape)

    def _bind_window(self, caches: list[np.ndarray], logits_shape: tuple[int, ...]) -> None:
        """Bind everything constant for the window: at its start, and again after rows were dropped."""
        ort, device = self._ort, self._device
        self._binding = binding = self._session.io_binding()
        self._buffers = [ort.OrtValue.ortvalue_from_numpy(cache, device, 0) for cache in caches]
        for past, present, buf in zip(self._io.past, self._io.present, self._buffers):
            binding.bind_ortvalue_input(past, buf)
            binding.bind_ortvalue_output(present, buf)
        self._past_length = ort.OrtValue.ortvalue_from_numpy(np.zeros((), dtype=np.int64))
        binding.bind_ortvalue_input(self._io.past_length, self._past_length)
        self._logits = ort.OrtValue.ortvalue_from_numpy(np.zeros(logits_shape, dtype=np.float32))
        binding.bind_ortvalue_output(self._io.logits, self._logits)
        self._held = []  # OrtValues over numpy memory: kept alive as long as they are bound
        c = self._conditioning
        self._bind(c.first if self.length == 0 else c.steps)
        # the later calls' feeds, bound with the one-column ids buffer on the first single-column call
        self._step_feeds = None if self.length > 0 or c.steps is c.first else c.steps
        self._step_ids = None

    def _bind(self, feeds: dict[str, np.ndarray]) -> None:
        for name, value in feeds.items():
            self._held.append(self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self._device, 0))
            self._binding.bind_ortvalue_input(name, self._held[-1])

    def run(self, ids: np.ndarray, new_positions: int) -> np.ndarray:
        if self.length + new_positions > self.max_length:
            raise RuntimeError(f"static KV cache overflow: {self.length} + {new_positions} > {self.max_length}")
        if self.length == 0 or ids.shape[2] != 1:  # the first call: the start column(s) and any prompt
            self._binding.bind_cpu_input(self._io.ids, np.ascontiguousarray(ids))
        elif self._step_ids is None:
            if self._step_feeds is not None:
                self._bind(self._step_feeds)
            self._step_ids = self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(ids), self._device, 0)
            self._binding.bind_ortvalue_input(self._io.ids, self._step_ids)
        else:
            self._step_ids.update_inplace(np.ascontiguousarray(ids))
        self._past_length.update_inplace(np.array(self.length, dtype=np.int64))
        self._session.run_with_iobinding(self._binding)
        self.length += new_positions
        return self._logits.numpy().copy()  # the buffer is rewritten by the next step

    def keep_rows(self, index: np.ndarray) -> None:
        """Go on with decoder rows ``index`` only: their cache rows move to new, smaller buffers."""
        caches = [np.ascontiguousarray(buf.numpy()[index]) for buf in self._buffers]
        self._conditioning = self._conditioning.rows(index)
        self._bind_window(caches, (len(index), *self._logits.shape()[1:]))
