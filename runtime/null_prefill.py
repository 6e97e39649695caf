"""The CFG null rows' first decoder call, run once per model and prefix length and then reused.

A melody model's first decoder call (the prefill) runs the whole prefix - 235 chroma frames, the text
tokens, the start column - for 2B rows: B conditional rows and their B CFG null rows. The null rows'
inputs are the same for every row and every call with the same prefix length (conditioning.py: the
bin-0 chroma, exactly-zero text states, the start ids), so their cache after the first call and their
first logits depend only on the model and those inputs. With a stored entry the first call runs the B
conditional rows only; without one it runs them and ONE null row, stores that row and copies it into
the other null rows (B - 1 rows saved at once).

Exact, not approximate: the decoder computes each row independently of the others (per-row matmuls,
norms and attention), so a null row's values do not depend on the batch it ran in; the tests compare
tokens and every step's logits with reuse on and off (bitwise equal on this CPU). An entry is found by
the null row's exact input values, never assumed (-0.0 and 0.0 count as one, see :func:`_canonical`).
Null rows that differ from one another, a first call with more than the start column (continuation
prompts, and long-form windows after the first, which continue from the last one's tail: their columns
differ per row and per call) and text-only models (a one-column null prefill) run as before.

Where: on the CPU only (native_layout.new_stepper), where every stepper's cache is host memory that the
copy writes; a GPU's static cache lives in device memory, so a GPU runs every row as before.
``MUSICGEN_ONNX_NULL_PREFILL=off`` turns it off (the tests compare both ways).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

SWITCH = "MUSICGEN_ONNX_NULL_PREFILL"
MAX_ENTRIES = 2  # prompts of two token lengths (two prefix lengths) in turn stay hits
MAX_BYTES = 400 * 2**20  # melody 1.5B with an fp32 cache: ~150 MB an entry (48 layers x 2 x 24 x 64 x ~250 x 4)


def enabled() -> bool:
    return os.environ.get(SWITCH, "on").strip().lower() not in ("off", "0", "no", "false")


def _canonical(value: np.ndarray) -> np.ndarray:
    """``value`` with -0.0 turned into 0.0 (float + 0.0 does just that): a null row's masked text states are
    zeros whose sign follows its prompt's ids, and the decoder adds them to the position embeddings first,
    where the sign cannot change a value. Compared by bytes after that (a NaN is equal only to itself)."""
    out = np.array(value, order="C")  # a copy: an entry keeps it
    if out.dtype.kind == "f":
        out += 0
    return out


def _same_rows(value: np.ndarray) -> bool:
    flat = _canonical(value).reshape(len(value), -1).view(np.uint8)
    return bool((flat == flat[0]).all())


@dataclass(frozen=True, eq=False)  # entries are told apart by identity (list.remove), their inputs by matches()
class NullPrefill:
    """One null row after the first call: its inputs (by name, the token ids under ``"ids"``), each cache's
    columns ``[0, filled)`` (``[heads, filled, head_dim]``, in the decoder's past order) and its logits."""

    inputs: dict[str, np.ndarray]
    caches: tuple[np.ndarray, ...]
    logits: np.ndarray

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.caches) + self.logits.nbytes

    def matches(self, inputs: dict[str, np.ndarray]) -> bool:
        """``inputs``: canonical (:func:`_canonical`), as :meth:`NullPrefillCache.plan` makes them."""
        mine = self.inputs
        return mine.keys() == inputs.keys() and all(
            mine[k].shape == v.shape and mine[k].dtype == v.dtype
            and mine[k].tobytes() == v.tobytes()
            for k, v in inputs.items())


class NullPrefillCache:
    """A model's entries, newest last, at most ``max_entries`` and ``max_bytes`` (an entry larger than the
    cap is never stored: every first call is then a miss, which still saves B - 1 rows). Shared by the
    model's concurrent calls."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: list[NullPrefill] = []
        self._lock = threading.Lock()

    def plan(self, ids: np.ndarray, first: dict[str, np.ndarray], null_rows: int) -> "Reuse | None":
        """How to run a first call of ``ids [rows, K, columns]`` with feeds ``first`` whose last ``null_rows``
        rows are CFG null rows; None: run every row as before."""
        rows = ids.shape[0]
        cond = rows - null_rows
        if null_rows < 1 or cond < 1 or ids.shape[2] != 1:
            return None
        inputs = {"ids": ids, **first}
        if not all(value.shape[0] == rows and _same_rows(value[cond:]) for value in inputs.values()):
            return None
        null = {name: _canonical(value[cond]) for name, value in inputs.items()}
        with self._lock:
            entry = next((e for e in self._entries if e.matches(null)), None)
            if entry is not None:  # most recently used last
                self._entries.remove(entry)
                self._entries.append(entry)
        log.debug("null-row prefill: %s (%d conditional rows, %d null rows)", "hit" if entry else "miss", cond,
                  null_rows)
        return Reuse(self, cond if entry is not None else cond + 1, entry, null)

    def store(self, entry: NullPrefill) -> None:
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            self._entries = [e for e in self._entries if not e.matches(entry.inputs)] + [entry]
            while len(self._entries) > self.max_entries or sum(e.nbytes for e in self._entries) > self.max_bytes:
                self._entries.pop(0)

    def clear(self) -> None:
        """Forget every entry (the next first call is a miss; benchmarks time both)."""
        with self._lock:
            self._entries = []

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class Reuse:
    """One first call's plan: the decoder runs rows ``[0, rows)`` (the conditional rows, and on a miss the
    first null row); :meth:`finish` then fills the other null rows."""

    cache: NullPrefillCache
    rows: int
    entry: NullPrefill | None
    inputs: dict[str, np.ndarray]

    def finish(self, caches: list[np.ndarray], logits: np.ndarray, filled: int) -> None:
        """``caches``: the host arrays ``[all rows, heads, >= filled, head_dim]`` whose rows ``[0, rows)`` the
        call wrote; ``logits [all rows, K, V]`` likewise. On a miss the last row run becomes the entry."""
        entry = self.entry
        if entry is None:
            last = self.rows - 1
            entry = NullPrefill(self.inputs, tuple(c[last, :, :filled].copy() for c in caches), logits[last].copy())
            for value in (*entry.inputs.values(), *entry.caches, entry.logits):
                value.flags.writeable = False  # shared by the model's concurrent calls
            self.cache.store(entry)
        for cache, null in zip(caches, entry.caches):
            cache[self.rows:, :, :filled] = null
        logits[self.rows:] = entry.logits
