"""Past keys/values behind one small interface, so the loop never knows which cache it drives.

``cache.run(session, feeds)`` runs one decoder call and returns its logits; the cache feeds its past
and keeps what the graph gives back. Two implementations, matching the two decoder graphs
(manifest ``kv_cache``):

* :class:`ConcatKVCache` - the portable graph concatenates past and new keys/values and returns the
  result, which becomes the next past. Exact and simple; every step copies the whole past.
* :class:`StaticKVCache` - one buffer per layer, sized for the whole generation once, bound with
  IOBinding as both the past input and the present output, so GroupQueryAttention writes each new
  column in place: no step allocates or copies the past.
"""

from __future__ import annotations

import numpy as np


class ConcatKVCache:
    def __init__(self, input_names: list[str], output_names: list[str], batch: int, num_heads: int,
                 head_dim: int, dtype=np.float32):
        self.input_names = input_names
        self.outputs = ["logits", *output_names]
        empty = np.zeros((batch, num_heads, 0, head_dim), dtype=dtype)
        self._past = {name: empty for name in input_names}

    def run(self, session, feeds: dict[str, np.ndarray]) -> np.ndarray:
        logits, *presents = session.run(self.outputs, {**feeds, **self._past})
        self._past = dict(zip(self.input_names, presents))
        return logits


class StaticKVCache:
    def __init__(self, input_names: list[str], output_names: list[str], batch: int, num_heads: int,
                 head_dim: int, max_length: int, device: str = "cpu", dtype=np.float32):
        import onnxruntime as ort

        self.input_names = input_names
        self.output_names = output_names
        self.length = 0
        shape = (batch, num_heads, max_length, head_dim)
        self.max_length = max_length
        self._buffers = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=dtype), device, 0)
                         for _ in input_names]

    def run(self, session, feeds: dict[str, np.ndarray]) -> np.ndarray:
        new = feeds["input_ids"].shape[2] + (feeds["prefix_embeds"].shape[1] if "prefix_embeds" in feeds else 0)
        if self.length + new > self.max_length:
            raise RuntimeError(f"static KV cache overflow: {self.length} + {new} > {self.max_length}")
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_cpu_input("past_length", np.array(self.length, dtype=np.int64))
        for name, buf in zip(self.input_names, self._buffers):
            binding.bind_ortvalue_input(name, buf)
        binding.bind_output("logits", "cpu")  # first, so it is get_outputs()[0]
        for name, buf in zip(self.output_names, self._buffers):
            binding.bind_ortvalue_output(name, buf)
        session.run_with_iobinding(binding)
        self.length += new
        return binding.get_outputs()[0].numpy()
