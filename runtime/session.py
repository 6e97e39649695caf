"""onnxruntime sessions: provider choice and loading with errors a user can act on."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .errors import InvalidInputError, ModelFolderError

log = logging.getLogger(__name__)

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
_ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def resolve_providers(providers=None) -> list[str]:
    """``None``/"auto" -> CUDA when onnxruntime-gpu sees a GPU, else CPU; "cpu"; "cuda" (or an explicit
    onnxruntime provider list). Unknown names and CUDA without a GPU are clear errors."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None or providers == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    names = [providers] if isinstance(providers, str) else list(providers)
    resolved = []
    for name in names:
        ort_name = _ORT_NAMES.get(str(name).lower(), name)
        if ort_name not in _ORT_NAMES.values() and ort_name not in available:
            raise InvalidInputError(f"provider {name!r} is unknown; choose one of {', '.join(PROVIDER_CHOICES)}")
        if ort_name not in available:
            raise InvalidInputError(f"provider {name!r} is not available here (onnxruntime offers "
                                    f"{', '.join(available)}); for CUDA install musicgen-onnx[gpu] on a machine with a GPU")
        resolved.append(ort_name)
    if "CPUExecutionProvider" not in resolved:
        resolved.append("CPUExecutionProvider")
    return resolved


def release_freed_memory() -> None:
    """Give the heap that session creation freed back to the OS (glibc keeps it otherwise).

    onnxruntime parses each graph's protobuf and copies its weights out; the transient copies are
    freed but stay in the process's heap, about 350 MB for musicgen-melody int4 (measured, README).
    A no-op where there is no glibc."""
    import ctypes
    import ctypes.util

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def open_session(path: Path, providers: list[str], threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # EXTENDED, not ALL: ALL adds CPU layout transforms that cost seconds at load (small fp32 decoder:
    # 5.3 s vs 2.1 s) and measured no faster per step here (fp32 24.0 vs 23.7, int4 69 vs 73 steps/s).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    # No CPU arena: it keeps every activation peak (prefill, the codec's 10 s of audio) for the life of
    # the session and grew by 430 MB on a second melody generation; plain malloc hands large blocks
    # back. Measured no slower: melody int8 with fp16 KV, 10 s, 14.4 vs 13.5 steps/s; small fp32 and
    # int4 within run-to-run noise over four alternating runs.
    opts.enable_cpu_mem_arena = False
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelFolderError(f"{path}: onnxruntime cannot load this graph ({first})") from None
