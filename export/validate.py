"""Two checks before a graph is trusted: wrapper == transformers, then ONNX == wrapper.

Failures raise :class:`ExportError` naming the graph, the output and the max difference, the way
optimum's exporter reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..runtime.errors import ExportError
from .wrappers import static_step_inputs


@dataclass(frozen=True)
class Tolerance:
    """An output passes when ``max|got - want| <= atol + rtol * max|want|``: judged against its own
    magnitude, because a real checkpoint's activation scale is not known in advance (a checkpoint
    whose projections were scaled up failed an absolute 1e-4 on its cross-attention keys)."""

    atol: float
    rtol: float

    def bound(self, want: np.ndarray) -> float:
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        return self.atol + self.rtol * scale

    def overridden(self, atol: float | None = None, rtol: float | None = None) -> "Tolerance":
        return Tolerance(self.atol if atol is None else atol, self.rtol if rtol is None else rtol)


# Per graph and precision. fp32: logits are O(1..10) and atol is ~1e4 x float epsilon there, far below
# what would flip a greedy token except at true ties; rtol 1e-5 is ~100 x float epsilon of the output's scale.
TOLERANCES = {
    "fp32": {"text_encoder": Tolerance(1e-4, 1e-5), "decoder": Tolerance(2e-3, 1e-5),
             "audio_decoder": Tolerance(1e-4, 1e-5)},
    "fp16": {"text_encoder": Tolerance(5e-2, 1e-2), "decoder": Tolerance(2.5e-1, 1e-2),
             "audio_decoder": Tolerance(5e-3, 1e-3)},
    # weight-only quantised decoders, on random validation inputs (logits O(5)): a sanity bound that
    # catches a broken graph; the quality that matters is measured under teacher forcing (benchmarks).
    "int8": {"decoder": Tolerance(0.5, 0.05)},
    "int4": {"decoder": Tolerance(2.0, 0.2)},
}
WRAPPER_TOLERANCE = Tolerance(1e-3, 1e-5)  # export wrapper vs transformers' own forward, fp32
CODEC_WRAPPER_TOLERANCE = Tolerance(1e-4, 1e-5)
# Codes come from an argmin; a few near-ties may flip between runtimes. Fraction of codes allowed to differ.
CODE_MISMATCH = {"fp32": 0.01, "fp16": 0.1}


def _max_diff(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def compare(graph: str, names, got, want, tol, case: str = "") -> None:
    """``tol``: a :class:`Tolerance` for float outputs, a fraction of differing codes for integer ones."""
    for name, g, w in zip(names, got, want):
        g = np.asarray(g)
        w = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
        if g.shape != w.shape:
            raise ExportError(f"validation failed: graph {graph}, output {name}{case}: shape {g.shape} != torch {w.shape}")
        if np.issubdtype(w.dtype, np.integer):
            frac = float(np.mean(g != w)) if w.size else 0.0
            if frac > tol:
                raise ExportError(f"validation failed: graph {graph}, output {name}{case}: {frac:.2%} of codes "
                                  f"differ (allowed {tol:.2%})")
            continue
        diff = _max_diff(g, w)
        bound = tol.bound(w)
        if not diff <= bound:
            raise ExportError(f"validation failed: graph {graph}, output {name}{case}: max abs difference "
                              f"{diff:.3g} > tolerance {bound:.3g} (atol {tol.atol:g} + rtol {tol.rtol:g} x "
                              f"max |reference| {float(np.max(np.abs(w))) if w.size else 0.0:.3g})")


TOKENIZER_PROBES = ("", "A calm piano melody", "80s pop track with bassy drums and synth", "  spaced   out\ttabs\n",
                    "Café naïve Ünïcödé ﬁ ｆｕｌｌ ＡＢＣ ①②", "中文 音乐 🎸🎹", "</s> <pad> <unk> <extra_id_0>", "e\u0301 A\u0301\r\n")


def check_tokenizer(tokenizer_json: str) -> None:
    """The runtime reads ``tokenizer.json`` without the ``tokenizers`` library: refuse, at export time, a
    file it cannot read or reads differently (ids compared with ``tokenizers`` on assorted prompts)."""
    import json

    from tokenizers import Tokenizer as Reference

    from ..runtime.tokenizer import Tokenizer

    try:
        ours = Tokenizer(json.loads(tokenizer_json))
    except ValueError as exc:
        raise ExportError(f"tokenizer.json: the runtime cannot read it ({exc})") from None
    reference = Reference.from_str(tokenizer_json)
    reference.no_padding()
    reference.no_truncation()
    for text in TOKENIZER_PROBES:
        try:  # both must also agree on refusing a text (a vocabulary without <unk>)
            want = reference.encode(text).ids
        except Exception:
            want = "an error"
        try:
            got = ours.encode(text)
        except ValueError:
            got = "an error"
        if got != want:
            raise ExportError(f"tokenizer.json: the runtime tokenizes {text!r} as {got}, tokenizers as {want}")


def random_text(batch: int, length: int, vocab: int, gen: torch.Generator):
    """Token ids ending in </s> (id 1) with unequal lengths, and their mask."""
    ids = torch.randint(3, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.int64)
    for b in range(batch):
        n = max(1, length - b)  # row b has b padded positions
        ids[b, n - 1] = 1
        ids[b, n:] = 0
        mask[b, n:] = 0
    return ids, mask


def random_onehot_chroma(batch: int, frames: int, num_chroma: int, gen: torch.Generator):
    idx = torch.randint(0, num_chroma, (batch, frames), generator=gen)
    return torch.nn.functional.one_hot(idx, num_chroma).float()


@torch.no_grad()
def check_wrappers_against_transformers(model, text_encoder, decoder, conditioning: str,
                                        tol: Tolerance = WRAPPER_TOLERANCE) -> None:
    """Run transformers' own forward on a whole sequence, and the wrappers as the runtime will use them
    (first call with two columns, then one column at a time through the explicit past); every
    last-position logit must agree."""
    gen = torch.Generator().manual_seed(1234)
    cfg = model.config
    K = cfg.decoder.num_codebooks
    batch, text_len, steps = 2, 5, 5
    ids, mask = random_text(batch, text_len, cfg.text_encoder.vocab_size, gen)
    seq = torch.randint(0, cfg.decoder.vocab_size, (batch, K, steps), generator=gen)
    seq[:, :, 0] = cfg.decoder.bos_token_id
    kwargs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=seq.reshape(batch * K, steps))
    if conditioning == "prefix":
        chroma = random_onehot_chroma(batch, 7, cfg.num_chroma, gen)
        kwargs["input_features"] = chroma
        cond = (text_encoder(ids, mask, chroma),)
    else:
        cond = (mask, *text_encoder(ids, mask))
    ref = model(**kwargs).logits
    ref = ref.reshape(batch, K, -1, ref.shape[-1])[:, :, -steps:]
    H = cfg.decoder.num_attention_heads
    hd = cfg.decoder.hidden_size // H
    static = decoder.kv_cache == "static"
    prefix_len = cond[0].shape[1] if conditioning == "prefix" else 0
    past = [torch.zeros(batch, H, prefix_len + steps if static else 0, hd)] * (2 * decoder.num_layers)
    filled = 0

    def call(ids, cond, past):
        extra = static_step_inputs(batch, filled, ids.shape[2] + cond[0].shape[1] * (conditioning == "prefix")) \
            if static else ()
        return decoder(ids, *cond, *extra, *past)

    first = 2
    out = call(seq[:, :, :first], cond, past)
    compare("decoder (torch wrapper vs transformers)", ["logits"], [out[0]], [ref[:, :, first - 1]], tol, " at the first call")
    past = list(out[1:])
    filled = prefix_len + first
    if conditioning == "prefix":
        cond = (torch.zeros(batch, 0, cfg.decoder.hidden_size),)
    for j in range(first, steps):
        out = call(seq[:, :, j:j + 1], cond, past)
        compare("decoder (torch wrapper vs transformers)", ["logits"], [out[0]], [ref[:, :, j]], tol, f" at step {j}")
        past = list(out[1:])
        filled += 1


@torch.no_grad()
def check_codec_against_transformers(codec, audio_decoder, audio_encoder, tol: Tolerance = CODEC_WRAPPER_TOLERANCE,
                                     mismatch: float = 0.01) -> None:
    gen = torch.Generator().manual_seed(99)
    K = codec.quantizer.get_num_quantizers_for_bandwidth(codec.config.target_bandwidths[0])
    codes = torch.randint(0, codec.config.codebook_size, (2, K, 9), generator=gen)
    ref = codec.decode(codes[None], [None]).audio_values
    compare("audio_decoder (torch wrapper vs transformers)", ["audio_values"], [audio_decoder(codes)], [ref], tol)
    audio = torch.randn(2, 1, 640 * 6 + 100, generator=gen) * 0.1
    ref_codes = codec.encode(audio, bandwidth=codec.config.target_bandwidths[0]).audio_codes[0]
    compare("audio_encoder (torch wrapper vs transformers)", ["audio_codes"], [audio_encoder(audio)], [ref_codes], mismatch)
