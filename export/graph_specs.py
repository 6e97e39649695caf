"""The four graphs of one checkpoint: wrappers, example and validation inputs, tensor names, dynamic axes.

Tensor names are the runtime's roles (:mod:`..runtime.roles`): ``roles.required`` says which inputs and
outputs, in which order, each graph has, so the folder contract is written once. The decoder's spec is
:func:`_decoder_spec` alone, the place to edit when its inputs change.
"""

from __future__ import annotations

import torch

from ..runtime import roles
from ..runtime.manifest import hop_length
from . import validate
from .tracing import GraphSpec
from .wrappers import AudioDecoder, AudioEncoder, Decoder, TextEncoder, static_step_inputs

BATCH = "batch_x_cfg"
# The graphs traced with placeholder weights (the big ones); the codec keeps its real weights (its
# convolutions' weight norm folds two parameters into one initializer, and it is small).
STREAMED_GRAPHS = ("text_encoder", "decoder")


def graph_specs(model, conditioning: str, kv_cache: str = "static") -> list[GraphSpec]:
    """Wrappers, example inputs, names and dynamic axes of the four graphs of one checkpoint."""
    gen = torch.Generator().manual_seed(7)
    return [_text_encoder_spec(model, conditioning, kv_cache, gen), _decoder_spec(model, conditioning, kv_cache, gen),
            *_codec_specs(model, gen)]


def _names(graph: str, model, conditioning: str, kv_cache: str) -> tuple[list[str], list[str]]:
    return roles.required(graph, conditioning, kv_cache, model.config.decoder.num_hidden_layers)


def _text_encoder_spec(model, conditioning: str, kv_cache: str, gen: torch.Generator) -> GraphSpec:
    cfg = model.config
    vocab = cfg.text_encoder.vocab_size
    prefix = conditioning == "prefix"

    def text_inputs(batch, length, frames=None):
        ids, mask = validate.random_text(batch, length, vocab, gen)
        if prefix:
            return (ids, mask, validate.random_onehot_chroma(batch, frames, cfg.num_chroma, gen))
        return (ids, mask)

    inputs, outputs = _names("text_encoder", model, conditioning, kv_cache)
    axes = {roles.TEXT_IDS: {0: BATCH, 1: "text_length"}, roles.TEXT_MASK: {0: BATCH, 1: "text_length"}}
    if prefix:
        axes[roles.CHROMA] = {0: BATCH, 1: "chroma_frames"}
        axes[roles.PREFIX] = {0: BATCH, 1: "prefix_length"}
        cases = [text_inputs(1, 3, 300), text_inputs(4, 9, 1), text_inputs(3, 6, 235)]
        example = text_inputs(2, 7, 11)
    else:
        axes.update({n: {0: BATCH, 2: "text_length"} for n in outputs})
        cases = [text_inputs(1, 3), text_inputs(4, 9)]
        example = text_inputs(2, 7)
    return GraphSpec("text_encoder", TextEncoder(model, conditioning).eval(), example, inputs, outputs, axes, cases)


