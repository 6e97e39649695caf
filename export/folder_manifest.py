"""What the exporter writes about a folder: each graph's manifest entry and the manifest itself."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..runtime.errors import ExportError
from ..runtime.lookahead import folder_lookahead
from ..runtime.manifest import (
    MAX_CODEC_LOOKAHEAD, ChromaParams, GraphInfo, Manifest, checkpoint_defaults, codebook_delays, hop_length,
    sha256_file,
)


def graph_files(folder: Path, name: str) -> list[Path]:
    files = [folder / f"{name}.onnx"]
    data = folder / f"{name}.onnx.data"
    if data.exists():
        files.append(data)
    return files


def graph_info(folder: Path, name: str, inputs, outputs, precision: str) -> GraphInfo:
    """The manifest entry of graph ``name`` as written in ``folder`` (files hashed, sizes summed)."""
    files = graph_files(folder, name)
    return GraphInfo(
        file=f"{name}.onnx", precision=precision, inputs=tuple(inputs), outputs=tuple(outputs),
        files={f.name: sha256_file(f) for f in files},
        roles={n: n for n in [*inputs, *outputs]},  # our tensors are named for their roles
        size_bytes=sum(f.stat().st_size for f in files),
    )


def build_manifest(model, ckpt, graphs: dict[str, GraphInfo], kv_cache: str, source_label: str | None = None,
                   reference: str = "transformers", tokenizer_sha256: str | None = None, kv_dtype: str = "fp32") -> Manifest:
    cfg = model.config
    dec = cfg.decoder
    codec = cfg.audio_encoder
    chroma = None
    if ckpt.conditioning == "prefix":
        chroma = ChromaParams(sample_rate=codec.sampling_rate, num_chroma=cfg.num_chroma,
                              chroma_length=cfg.chroma_length)
    gen_cfg = {}
    gen_path = ckpt.folder / "generation_config.json"
    if gen_path.is_file():
        gen_cfg = json.loads(gen_path.read_text())
    guidance = gen_cfg.get("guidance_scale")
    return Manifest(
        conditioning=ckpt.conditioning,
        kv_cache=kv_cache,
        kv_dtype=kv_dtype,
        step_inputs="positions" if kv_cache == "static" else "past_length",
        hidden_size=dec.hidden_size,
        num_layers=dec.num_hidden_layers,
        num_heads=dec.num_attention_heads,
        num_codebooks=dec.num_codebooks,
        audio_channels=dec.audio_channels,
        delays=codebook_delays(dec.num_codebooks, dec.audio_channels),
        graphs=graphs,
        text_hidden_size=cfg.text_encoder.d_model,
        text_vocab_size=cfg.text_encoder.vocab_size,
        tokenizer_sha256=tokenizer_sha256,
        codebook_size=dec.vocab_size,
        special_token_id=dec.pad_token_id,
        sample_rate=codec.sampling_rate,
        hop_length=hop_length(codec.upsampling_ratios),
        max_duration=30.0,
        max_positions=None,
        chroma=chroma,
        defaults=checkpoint_defaults(dec.vocab_size, None if guidance is None else float(guidance)),
        source_format=ckpt.source_format,
        reference=reference,
        source={"checkpoint": source_label or ckpt.name, "revision": ckpt.revision, "weights_sha256": ckpt.weights_sha256(),
                "transformers": __import__("transformers").__version__, "torch": torch.__version__},
    )


def with_codec_lookahead(folder: Path, manifest: Manifest) -> Manifest:
    """``manifest`` with its audio decoder's look-ahead, measured on the graph written in ``folder``: a
    stream holds each span back by exactly what the graph needs, where it used to hold back 8 frames."""
    found = folder_lookahead(folder, manifest)
    if found is None:
        raise ExportError(f"graph audio_decoder: its look-ahead is not within {MAX_CODEC_LOOKAHEAD} frames (codes "
                          f"{MAX_CODEC_LOOKAHEAD} frames later still change the audio), so it cannot be streamed")
    return dataclasses.replace(manifest, codec_lookahead=found)
