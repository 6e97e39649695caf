"""Step timing for the exporters' progress lines (benchmarks/bench_export.py parses their prefix)."""

from __future__ import annotations

import time
from typing import Callable


def timed_steps(progress: Callable[[str], None]) -> Callable[[str], None]:
    """``step(msg)`` reports ``[seconds since start] msg``."""
    t0 = time.perf_counter()

    def step(msg: str) -> None:
        progress(f"[{time.perf_counter() - t0:7.1f}s] {msg}")

    return step
