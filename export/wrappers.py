"""Export-friendly torch modules around a transformers MusicGen checkpoint.

Each wrapper takes the checkpoint's own weights (no copies, no re-training) and exposes what the
ONNX graph needs as plain tensors: explicit past keys/values in and out, positions derived from the
past length, no framework cache objects and no Python branches on data. ``check_*`` in
``validate.py`` compares each wrapper with the transformers forward before it is exported.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, num_heads, d // num_heads).transpose(1, 2)


def _attend(q, k, v, bias):
    scale = 1.0 / math.sqrt(q.shape[-1])
    weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale + bias, dim=-1)
    out = torch.matmul(weights, v)
    b, h, t, hd = out.shape
    return out.transpose(1, 2).reshape(b, t, h * hd)


def sinusoid_frequencies(hidden_size: int) -> torch.Tensor:
    """transformers' ``get_embedding`` frequencies, op for op, so positions match to the last bit."""
    half = hidden_size // 2
    step = math.log(10000) / (half - 1)
    return torch.exp(torch.arange(half, dtype=torch.int64).float() * -step)


class TextEncoder(nn.Module):
    """ids, mask (+ chroma for melody checkpoints) -> what the decoder conditions on, computed once.

    melody ("prefix"): ``encoder_hidden_states = [tile_235(proj_chroma(chroma)); proj_text(T5) * mask]``,
    exactly transformers' ``_prepare_encoder_hidden_states_kwargs_for_generation`` (tiling by
    modulo indexing, which equals ``repeat`` then truncate).
    text-only ("cross"): per-layer cross-attention keys/values of ``proj_text(T5) * mask``, so no step
    ever recomputes them.
    """

    def __init__(self, model, conditioning: str):
        super().__init__()
        self.conditioning = conditioning
        self.t5 = model.text_encoder
        self.text_proj = getattr(model, "enc_to_dec_proj", None)
        if conditioning == "prefix":
            self.chroma_proj = getattr(model, "audio_enc_to_dec_proj", None)
            self.chroma_length = model.config.chroma_length
        else:
            self.layers = model.decoder.model.decoder.layers
            self.num_heads = model.config.decoder.num_attention_heads

    def forward(self, input_ids, attention_mask, chroma=None):
        h = self.t5(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.text_proj is not None:
            h = self.text_proj(h)
        h = h * attention_mask[..., None].to(h.dtype)
        if self.conditioning == "prefix":
            c = self.chroma_proj(chroma) if self.chroma_proj is not None else chroma
            index = torch.arange(self.chroma_length, device=c.device) % c.shape[1]
            return torch.cat([c.index_select(1, index), h], dim=1)
        outs = []
        for layer in self.layers:
            outs.append(_split_heads(layer.encoder_attn.k_proj(h), self.num_heads))
            outs.append(_split_heads(layer.encoder_attn.v_proj(h), self.num_heads))
        return tuple(outs)


class _GroupQueryAttention(torch.autograd.Function):
    """Causal self-attention that writes the new keys/values into a preallocated cache buffer.

    Exports as onnxruntime's ``com.microsoft.GroupQueryAttention`` (CPU fp32, CUDA fp16), which
    updates the buffer in place when the runtime binds past and present to the same memory: no step
    copies or regrows the past. The torch forward is the reference it is validated against.
    """

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, seqlens_k, total_length, num_heads):
        new_len = q.shape[1]
        past_len = int(total_length) - new_len
        present_k, present_v = past_k.clone(), past_v.clone()
        present_k[:, :, past_len:past_len + new_len] = _split_heads(k, num_heads)
        present_v[:, :, past_len:past_len + new_len] = _split_heads(v, num_heads)
        total = past_len + new_len
        allowed = torch.arange(total)[None, :] <= (torch.arange(new_len) + past_len)[:, None]
        bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min).to(q.dtype)
        out = _attend(_split_heads(q, num_heads), present_k[:, :, :total], present_v[:, :, :total], bias)
        return out, present_k, present_v

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, seqlens_k, total_length, num_heads):
        out, present_k, present_v = g.op("com.microsoft::GroupQueryAttention", q, k, v, past_k, past_v, seqlens_k,
                                         total_length, num_heads_i=num_heads, kv_num_heads_i=num_heads, outputs=3)
        out.setType(q.type())
        present_k.setType(past_k.type())
        present_v.setType(past_v.type())
        return out, present_k, present_v


