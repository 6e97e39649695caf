"""``musicgen-onnx verify FOLDER CHECKPOINT``: an exported folder of any precision against its source.

Three checks on fixed prompts (and a fixed melody for melody checkpoints): greedy tokens over N
frames, per-step logit agreement under teacher forcing on transformers' own greedy stream (max abs
difference, mean KL divergence, top-1 agreement), and the codec's audio for the same codes. Each
precision has bounds; a miss makes ``verify`` fail.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

PROMPTS = ["80s pop track with bassy drums and synth", "a calm folk song with acoustic guitar"]

# Bounds per precision of the decoder graph. fp32 must reproduce transformers. The quantised tiers are
# bounded with margin around what they measured on the full-size random-weight small architecture
# (int8: top-1 0.968, KL 5e-4; int4: top-1 0.65-0.70, KL 0.08; README table). Random weights give flat
# logits whose argmax flips easily, so top-1 is pessimistic there; a broken graph scores top-1 ~0.001
# and KL of several nats, far outside every bound. fp16 has no full-size CPU measurement yet.
BOUNDS = {
    "fp32": {"token_match": 1.0, "top1": 1.0, "max_abs": 1e-3, "kl": 1e-6, "audio_max_abs": 1e-4},
    "fp16": {"token_match": 0.0, "top1": 0.9, "max_abs": float("inf"), "kl": 5e-3, "audio_max_abs": 1e-4},
    "int8": {"token_match": 0.0, "top1": 0.9, "max_abs": float("inf"), "kl": 5e-3, "audio_max_abs": 1e-4},
    "int4": {"token_match": 0.0, "top1": 0.5, "max_abs": float("inf"), "kl": 0.2, "audio_max_abs": 1e-4},
}


def logit_agreement(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Max |difference|, mean KL(softmax(reference) || softmax(test)) and top-1 agreement over the
    last axis of two logit arrays of the same shape."""
    ref = reference.astype(np.float64)
    tst = test.astype(np.float64)
    log_p = ref - ref.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    log_q = tst - tst.max(-1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    return {"max_abs": float(np.abs(ref - tst).max()), "kl": float(kl.mean()),
            "top1": float((ref.argmax(-1) == tst.argmax(-1)).mean())}


@dataclass
class Check:
    name: str
    value: float
    bound: float
    higher_is_better: bool

    @property
    def ok(self) -> bool:
        return self.value >= self.bound if self.higher_is_better else self.value <= self.bound


def check_pairing(manifest, ckpt, folder) -> None:
    """The folder must have been exported from a checkpoint of the same family and sizes: compared
    fact by fact, so a mismatch names both sides instead of failing inside transformers."""
    from ..runtime.errors import ExportError

    dec = ckpt.config.get("decoder") or {}
    family = {"prefix": "melody", "cross": "text-only"}
    facts = [
        ("family", family[manifest.conditioning], family[ckpt.conditioning]),
        ("codebooks", manifest.num_codebooks, dec.get("num_codebooks")),
        ("audio channels", manifest.audio_channels, dec.get("audio_channels", 1)),
        ("hidden size", manifest.hidden_size, dec.get("hidden_size")),
        ("layers", manifest.num_layers, dec.get("num_hidden_layers")),
        ("attention heads", manifest.num_heads, dec.get("num_attention_heads")),
        ("codebook size", manifest.codebook_size, dec.get("vocab_size")),
    ]
    for name, ours, theirs in facts:
        if ours != theirs:
            raise ExportError(f"{folder} ({manifest.family}) does not match checkpoint {ckpt.name!r}: {name} "
                              f"{ours} in the folder, {theirs} in the checkpoint")


@contextmanager
def _quiet_transformers():
    """verify's output is its table: transformers' config warnings (random-weight checkpoints put
    special ids past the vocabulary) and its loading bar would print before it on every run."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@_quiet_transformers()
def verify(folder, checkpoint, frames: int = 50, providers="cpu") -> tuple[str, list[Check]]:
    """Run the three checks; returns the decoder's precision and the checks (each with its bound)."""
    from ..runtime import MusicGen
    from ..runtime.chroma import batch_chroma
    from . import reference
    from .sources import resolve

    ckpt = resolve(checkpoint)
    ours = MusicGen.from_pretrained(folder, providers=providers)
    check_pairing(ours.manifest, ckpt, folder)  # before the reference runs: a mismatch is one line
    model, tokenizer = reference.load(ckpt.folder)
    precision = ours.manifest.graphs["decoder"].precision
    bounds = BOUNDS[precision]
    chroma = features = melodies = None
    if ours.manifest.is_melody:
        t = np.arange(32000 * 4) / 32000
        melodies = [(0.5 * np.sin(2 * np.pi * np.where(t < 2, 261.63, 392.0) * t)).astype(np.float32)] * len(PROMPTS)
        features = reference.chroma_features(melodies)
        chroma = batch_chroma(melodies, ours.manifest.chroma)
    ref_codes, ref_audio, ref_scores = reference.generate(model, tokenizer, PROMPTS, frames, input_features=features,
                                                          return_scores=True)
    # stems=False: transformers takes the full mix (stems.onnx is checked against demucs at export)
    _, codes = ours.generate(PROMPTS, melody=melodies, melody_sample_rate=32000, duration=frames / ours.frame_rate,
                             greedy=True, guidance_scale=3.0, stems=False, return_codes=True)
    logits = ours.teacher_forced_logits(PROMPTS, ref_codes, chroma, guidance_scale=3.0)
    agreement = logit_agreement(ref_scores, logits)
    audio = ours.decode(ref_codes)
    checks = [
        Check("greedy tokens identical (fraction)", float((codes == ref_codes).mean()), bounds["token_match"], True),
        Check("teacher-forced top-1 agreement", agreement["top1"], bounds["top1"], True),
        Check("teacher-forced mean KL", agreement["kl"], bounds["kl"], False),
        Check("teacher-forced max |logit diff|", agreement["max_abs"], bounds["max_abs"], False),
        Check("codec audio max |diff|", float(np.abs(audio - ref_audio).max()), bounds["audio_max_abs"], False),
    ]
    return precision, checks
