"""The capturable stepper's KV cache starts zeroed on a GPU: device memory comes uninitialized, and a
CUDA GroupQueryAttention kernel that touched columns past ``seqlens_k`` must find finite values there.
The CPU kernel reads only the first ``seqlens_k + 1`` columns, so the CPU is spared the copy."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from musicgen_onnx.runtime.stepper import StepBuffers


def test_a_new_buffer_set_has_zero_caches_on_a_gpu_whatever_the_allocator_left(monkeypatch):
    real = ort.OrtValue.ortvalue_from_shape_and_type

    def garbage(shape, dtype, device, index):  # uninitialized memory, on the CPU whatever device is asked
        value = real(shape, dtype, "cpu", 0)
        if np.dtype(dtype).kind == "f":
            value.update_inplace(np.full(shape, np.nan, dtype=dtype))
        return value

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_shape_and_type", staticmethod(garbage))
    for dtype in (np.float16, np.float32):
        gpu = StepBuffers(ort, "cuda", (2, 3, 40, 8), 4, dtype, (2, 4, 16), {}, -1)
        assert all(c.numpy().dtype == dtype and not c.numpy().any() for c in gpu.caches)
        cpu = StepBuffers(ort, "cpu", (2, 3, 40, 8), 4, dtype, (2, 4, 16), {}, -1)
        assert all(np.isnan(c.numpy()).all() for c in cpu.caches)  # left as allocated: no copy on the CPU
