"""The capturable stepper's KV cache starts zeroed: device memory comes uninitialized, and a
GroupQueryAttention kernel that touches columns past ``seqlens_k`` must find finite values there."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from musicgen_onnx.runtime.stepper import StepBuffers


def test_a_new_buffer_set_has_zero_caches_whatever_the_allocator_left(monkeypatch):
    real = ort.OrtValue.ortvalue_from_shape_and_type

    def garbage(shape, dtype, device, index):  # stands in for uninitialized device memory
        value = real(shape, dtype, device, index)
        if np.dtype(dtype).kind == "f":
            value.update_inplace(np.full(shape, np.nan, dtype=dtype))
        return value

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_shape_and_type", staticmethod(garbage))
    for dtype in (np.float16, np.float32):
        b = StepBuffers(ort, "cpu", (2, 3, 40, 8), 4, dtype, (2, 4, 16), {}, -1)
        assert all(c.numpy().dtype == dtype and not c.numpy().any() for c in b.caches)
