"""Checkpoint -> model folder: four validated ONNX graphs, the tokenizer and the manifest.

The steps live in their own modules: :mod:`.sources` (which checkpoint), :mod:`.graph_specs` (what each
graph is), :mod:`.tracing` (trace + streamed write), :mod:`.precision` (fp16 / int8 / int4),
:mod:`.graph_validation` (ONNX vs torch), :mod:`.folder_manifest` and :mod:`.atomic_folder` (what is
written, and that it appears whole or not at all). This module orders them and frees memory in between.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..runtime.errors import ExportError
from ..runtime.manifest import MANIFEST_NAME, sha256_file
from ..runtime.session import release_freed_memory
from . import checkpoint as ckpt_mod
from . import folder_manifest, graph_validation, mapped_weights, placeholders, precision as precision_mod, validate
from .atomic_folder import partial_folder
from .graph_specs import STREAMED_GRAPHS, graph_specs
from .options import ExportOptions
from .progress import timed_steps
from .sources import resolve
from .tracing import export_graph

log = logging.getLogger(__name__)

# onnxruntime's GroupQueryAttention (the static cache) takes head sizes that are multiples of 8 only
# (audiocraft trains models with head size 12, for instance); such models get the concat cache.
STATIC_HEAD_MULTIPLE = 8


def export(checkpoint: str, out_dir: str | os.PathLike, options: ExportOptions | None = None, *,
           progress: Callable[[str], None] | None = None, **option_values) -> Path:
    """Export ``checkpoint`` into ``out_dir``; returns the folder. ``option_values``: the fields of
    :class:`ExportOptions` as keywords (``export(ckpt, out, precision="int8")``), applied over ``options``."""
    options = ExportOptions(**option_values) if options is None else dataclasses.replace(options, **option_values)
    progress = progress or (lambda msg: log.info(msg))
    out = Path(out_dir)
    if out.exists() and not options.force:
        raise ExportError(f"output folder {str(out)!r} already exists; pass --force to replace it")
    step = timed_steps(progress)
    ckpt = resolve(checkpoint, allow_pickle=options.allow_pickle, text_encoder=options.text_encoder,
                   codec=options.codec)
    if options.stems is not None and ckpt.conditioning != "prefix":
        raise ExportError(f"--stems: checkpoint {checkpoint!r} is text-only (no melody to separate); "
                          f"use export-stems for a stems-only folder")
    kv_cache = choose_kv_cache(ckpt.config, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    need = int(sum(p.stat().st_size for p in ckpt.weight_files) * 1.2) + (50 << 20)
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise ExportError(f"not enough disk space in {str(out.parent)!r}: {free >> 20} MB free, "
                          f"about {need >> 20} MB needed")
    demucs = None
    if options.stems is not None:  # before the minutes of the MusicGen graphs: a bad DEMUCS fails first
        from . import stems as stems_mod

        step(f"loading demucs model {options.stems}")
        demucs, demucs_source = stems_mod.load_demucs(options.stems, options.allow_pickle)
    step(f"loading {checkpoint} ({ckpt.source_format} format, {ckpt.conditioning} conditioning)")
    model = ckpt_mod.load_model(ckpt)
    tokenizer_json = ckpt_mod.load_tokenizer_json(ckpt)
    validate.check_tokenizer(tokenizer_json)
    # cases: the validation cases, inside the partial folder (so a killed export leaves no stray files)
    # and gone before it is renamed into place.
    with partial_folder(out) as tmp, tempfile.TemporaryDirectory(dir=tmp, prefix=".cases-") as cases:
        specs = graph_specs(model, ckpt.conditioning, kv_cache)
        graphs = _export_graphs(model, ckpt, specs, kv_cache, options, tmp, Path(cases), step)
        stems_params = None
        if demucs is not None:
            stems_graphs, stems_params = stems_mod.export_stems(demucs, tmp, options.opset, options.validate_graphs,
                                                                step, options.stems_fast)
            graphs.update(stems_graphs)
        (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        manifest = folder_manifest.build_manifest(
            model, ckpt, graphs, kv_cache, options.source_label, options.reference or ckpt.source_format,
            tokenizer_sha256=sha256_file(tmp / "tokenizer.json"), kv_dtype=options.kv_dtype_written)
        if options.precision in precision_mod.QUANT_BITS:
            manifest = dataclasses.replace(manifest, source={
                **manifest.source, "decoder_quant": precision_mod.quant_source(options.precision, options.quant_block)})
        if demucs is not None:
            manifest = dataclasses.replace(manifest, stems=stems_params,
                                           source={**manifest.source, "stems": demucs_source,
                                                   **stems_mod.fast_source(graphs)})
        step("measuring the audio decoder's look-ahead")
        manifest = folder_manifest.with_codec_lookahead(tmp, manifest)
        (tmp / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    step(f"done: {out}")
    return out


def choose_kv_cache(config: dict, options: ExportOptions) -> str:
    """The cache asked for, or (none asked) the static one where GroupQueryAttention can run the model's
    head size and concat otherwise; a static cache asked for a head size it cannot run is refused."""
    dec = config.get("decoder") or {}
    heads, hidden = dec.get("num_attention_heads"), dec.get("hidden_size")
    head_size = hidden // heads if isinstance(heads, int) and isinstance(hidden, int) and heads > 0 else None
    fits = head_size is None or head_size % STATIC_HEAD_MULTIPLE == 0
    if options.kv_cache == "static" and not fits:
        raise ExportError(f"kv_cache 'static' needs a head size that is a multiple of {STATIC_HEAD_MULTIPLE} "
                          f"(onnxruntime's GroupQueryAttention); this model's is {head_size}: use --kv-cache concat")
    if options.kv_cache is not None:
        return options.kv_cache
    if fits:
        return "static"
    if options.kv_dtype == "fp16":
        raise ExportError(f"kv_dtype 'fp16' needs the static KV cache, which needs a head size that is a multiple "
                          f"of {STATIC_HEAD_MULTIPLE}; this model's is {head_size}")
    log.warning("head size %s is not a multiple of %d (onnxruntime's GroupQueryAttention): exporting the concat "
                "KV cache", head_size, STATIC_HEAD_MULTIPLE)
    return "concat"


def _export_graphs(model, ckpt, specs, kv_cache: str, options: ExportOptions, tmp: Path, cases: Path,
                   step) -> dict:
    """Write, convert and validate each graph into ``tmp``; returns their manifest entries in the usual order."""
    by_name = {s.name: s for s in specs}
    references = {}
    if options.validate_graphs:
        with mapped_weights.released_after_use(model):  # the reference runs hand mapped weights back after use
            references = graph_validation.references(model, ckpt.conditioning, specs, step, options.atol,
                                                     options.rtol, cases)
    # From here on the big graphs' weights are placeholders: the real ones are read from the
    # checkpoint one at a time while writing, and the model no longer holds them in memory.
    markers = placeholders.swap_in(model, [by_name[n].module for n in STREAMED_GRAPHS],
                                   placeholders.CheckpointTensors(ckpt.weight_files))
    _drop_weights(model.audio_encoder)  # the codec graphs' wrappers hold folded copies of their own
    release_freed_memory()
    graphs = {}
    precision = options.precision
    # The codec first: its real weights are dropped before the big graphs are exported and validated.
    for spec in sorted(specs, key=lambda s: s.name in STREAMED_GRAPHS):
        path = tmp / f"{spec.name}.onnx"
        step(f"exporting {spec.name}")
        graph_precision = precision
        export_graph(spec, path, options.opset, markers if spec.name in STREAMED_GRAPHS else None)
        if precision == "fp16" and spec.name in ("text_encoder", "decoder"):
            precision_mod.to_fp16(path)
        elif precision in precision_mod.QUANT_BITS and spec.name == "decoder":
            precision_mod.quantize(path, precision, kv_fp16=options.kv_dtype == "fp16",
                                   block_size=options.quant_block)
        elif precision != "fp32":
            graph_precision = "fp32"  # the codec (and, quantised, the text encoder) stay fp32
        release_freed_memory()
        if options.validate_graphs:
            step(f"validating {spec.name} against its torch module")
            graph_validation.validate_graph(spec, path, graph_precision, references.pop(spec.name),
                                            options.atol, options.rtol)
            release_freed_memory()
        graphs[spec.name] = folder_manifest.graph_info(tmp, spec.name, spec.input_names, spec.output_names,
                                                       graph_precision)
        if spec.name not in STREAMED_GRAPHS:
            _drop_weights(spec.module)
            release_freed_memory()
    return {spec.name: graphs[spec.name] for spec in specs}


def _drop_weights(module: torch.nn.Module) -> None:
    """Free a module's parameters and buffers once nothing needs them: the codec (~0.24 GB for EnCodec
    32 kHz) is in memory three times (the model's, and a weight-norm-folded copy in each codec graph's
    wrapper), none of them needed while the text encoder and decoder are exported and validated."""
    with torch.no_grad():
        for p in module.parameters():
            p.data = torch.empty(0, dtype=p.dtype)
        for sub in module.modules():
            for name, b in sub.named_buffers(recurse=False):
                if b is not None:
                    setattr(sub, name, torch.empty(0, dtype=b.dtype))
