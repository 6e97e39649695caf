"""Prompts and chroma -> what the decoder attends to, for the conditional and the CFG null rows.

One text-encoder call per window serves every row. The CFG null rows follow the conditional rows:
the same token ids with an all-zero mask (the encoder then yields exactly zero text states, as
audiocraft's dropped description and transformers' ``zeros_like`` do) and, for melody models, the
bin-0 chroma (audiocraft's null wav / transformers' default ``input_features``). So a melody model's
null rows have one first call for every row and every call of the same prefix length (null_prefill.py
reuses it; ``Conditioning.null_rows`` says which rows they are).

Text-only models with ``manifest.reference == "audiocraft"``: a conditional row's cross-attention sees
every text position, padding included (audiocraft passes no key mask; its padded positions are exact
zero vectors, as ours are), so batched prompts of unequal length give audiocraft's tokens; transformers
masks them. Null rows attend to nothing either way (their keys and values are all zero).
"""

from __future__ import annotations

import numpy as np

from . import roles
from .chroma import null_chroma
from .stepper import Conditioning
from .prompt_ids import TextTokenizer


class Conditioner:
    def __init__(self, tokenizer: TextTokenizer, graphs, manifest):
        self.tokenizer = tokenizer
        self.graphs = graphs
        self.manifest = manifest
        m = manifest
        enc, dec = m.graphs["text_encoder"], m.graphs["decoder"]
        self._text_inputs = (enc.name(roles.TEXT_IDS), enc.name(roles.TEXT_MASK))
        if m.is_melody:
            self._chroma = enc.name(roles.CHROMA)
            self._outputs = [enc.name(roles.PREFIX)]
            self._prefix = dec.name(roles.PREFIX_EMBEDS)
        else:
            self._outputs = enc.names(roles.layers("cross", m.num_layers))
            self._cross = dec.names(roles.layers("cross", m.num_layers))
            self._mask = dec.name(roles.ENCODER_MASK)

    def __call__(self, descriptions: list[str | None], chroma: np.ndarray | None, use_cfg: bool) -> Conditioning:
        """``chroma [B, frames, num_chroma]`` one-hot, or None for no melody (bin 0 for every row)."""
        ids, mask = self.tokenizer(descriptions)
        b = ids.shape[0]
        if use_cfg:
            ids = np.concatenate([ids, ids])
            mask = np.concatenate([mask, np.zeros_like(mask)])
        feeds = dict(zip(self._text_inputs, (ids, mask)))
        if not self.manifest.is_melody:
            kv = self.graphs.run_transient("text_encoder", self._outputs, feeds)
            if self.manifest.reference == "audiocraft":
                mask = np.broadcast_to(mask.max(axis=1, keepdims=True), mask.shape).copy()
            steps = {self._mask: mask, **dict(zip(self._cross, kv))}
            return Conditioning(steps, steps, 0)
        num_chroma = self.manifest.chroma.num_chroma
        if chroma is None:
            chroma = np.repeat(null_chroma(1, num_chroma)[None], b, axis=0)
        if use_cfg:
            chroma = np.concatenate([chroma, np.repeat(null_chroma(chroma.shape[1], num_chroma)[None], b, axis=0)])
        prefix = self.graphs.run_transient("text_encoder", self._outputs, {**feeds, self._chroma: chroma})[0]
        empty = np.zeros((prefix.shape[0], 0, prefix.shape[2]), dtype=prefix.dtype)
        return Conditioning({self._prefix: prefix}, {self._prefix: empty}, prefix.shape[1], b if use_cfg else 0)