def _decoder_spec(model, conditioning: str, kv_cache: str, gen: torch.Generator) -> GraphSpec:
    dec = model.config.decoder
    K, H, d, L = dec.num_codebooks, dec.num_attention_heads, dec.hidden_size, dec.num_hidden_layers
    hd = d // H
    static = kv_cache == "static"
    prefix = conditioning == "prefix"

    def decoder_inputs(batch, new_len, past_len, prefix_len=0, text_len=6):
        ids = torch.randint(0, dec.vocab_size + 1, (batch, K, new_len), generator=gen)
        if prefix:
            cond = (torch.randn(batch, prefix_len, d, generator=gen),)
        else:
            mask = torch.ones(batch, text_len, dtype=torch.int64)
            mask[-1] = 0  # a CFG null row: fully masked
            if batch > 1:
                mask[0, text_len // 2:] = 0
            cond = (mask, *[torch.randn(batch, H, text_len, hd, generator=gen) for _ in range(2 * L)])
        if static:  # a buffer with room to spare; only the first past_len positions are "filled"
            room = past_len + prefix_len + new_len + 3
            past = [torch.randn(batch, H, room, hd, generator=gen) for _ in range(2 * L)]
            return (ids, *cond, *static_step_inputs(batch, past_len, prefix_len + new_len), *past)
        past = [torch.randn(batch, H, past_len, hd, generator=gen) for _ in range(2 * L)]
        return (ids, *cond, *past)

    # static: the step's positions, seqlens_k and total length come from the runtime (manifest step_inputs
    # "positions"), so no host computation sits inside a step (a CUDA graph can capture it)
    inputs, outputs = roles.required("decoder", conditioning, kv_cache, L, step_inputs="positions")
    axes = {roles.TOKEN_IDS: {0: BATCH, 2: "new_length"}}
    if static:  # prefix models: the prefix plus the new columns, so not input_ids' new_length (a shared name
        # would let onnxruntime plan one buffer for both sizes)
        axes.update({roles.POSITION_IDS: {0: BATCH, 1: "new_positions"}, roles.SEQLENS_K: {0: BATCH}})
    if prefix:
        axes[roles.PREFIX_EMBEDS] = {0: BATCH, 1: "prefix_length"}
        example = decoder_inputs(2, 1, 0, prefix_len=12)
        cases = [decoder_inputs(2, 1, 13), decoder_inputs(6, 3, 0, prefix_len=20), decoder_inputs(1, 1, 40)]
        if not static:  # GroupQueryAttention takes several new columns only on an empty past
            cases.append(decoder_inputs(4, 2, 5, prefix_len=3))
    else:
        axes[roles.ENCODER_MASK] = {0: BATCH, 1: "text_length"}
        axes.update({n: {0: BATCH, 2: "text_length"} for n in roles.layers("cross", L)})
        example = decoder_inputs(2, 1, 0)
        cases = [decoder_inputs(2, 1, 13, text_len=3), decoder_inputs(6, 3, 0, text_len=9),
                 decoder_inputs(1, 1, 40, text_len=1)]
    axes.update({n: {0: BATCH, 2: "max_length" if static else "past_length"} for n in roles.layers("past", L)})
    axes[roles.LOGITS] = {0: BATCH}
    axes.update({n: {0: BATCH, 2: "max_length" if static else "total_length"} for n in roles.layers("present", L)})
    return GraphSpec("decoder", Decoder(model, conditioning, kv_cache).eval(), example, inputs, outputs, axes, cases)


def _codec_specs(model, gen: torch.Generator) -> list[GraphSpec]:
    codec = model.audio_encoder
    bandwidth = codec.config.target_bandwidths[0]
    Kc = codec.quantizer.get_num_quantizers_for_bandwidth(bandwidth)
    hop = hop_length(codec.config.upsampling_ratios)

    def codes(batch, frames):
        return (torch.randint(0, codec.config.codebook_size, (batch, Kc, frames), generator=gen),)

    def wave(batch, samples):
        return (torch.randn(batch, 1, samples, generator=gen) * 0.1,)

    codes_axes = {0: "batch", 2: "frames"}
    wave_axes = {0: "batch", 2: "samples"}
    return [
        GraphSpec("audio_decoder", AudioDecoder(codec).eval(), codes(2, 10), [roles.AUDIO_CODES], [roles.AUDIO_VALUES],
                  {roles.AUDIO_CODES: codes_axes, roles.AUDIO_VALUES: wave_axes},
                  [codes(1, 5), codes(3, 37), codes(1, 150)]),
        GraphSpec("audio_encoder", AudioEncoder(codec, bandwidth).eval(), wave(2, hop * 10), [roles.AUDIO_VALUES],
                  [roles.AUDIO_CODES], {roles.AUDIO_VALUES: wave_axes, roles.AUDIO_CODES: codes_axes},
                  [wave(1, hop * 5), wave(3, hop * 7 + 123), wave(1, hop * 40 - 1)]),
    ]
