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
  fixed buffers (folders whose decoder takes the past length: manifest ``step_inputs`` "past_length").
* :class:`CapturableStepper` - the static graph with step inputs (``position_ids``, ``seqlens_k``,
  ``total_sequence_length``): what a CUDA graph can capture. Every buffer a single-column step binds
  is allocated once on the session's device and updated in place, so its address never changes; the
  first call (prefix and start columns) has a binding of its own, as it runs uncaptured.

On the CPU, a melody model's first call may run only the conditional rows (and one CFG null row) and
copy the other null rows' cache and logits from the model's stored entry (:mod:`.null_prefill`).

Both can drop rows between steps (``keep_rows``: a server's client left): every per-row tensor is cut
to the rows that stay and the loop goes on with a smaller batch. The static stepper copies its cache
rows into new, smaller buffers and binds everything again (once per drop, not per step).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

from . import roles
from .capture import PREFILL
from .null_prefill import NullPrefillCache, Reuse


@dataclass(frozen=True)
class DecoderIO:
    """The decoder's tensor names, resolved from the manifest's roles once per model."""

    ids: str
    logits: str
    past: list[str]
    present: list[str]
    past_length: str | None  # older static folders only
    step_inputs: list[str] | None = None  # static folders with step_inputs "positions": roles.STEP_INPUTS' names

    @classmethod
    def of(cls, graph, num_layers: int, kv_cache: str, step_inputs: str = "past_length") -> "DecoderIO":
        old = kv_cache == "static" and step_inputs == "past_length"
        return cls(graph.name(roles.TOKEN_IDS), graph.name(roles.LOGITS), graph.names(roles.layers("past", num_layers)),
                   graph.names(roles.layers("present", num_layers)), graph.name(roles.PAST_LENGTH) if old else None,
                   graph.names(roles.STEP_INPUTS) if kv_cache == "static" and not old else None)


@dataclass(frozen=True)
class Conditioning:
    """What the decoder needs besides token ids and the cache, for one window: ``first`` on the first
    call (melody models: the prefix), ``steps`` on every later call (the empty prefix, or the
    cross-attention keys/values and mask, constant over the window); ``prefix_length`` positions
    the first call adds before its token columns; the last ``null_rows`` rows are CFG null rows whose
    first call may be reused (null_prefill.py; 0: none)."""

    first: dict[str, np.ndarray]
    steps: dict[str, np.ndarray]
    prefix_length: int
    null_rows: int = 0

    def rows(self, index: np.ndarray) -> "Conditioning":
        """The conditioning of decoder rows ``index`` (every tensor here is per row on axis 0)."""
        first = {name: value[index] for name, value in self.first.items()}
        steps = first if self.steps is self.first else {name: value[index] for name, value in self.steps.items()}
        null_rows = 0
        if self.null_rows:  # the null rows that stay (they stay last: the loop keeps rows in order)
            total = next(iter(self.first.values())).shape[0]
            null_rows = int((np.asarray(index) >= total - self.null_rows).sum())
        return Conditioning(first, steps, self.prefix_length, null_rows)


class ConcatStepper:
    def __init__(self, session, io: DecoderIO, conditioning: Conditioning, rows: int, num_heads: int,
                 head_dim: int, dtype=np.float32, null_prefill: NullPrefillCache | None = None):
        self.session = session
        self.io = io
        self._outputs = [io.logits, *io.present]
        self._conditioning = conditioning
        self._feeds = conditioning.first
        self._null_prefill = null_prefill
        empty = np.zeros((rows, num_heads, 0, head_dim), dtype=dtype)
        self._past = {name: empty for name in io.past}

    def run(self, ids: np.ndarray, new_positions: int) -> np.ndarray:
        c = self._conditioning
        reuse = None
        if self._null_prefill is not None and self._feeds is c.first and self._past[self.io.past[0]].shape[2] == 0:
            reuse = self._null_prefill.plan(ids, c.first, c.null_rows)
        if reuse is None:
            logits, *presents = self.session.run(self._outputs, {self.io.ids: ids, **self._feeds, **self._past})
        else:  # the first rows only; the other null rows come from the model's entry
            n, rows = reuse.rows, ids.shape[0]
            feeds = {name: value[:n] for name, value in {self.io.ids: ids, **self._feeds, **self._past}.items()}
            ran = self.session.run(self._outputs, feeds)
            logits, *presents = (np.empty((rows, *value.shape[1:]), dtype=value.dtype) for value in ran)
            for full, value in zip([logits, *presents], ran):
                full[:n] = value
            reuse.finish(presents, logits, new_positions)
        self._feeds = c.steps
        self._past = dict(zip(self.io.past, presents))
        return logits

    def keep_rows(self, index: np.ndarray) -> None:
        """Go on with decoder rows ``index`` only."""
        first = self._feeds is self._conditioning.first
        self._conditioning = self._conditioning.rows(index)
        self._feeds = self._conditioning.first if first else self._conditioning.steps
        self._past = {name: value[index] for name, value in self._past.items()}


class _BoundWindow:
    """What both IOBinding steppers hold for a window: the session, its names, the cache's fill."""

    def __init__(self, session, io: DecoderIO, conditioning: Conditioning, max_length: int, device: str, dtype,
                 null_prefill: NullPrefillCache | None):
        import onnxruntime as ort

        self.length = 0
        self.max_length = max_length
        self._ort = ort
        self._device = device
        self._dtype = dtype
        self._session = session
        self._io = io
        self._conditioning = conditioning
        self._null_prefill = null_prefill  # host caches only (the CPU): null_prefill.py

    def _plan_first_call(self, ids: np.ndarray) -> Reuse | None:
        c = self._conditioning
        if self._null_prefill is None or self.length != 0:
            return None
        return self._null_prefill.plan(ids, c.first, c.null_rows)

    def _first_call_rows(self, reuse: Reuse, ids: np.ndarray, caches, logits, inputs: dict[str, np.ndarray],
                         filled: int, run) -> None:
        """The first call on rows ``[0, reuse.rows)`` only, then the other null rows from ``reuse``. Rows lead
        every buffer, so those rows are each buffer's first bytes: bound by address with a smaller shape.
        ``inputs``: the call's step inputs, for those rows."""
        n = reuse.rows
        binding = self._session.io_binding()
        for past, present, buf in zip(self._io.past, self._io.present, caches):
            shape = [n, *buf.shape()[1:]]
            binding.bind_input(past, self._device, 0, self._dtype, shape, buf.data_ptr())
            binding.bind_output(present, self._device, 0, self._dtype, shape, buf.data_ptr())
        binding.bind_output(self._io.logits, self._device, 0, np.float32, [n, *logits.shape()[1:]], logits.data_ptr())
        rows = {self._io.ids: ids, **self._conditioning.first}
        held = [np.ascontiguousarray(value[:n]) for value in rows.values()] + list(inputs.values())
        for name, value in zip([*rows, *inputs], held):
            binding.bind_cpu_input(name, value)
        run(binding)
        reuse.finish([buf.numpy() for buf in caches], logits.numpy(), filled)  # CPU OrtValues: views, written


class StaticStepper(_BoundWindow):
    def __init__(self, session, io: DecoderIO, conditioning: Conditioning, rows: int, num_heads: int,
                 head_dim: int, max_length: int, logits_shape: tuple[int, ...], device: str = "cpu",
                 dtype=np.float32, null_prefill: NullPrefillCache | None = None):
        super().__init__(session, io, conditioning, max_length, device, dtype, null_prefill)
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
        reuse = self._plan_first_call(ids)
        if reuse is not None:
            self._first_call_rows(reuse, ids, self._buffers, self._logits,
                                  {self._io.past_length: np.array(0, dtype=np.int64)}, new_positions,
                                  self._session.run_with_iobinding)
            self.length += new_positions
            return self._logits.numpy().copy()
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


class StepBuffers:
    """Everything a single-column step binds, allocated on the session's device: the KV cache (zeroed
    once on a GPU, see below), token ids ``[rows, K, 1]``, positions, ``seqlens_k``, the logits, the
    window's constant conditioning (copied in at each window's start) and the host-side total. A set
    keeps its addresses for life, so a CUDA graph captured over it replays for every window that
    gets it from the pool (``graph_id``, capture.py)."""

    def __init__(self, ort, device: str, cache_shape: tuple[int, ...], n_caches: int, dtype,
                 logits_shape: tuple[int, ...], steps: dict[str, np.ndarray], graph_id: int, key=None):
        def alloc(shape, dt):
            return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dt, device, 0)

        rows = cache_shape[0]
        self.cache_shape = cache_shape
        self.caches = [alloc(cache_shape, dtype) for _ in range(n_caches)]
        # Zeroed once, at allocation, on a GPU: device memory comes uninitialized, and what CUDA's
        # GroupQueryAttention reads past ``seqlens_k`` depends on the kernel onnxruntime picks (flash and
        # memory-efficient predicate their loads and mask the scores; a path that multiplied the masked
        # probabilities, 0, by the whole V buffer would turn garbage NaN/Inf into NaN), while the
        # single-column steps pass the buffer length as total. Zeros keep every column finite for the
        # set's life (later windows leave finite values behind). The CPU kernel reads only the first
        # seqlens_k + 1 columns of each row, so the CPU skips the copy (7 GB for melody fp32 batch 8).
        if device != "cpu":
            zeros = np.zeros(cache_shape, dtype=dtype)
            for cache in self.caches:
                cache.update_inplace(zeros)
        self.ids = alloc((rows, logits_shape[1], 1), np.int64)
        self.positions = alloc((rows, 1), np.int64)
        self.seqlens = alloc((rows,), np.int32)
        self.total = ort.OrtValue.ortvalue_from_numpy(np.array(cache_shape[2], dtype=np.int32))  # a host input
        self.logits = alloc(logits_shape, np.float32)
        self.steps = {name: alloc(value.shape, value.dtype) for name, value in steps.items()}
        self.graph_id = graph_id
        self.key = key  # the pool's (conditioning_key, slot): what graph ids of this set are given for
        self.extras: dict = {}  # buffers other graphs bind beside this set's (device_sampler.SamplerBuffers)


