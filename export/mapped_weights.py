"""Let the torch reference run over a memory-mapped checkpoint without keeping all of it resident.

transformers maps safetensors weights (private, read-only in practice): a forward touches every page
and they all stay in the process's RSS, a full fp32 copy of the checkpoint while validation computes
its references. After each module with weights has run, its pages are handed back with
``madvise(MADV_DONTNEED)``; the next forward faults them in again from the page cache (the kernel's,
reclaimable, not this process's). For clean file pages that is exact: they are re-read from the
file. A page the process had written (copy-on-write) would be lost, so this is only switched on while
no mapped page of any weight file has been written (``Anonymous: 0 kB`` in smaps).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4


def _mappings(suffix: str = ".safetensors") -> list[tuple[int, int, int]]:
    """(start, end, anonymous kB) of every mapping of a weight file, from /proc/self/smaps."""
    found, current = [], None
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and all(c in "0123456789abcdef-" for c in head[0]):
            current = None
            if line.rstrip().endswith(suffix):
                start, end = (int(x, 16) for x in head[0].split("-"))
                current = [start, end, 0]
                found.append(current)
        elif current is not None and line.startswith("Anonymous:"):
            current[2] = int(head[1])
    return [tuple(m) for m in found]


@contextlib.contextmanager
def released_after_use(model: torch.nn.Module):
    """While inside, every module whose own weights lie in a weight-file mapping drops their pages from
    RSS after each forward. Does nothing where /proc or madvise is missing, or a page was written."""
    maps = _mappings()
    if not maps or any(anon for *_, anon in maps):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    ranges: dict[torch.nn.Module, list[tuple[int, int]]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            start = p.data_ptr()
            end = start + p.numel() * p.element_size()
            if any(lo <= start and end <= hi for lo, hi, _ in maps):
                lo, hi = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE  # whole pages inside the tensor
                if hi > lo:
                    ranges.setdefault(module, []).append((lo, hi - lo))

    def drop(module, _inputs, _output):
        for addr, length in ranges[module]:
            libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), _MADV_DONTNEED)

    handles = [m.register_forward_hook(drop) for m in ranges]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    if any(anon for *_, anon in _mappings()):  # written while inside: results would be suspect
        log.warning("a weight file's mapped pages were written during the reference run")
