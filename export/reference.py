"""The transformers reference, driven the way parity checks need it (tests, ``verify``, benchmarks)."""

from __future__ import annotations

import torch


def load(checkpoint):
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    import json
    from pathlib import Path

    model_type = json.loads((Path(checkpoint) / "config.json").read_text())["model_type"]
    cls = MusicgenMelodyForConditionalGeneration if model_type == "musicgen_melody" else MusicgenForConditionalGeneration
    return cls.from_pretrained(checkpoint).eval(), AutoTokenizer.from_pretrained(checkpoint)


@torch.no_grad()
def generate(model, tokenizer, texts, frames, input_features=None, guidance_scale=3.0, return_scores=False):
    """Greedy ``generate`` for ``frames`` frames; returns ``(codes [B, K, T], audio [B, C, samples])``
    and, with ``return_scores``, the CFG-combined logits of every step ``[B, T + max_delay, K, V]``.

    transformers returns only audio, so the codes are captured where it hands them to EnCodec.
    """
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    kwargs = {k: v.to(model.device) for k, v in enc.items()}  # the model may live on a GPU
    if input_features is not None:
        kwargs["input_features"] = torch.as_tensor(input_features).to(model.device, model.dtype)
    captured = []
    codec = model.audio_encoder
    original = codec.decode

    def capture(audio_codes, *args, **kw):
        captured.append(audio_codes[0].clone())
        return original(audio_codes, *args, **kw)

    codec.decode = capture
    try:
        max_delay = model.decoder.num_codebooks // (2 if model.decoder.config.audio_channels == 2 else 1) - 1
        out = model.generate(**kwargs, do_sample=False, guidance_scale=guidance_scale,
                             max_new_tokens=frames + max_delay, return_dict_in_generate=True,
                             output_scores=return_scores)
    finally:
        del codec.decode
    if model.decoder.config.audio_channels == 2:
        left, right = captured
        codes = torch.empty(left.shape[0], left.shape[1] * 2, left.shape[2], dtype=left.dtype)
        codes[:, 0::2], codes[:, 1::2] = left, right
    else:
        codes = captured[0]
    audio = out.sequences.float().cpu().numpy()
    if not return_scores:
        return codes.cpu().numpy(), audio
    batch, K = codes.shape[0], codes.shape[1]
    scores = torch.stack(out.scores, dim=1).reshape(batch, K, len(out.scores), -1).transpose(1, 2)
    return codes.cpu().numpy(), audio, scores.float().cpu().numpy()


def chroma_features(wavs, sample_rate=32000, n_fft=16384, hop=4096):
    """transformers' MusicgenMelodyFeatureExtractor chroma, rebuilt from torch.stft and transformers'
    ``chroma_filter_bank`` (its own class needs torchaudio, which this machine cannot install beside
    torch 2.13): padding to the longest, central pad below n_fft, |STFT|^2 / sum(w^2), inf-norm, argmax."""
    from transformers.audio_utils import chroma_filter_bank

    longest = max(len(w) for w in wavs)
    batch = torch.stack([torch.nn.functional.pad(torch.as_tensor(w, dtype=torch.float32), (0, longest - len(w)))
                         for w in wavs])
    if batch.shape[-1] < n_fft:
        pad = n_fft - batch.shape[-1]
        batch = torch.nn.functional.pad(batch, (pad // 2, pad // 2 + pad % 2))
    window = torch.hann_window(n_fft)
    stft = torch.stft(batch, n_fft, hop, n_fft, window=window, center=True, pad_mode="reflect",
                      normalized=False, onesided=True, return_complex=True)
    spec = (stft / window.pow(2).sum().sqrt()).abs().pow(2)
    filters = torch.from_numpy(chroma_filter_bank(sampling_rate=sample_rate, num_frequency_bins=n_fft,
                                                  tuning=0, num_chroma=12)).float()
    raw = torch.einsum("cf,...ft->...ct", filters, spec)
    norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6).transpose(1, 2)
    idx = norm.argmax(-1, keepdim=True)
    return torch.zeros_like(norm).scatter_(-1, idx, 1.0).numpy()