def conditioning_key(rows: int, conditioning: Conditioning) -> tuple:
    """What a buffer set (and its captured graph) is specific to: the rows and the conditioning's shapes."""
    return rows, conditioning.prefix_length, tuple((name, value.shape, str(value.dtype))
                                                   for name, value in sorted(conditioning.steps.items()))


class BufferPool:
    """Step buffer sets with room for the model's longest window (``max_steps`` after the prefix), kept
    per :func:`conditioning_key` and lent to one window at a time: a new call with the same rows and text
    length reuses a set, and its captured graph. Used only with CUDA graphs (a set sized for the longest
    call costs memory a CPU run need not spend)."""

    def __init__(self, ort, device: str, max_steps: int, graph_ids):
        self.ort, self.device, self.max_steps, self.graph_ids = ort, device, max_steps, graph_ids
        self._free: dict[tuple, list[StepBuffers]] = {}
        self._made: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def take(self, conditioning: Conditioning, cache_shape, n_caches, dtype, logits_shape) -> StepBuffers:
        key = conditioning_key(cache_shape[0], conditioning)
        with self._lock:
            if self._free.get(key):
                return self._free[key].pop()
            slot = self._made[key] = self._made.get(key, 0) + 1
        graph_id = self.graph_ids.id_for((key, slot)) if self.graph_ids is not None else -1
        return StepBuffers(self.ort, self.device, cache_shape, n_caches, dtype, logits_shape, conditioning.steps,
                           graph_id, (key, slot))

    def give_back(self, conditioning: Conditioning, buffers: StepBuffers) -> None:
        with self._lock:
            self._free.setdefault(conditioning_key(buffers.cache_shape[0], conditioning), []).append(buffers)


