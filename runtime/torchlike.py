"""Results that audiocraft code can treat as tensors, without torch.

audiocraft's examples call a few ``torch.Tensor`` methods on what ``generate`` returns before handing
it on (``audio_write(f'{idx}', one_wav.cpu(), ...)``, ``wav.detach().cpu().numpy()``). Answering those
few calls lets such code run unchanged; everything else is numpy, and a plain ndarray is one
``.numpy()`` away.
"""

from __future__ import annotations

import numpy as np


class TorchLikeArray(np.ndarray):
    """An ndarray that also answers ``.cpu()``, ``.detach()`` (no-ops: onnxruntime hands results back in
    host memory, with no autograd), ``.numpy()`` and ``.dim()``."""

    @classmethod
    def of(cls, array: np.ndarray) -> "TorchLikeArray":
        return np.asarray(array).view(cls)

    def cpu(self) -> "TorchLikeArray":
        return self

    def detach(self) -> "TorchLikeArray":
        return self

    def numpy(self) -> np.ndarray:
        return self.view(np.ndarray)

    def dim(self) -> int:
        return self.ndim