class Decoder(nn.Module):
    """One graph for the first call (prefix + first columns, empty past) and every later step.

    Inputs, in order: ``input_ids [batch_x_cfg, num_codebooks, new_length]``; melody:
    ``prefix_embeds [batch_x_cfg, prefix_length, hidden]`` (length 0 on steps); text-only:
    ``encoder_attention_mask [batch_x_cfg, text_length]`` then ``cross.i.key``/``cross.i.value``;
    static cache: the step inputs ``position_ids [batch_x_cfg, new]`` int64, ``seqlens_k [batch_x_cfg]``
    int32 and ``total_sequence_length []`` int32 (:func:`static_step_inputs`); then ``past.i.key``/
    ``past.i.value [batch_x_cfg, heads, past_length | max_length, head_dim]``.
    Outputs: last-position ``logits [batch_x_cfg, num_codebooks, codebook_size]`` and the presents.

    ``kv_cache="concat"``: presents are past + new (the portable graph; positions start at the past's
    length). ``kv_cache="static"``: past and present are one preallocated buffer updated in place
    (``_GroupQueryAttention``). Its step inputs are given, not derived from a past length inside the
    graph: derived, they are small shape computations onnxruntime places on the CPU, and the host/device
    copies that follow keep the step from being captured as a CUDA graph. ``total_sequence_length``
    feeds only GroupQueryAttention's host input, so a captured step may hold it at the buffer length.
    """

    def __init__(self, model, conditioning: str, kv_cache: str = "concat"):
        super().__init__()
        lm = model.decoder
        core = lm.model.decoder
        self.conditioning = conditioning
        self.kv_cache = kv_cache
        self.embed = core.embed_tokens
        self.layers = core.layers
        self.norm = core.layer_norm
        self.heads = lm.lm_heads
        self.num_heads = lm.config.num_attention_heads
        self.num_layers = len(self.layers)
        self.register_buffer("frequencies", sinusoid_frequencies(lm.config.hidden_size), persistent=False)

    def forward(self, input_ids, *args):
        n_cond = 1 if self.conditioning == "prefix" else 1 + 2 * self.num_layers
        cond, args = args[:n_cond], args[n_cond:]
        static = self.kv_cache == "static"
        if static:
            position_ids, seqlens_k, total = args[:3]
            past = args[3:]
        else:
            past_len, past = args[0].shape[2], args
        x = self.embed[0](input_ids[:, 0])
        for k in range(1, len(self.embed)):
            x = x + self.embed[k](input_ids[:, k])
        if self.conditioning == "prefix":
            x = torch.cat([cond[0].to(x.dtype), x], dim=1)
        new_len = x.shape[1]
        if static:
            angles = position_ids.float()[..., None] * self.frequencies
        else:
            angles = (torch.arange(new_len, device=x.device) + past_len).float()[:, None] * self.frequencies[None, :]
        x = x + torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(x.dtype)

        if not static:
            key_pos = torch.arange(past_len + new_len, device=x.device)
            allowed = key_pos[None, :] <= (torch.arange(new_len, device=x.device) + past_len)[:, None]
            causal = torch.where(allowed, 0.0, torch.finfo(torch.float32).min).to(x.dtype)
        if self.conditioning == "cross":
            enc_mask = cond[0]
            cross_bias = torch.where(enc_mask[:, None, None, :] > 0, 0.0, torch.finfo(torch.float32).min).to(x.dtype)
            # A row with no text at all (the CFG null rows) attends to nothing: its context is 0, as in
            # transformers (uniform weights over all-zero values) but without relying on -inf arithmetic,
            # which fp16 cannot do.
            has_text = (enc_mask.sum(dim=1) > 0).to(x.dtype)[:, None, None]

        presents = []
        for i, layer in enumerate(self.layers):
            h = layer.self_attn_layer_norm(x)
            att = layer.self_attn
            if static:
                ctx, k, v = _GroupQueryAttention.apply(att.q_proj(h), att.k_proj(h), att.v_proj(h), past[2 * i],
                                                       past[2 * i + 1], seqlens_k, total, self.num_heads)
            else:
                k = torch.cat([past[2 * i], _split_heads(att.k_proj(h), self.num_heads)], dim=2)
                v = torch.cat([past[2 * i + 1], _split_heads(att.v_proj(h), self.num_heads)], dim=2)
                ctx = _attend(_split_heads(att.q_proj(h), self.num_heads), k, v, causal)
            presents += [k, v]
            x = x + att.out_proj(ctx)
            if self.conditioning == "cross":
                h = layer.encoder_attn_layer_norm(x)
                q = _split_heads(layer.encoder_attn.q_proj(h), self.num_heads)
                ctx = _attend(q, cond[1 + 2 * i], cond[2 + 2 * i], cross_bias) * has_text
                x = x + layer.encoder_attn.out_proj(ctx)
            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        last = self.norm(x[:, -1])
        logits = torch.stack([head(last) for head in self.heads], dim=1)
        return (logits, *presents)


def static_step_inputs(rows: int, past_length: int, new_length: int) -> tuple[torch.Tensor, ...]:
    """The static decoder's step inputs for ``new_length`` columns after ``past_length`` filled positions:
    the same values the runtime's stepper feeds (runtime/stepper.py)."""
    total = past_length + new_length
    positions = torch.arange(past_length, total, dtype=torch.int64).expand(rows, new_length).contiguous()
    return positions, torch.full((rows,), total - 1, dtype=torch.int32), torch.tensor(total, dtype=torch.int32)


def _fold_weight_norm(codec: nn.Module) -> nn.Module:
    """A copy of the codec with ``w = g * v / ||v||`` folded into plain weights."""
    from torch.nn.utils import parametrize

    fresh = type(codec)(codec.config)  # deepcopy of parametrized modules is unreliable: rebuild and load
    fresh.load_state_dict(codec.state_dict())
    codec = fresh.eval()
    for module in [m for m in codec.modules() if parametrize.is_parametrized(m, "weight")]:
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return codec


class AudioDecoder(nn.Module):
    """EnCodec codes ``[batch, codebooks, frames]`` -> waveform ``[batch, 1, frames * hop]``."""

    def __init__(self, codec):
        super().__init__()
        codec = _fold_weight_norm(codec)
        self.quantizer = codec.quantizer
        self.decoder = codec.decoder

    def forward(self, audio_codes):
        embeddings = self.quantizer.decode(audio_codes.transpose(0, 1))
        return self.decoder(embeddings)


class AudioEncoder(nn.Module):
    """Waveform ``[batch, 1, samples]`` -> EnCodec codes ``[batch, codebooks, ceil(samples / hop)]``."""

    def __init__(self, codec, bandwidth: float):
        super().__init__()
        codec = _fold_weight_norm(codec)
        self.encoder = codec.encoder
        self.quantizer = codec.quantizer
        self.bandwidth = bandwidth

    def forward(self, audio):
        return self.quantizer.encode(self.encoder(audio), self.bandwidth).transpose(0, 1)
