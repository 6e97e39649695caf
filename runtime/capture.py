"""CUDA-graph capture: which graphs may be captured, the graph id of each buffer set, one driving thread.

onnxruntime's CUDA EP (``enable_cuda_graph``) records a run once and replays it: the replay skips CPU
kernels and feed/fetch copies, so it is only right when every bound buffer keeps its address and its
shape. The capturable stepper (stepper.py) keeps one set of fixed buffers per (rows, conditioning
shapes); each set gets its own ``gpu_graph_id`` here, from a counter with a cap (every graph holds
device memory); past the cap a set runs uncaptured. The first call of a window has a shape of its own
and always runs uncaptured (``PREFILL``). Capture and replay must happen on one thread at a time:
``lock``. Only the decoder and the sampler are ever captured: the text encoder and the codec see
new shapes on every call.
"""

from __future__ import annotations

import threading
from typing import Hashable

CAPTURED_GRAPHS = ("decoder", "sampler")
PREFILL = -1  # onnxruntime's gpu_graph_id for "run as usual, neither capture nor replay"
MAX_GRAPHS = 16
CUDA = "CUDAExecutionProvider"


def provider_options(settings, graph: str) -> list[tuple[str, dict[str, str]]]:
    """``settings``' (provider, options) list for ``graph``: with ``enable_cuda_graph`` on the CUDA
    provider only where ``settings.cuda_graph`` asks for it and the graph is one of CAPTURED_GRAPHS."""
    out = []
    for name in settings.providers:
        options = dict(settings.provider_options.get(name, {}))
        if name == CUDA and settings.cuda_graph and graph in CAPTURED_GRAPHS:
            options["enable_cuda_graph"] = "1"
        out.append((name, options))
    return out


class GraphIds:
    """Graph ids by key, handed out once each up to ``cap``; one per model."""

    def __init__(self, cap: int = MAX_GRAPHS):
        self.cap = cap
        self._ids: dict[Hashable, int] = {}
        self._guard = threading.Lock()
        self.lock = threading.Lock()  # held around every run of a captured session

    def id_for(self, key: Hashable) -> int:
        with self._guard:
            if key not in self._ids:
                self._ids[key] = len(self._ids) if len(self._ids) < self.cap else PREFILL
            return self._ids[key]

    @staticmethod
    def run_options(graph_id: int):
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return options
