"""Prompts -> T5 token ids, as transformers' processor and audiocraft's conditioner produce them."""

from __future__ import annotations

import os

import numpy as np

from .errors import InvalidInputError
from .tokenizer import Tokenizer


class TextTokenizer:
    """``tokenizer.json`` (read by :mod:`.tokenizer`): ``</s>`` appended by the file's template, padded
    to the longest prompt of the batch with the pad id, no truncation (transformers' processor
    with ``padding=True``; audiocraft ``T5Conditioner.tokenize``)."""

    def __init__(self, path: str | os.PathLike):
        self._tok = Tokenizer.from_file(path)
        pad = self._tok.token_to_id("<pad>")
        self.pad_id = 0 if pad is None else pad

    def __call__(self, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)``, int64 ``[batch, longest]``. A ``None`` prompt becomes ``""``
        with an all-zero mask row: audiocraft's dropped description (``T5Conditioner.tokenize`` zeroes
        the mask of empty entries)."""
        try:
            encodings = [self._tok.encode("" if t is None else t) for t in texts]
        except ValueError as exc:
            raise InvalidInputError(f"prompt: {exc}") from None
        longest = max(len(e) for e in encodings)
        ids = np.full((len(texts), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), longest), dtype=np.int64)
        for row, (text, enc) in enumerate(zip(texts, encodings)):
            ids[row, : len(enc)] = enc
            mask[row, : len(enc)] = 0 if text is None else 1
        return ids, mask