class CapturableStepper(_BoundWindow):
    """The static cache with the step's values fed as fixed device buffers (see the module docstring).

    ``total_sequence_length`` is GroupQueryAttention's host input; a replayed CUDA graph keeps the value
    it had at capture, so single-column steps hold it at the buffer length and the per-row ``seqlens_k``
    carries the real length. The first call keeps the real total (with several new columns and a total
    above them GroupQueryAttention takes a path that needs batch 1) and never runs captured.
    ``pool``: lend the buffers from a :class:`BufferPool` (CUDA graphs) instead of allocating them for
    this window; ``graph_ids``: a :class:`~.capture.GraphIds` whose lock and run options drive the session.
    """

    def __init__(self, session, io: DecoderIO, conditioning: Conditioning, rows: int, num_heads: int,
                 head_dim: int, max_length: int, logits_shape: tuple[int, ...], device: str = "cpu",
                 dtype=np.float32, pool: BufferPool | None = None, graph_ids=None,
                 null_prefill: NullPrefillCache | None = None):
        super().__init__(session, io, conditioning,
                         max_length if pool is None else conditioning.prefix_length + pool.max_steps, device, dtype,
                         null_prefill)
        self._pool = pool
        self._graph_ids = graph_ids
        self._buffers_of(rows, head_dim, num_heads, logits_shape)
        self._bind_window(None)

    def _buffers_of(self, rows, head_dim, num_heads, logits_shape) -> None:
        shape = (rows, num_heads, self.max_length, head_dim)
        c, n = self._conditioning, len(self._io.past)
        if self._pool is None:
            self._set = StepBuffers(self._ort, self._device, shape, n, self._dtype, logits_shape, c.steps, -1)
        else:
            self._set = self._pool.take(c, shape, n, self._dtype, logits_shape)
            weakref.finalize(self, self._pool.give_back, c, self._set)

    def _bind_window(self, caches: list[np.ndarray] | None) -> None:
        """Bind the window's buffers; ``caches``: the rows that stay after a drop, copied in."""
        io, b = self._io, self._set
        for buf, cache in zip(b.caches, caches or ()):
            buf.update_inplace(cache)
        self._held = []  # the first call's conditioning: kept alive as long as it is bound
        for name, value in self._conditioning.steps.items():
            b.steps[name].update_inplace(np.ascontiguousarray(value))
        self._prefill = self._new_binding()
        for name, value in self._conditioning.first.items():
            self._held.append(self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self._device, 0))
            self._prefill.bind_ortvalue_input(name, self._held[-1])
        self._step = self._new_binding()
        for name, value in b.steps.items():
            self._step.bind_ortvalue_input(name, value)
        for name, value in zip([io.ids, *io.step_inputs], (b.ids, b.positions, b.seqlens, b.total)):
            self._step.bind_ortvalue_input(name, value)

    def _new_binding(self):
        binding = self._session.io_binding()
        for past, present, buf in zip(self._io.past, self._io.present, self._set.caches):
            binding.bind_ortvalue_input(past, buf)
            binding.bind_ortvalue_output(present, buf)
        binding.bind_ortvalue_output(self._io.logits, self._set.logits)
        return binding

    @property
    def buffer_set(self) -> StepBuffers:
        """The window's buffers (a row drop moves to another set): the sampling graph binds its logits."""
        return self._set

    @property
    def graph_ids(self):
        return self._graph_ids

    @property
    def device(self) -> str:
        return self._device

    def bound(self) -> dict[str, int]:
        """Each buffer a single-column step binds, by name -> its address (what a captured graph keeps)."""
        io, b = self._io, self._set
        named = {io.ids: b.ids, io.logits: b.logits, **dict(zip(io.step_inputs, (b.positions, b.seqlens, b.total))),
                 **dict(zip(io.past, b.caches)), **b.steps}
        return {name: value.data_ptr() for name, value in named.items()}

    def _run(self, binding, graph_id: int) -> None:
        if self._graph_ids is None:
            self._session.run_with_iobinding(binding)
            return
        with self._graph_ids.lock:
            self._session.run_with_iobinding(binding, self._graph_ids.run_options(graph_id))

    def run(self, ids: np.ndarray, new_positions: int) -> np.ndarray:
        if self.length + new_positions > self.max_length:
            raise RuntimeError(f"static KV cache overflow: {self.length} + {new_positions} > {self.max_length}")
        rows, filled, b = ids.shape[0], self.length + new_positions, self._set
        if self.length == 0 or ids.shape[2] != 1:  # the first call: the prefix, the start column(s), any prompt
            reuse = self._plan_first_call(ids)
            run_rows = rows if reuse is None else reuse.rows
            positions, seqlens, total = self._io.step_inputs
            inputs = {positions: np.broadcast_to(np.arange(self.length, filled, dtype=np.int64),
                                                 (run_rows, new_positions)).copy(),
                      seqlens: np.full(run_rows, filled - 1, dtype=np.int32), total: np.array(filled, dtype=np.int32)}
            if reuse is None:
                for name, value in {self._io.ids: np.ascontiguousarray(ids), **inputs}.items():
                    self._prefill.bind_cpu_input(name, value)
                self._run(self._prefill, PREFILL)
            else:
                self._first_call_rows(reuse, ids, b.caches, b.logits, inputs, filled,
                                      lambda binding: self._run(binding, PREFILL))
        else:
            b.ids.update_inplace(np.ascontiguousarray(ids))
            b.positions.update_inplace(np.full((rows, 1), self.length, dtype=np.int64))
            b.seqlens.update_inplace(np.full(rows, self.length, dtype=np.int32))
            self._run(self._step, b.graph_id)
        self.length = filled
        return b.logits.numpy().copy()  # the buffer is rewritten by the next step

    def keep_rows(self, index: np.ndarray) -> None:
        """Go on with decoder rows ``index`` only: their cache rows move to a smaller buffer set."""
        caches = [np.ascontiguousarray(buf.numpy()[index]) for buf in self._set.caches]
        shape, logits = self._set.cache_shape, self._set.logits.shape()
        self._conditioning = self._conditioning.rows(index)
        self._buffers_of(len(index), shape[3], shape[1], (len(index), *logits[1:]))
        self._bind_window(caches)
