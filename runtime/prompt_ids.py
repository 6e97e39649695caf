"""Prompts -> T5 token ids, as transformers' processor and audiocraft's conditioner produce them."""

from __future__ import annotations

import os

import numpy as np

from .errors import InvalidInputError
from .tokenizer import MAX_PROMPT_CHARS, MAX_PROMPT_TOKENS, Tokenizer

__all__ = ["TextTokenizer", "MAX_PROMPT_CHARS", "MAX_PROMPT_TOKENS"]


class TextTokenizer:
    """``tokenizer.json`` (read by :mod:`.tokenizer`): ``</s>`` appended by the file's template, padded
    to the longest prompt of the batch with the pad id, no truncation (transformers' processor
    with ``padding=True``; audiocraft ``T5Conditioner.tokenize``): a prompt over MAX_PROMPT_TOKENS
    (or MAX_PROMPT_CHARS) is refused rather than cut."""

    def __init__(self, path: str | os.PathLike, max_id: int | None = None):
        """``max_id``: the text encoder's vocabulary size; any id the file could emit at or above it is
        refused on load (see :meth:`Tokenizer.from_file`)."""
        self._tok = Tokenizer.from_file(path, max_id=max_id)
        pad = self._tok.token_to_id("<pad>")
        self.pad_id = 0 if pad is None else pad

    def __call__(self, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)``, int64 ``[batch, longest]``. A ``None`` prompt becomes ``""``
        with an all-zero mask row: audiocraft's dropped description (``T5Conditioner.tokenize`` zeroes
        the mask of empty entries). A prompt that breaks a rule is named ``prompt`` when alone and
        ``prompts[i]`` in a batch, so a server can say which."""
        if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)):
            raise InvalidInputError(f"prompts: expected a list of strings (or None), got {type(texts).__name__}")
        if not texts:
            raise InvalidInputError("prompts: the list is empty; give at least one prompt")
        names = ["prompt"] if len(texts) == 1 else [f"prompts[{i}]" for i in range(len(texts))]
        encodings = [self._tok.encode("" if t is None else t, name) for t, name in zip(texts, names)]
        longest = max(len(e) for e in encodings)
        ids = np.full((len(texts), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), longest), dtype=np.int64)
        for row, (text, enc) in enumerate(zip(texts, encodings)):
            ids[row, : len(enc)] = enc
            mask[row, : len(enc)] = 0 if text is None else 1
        return ids, mask
