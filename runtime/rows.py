"""Which rows of a batched call are still wanted, so a running batch can let one go.

A server batches strangers' requests into one ``generate`` call; when one of them hangs up, its row
should stop costing decoder work while its batch mates go on. :class:`LiveRows` is the signal: any
thread may :meth:`~LiveRows.cancel` a row at any time; the generating thread drops the cancelled rows
at its next step boundary (:meth:`~LiveRows.drop_cancelled`: the loop then compacts its batch, see
``StepLoop.keep_rows``). Per-row seeds make a row's codes independent of its batch mates, so the rows
that stay get exactly the codes they would have got without the drop.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np


class LiveRows:
    def __init__(self, count: int):
        self.live: list[int] = list(range(count))  # the call's row numbers still in the batch, in batch order
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()

    def cancel(self, row: int) -> None:
        """Ask for row ``row`` (its index in the call's prompts) to be dropped; any thread, any time."""
        with self._lock:
            self._cancelled.add(row)

    def drop_cancelled(self) -> np.ndarray | None:
        """Called by the generating thread between steps: the batch positions of the rows to keep (the
        cancelled ones leave ``live``), or None when no live row was cancelled since the last call."""
        with self._lock:
            if self._cancelled.isdisjoint(self.live):
                return None
            keep = [i for i, row in enumerate(self.live) if row not in self._cancelled]
            self.live = [self.live[i] for i in keep]
        return np.asarray(keep, dtype=np.int64)

    def follow(self, seen: list[int], cut: Callable[[np.ndarray], None]) -> list[int]:
        """How a consumer holding per-row state (collected codes, a stream decoder) for the rows ``seen``
        (an earlier ``live``) follows the batch: if rows were dropped since, ``cut`` gets the positions
        in ``seen`` of the rows live now. Returns ``live``: the consumer's next ``seen``."""
        if len(seen) != len(self.live):
            cut(np.asarray([seen.index(row) for row in self.live], dtype=np.int64))
        return self.live
