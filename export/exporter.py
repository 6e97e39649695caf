"""Checkpoint -> model folder: four validated ONNX graphs, the tokenizer and the manifest.

The folder is built in a temporary sibling and renamed into place only when everything has been
exported and validated, so an interrupted or failed export never leaves a folder that looks done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..runtime.errors import ExportError
from ..runtime.roles import STEP_INPUTS
from ..runtime.options import GenerationOptions
from ..runtime.manifest import (
    KV_CACHES, KV_DTYPES, MANIFEST_NAME, PRECISIONS, REFERENCES, ChromaParams, GraphInfo, Manifest, sha256_file,
)
from ..runtime.session import SessionSettings, open_session, release_freed_memory
from . import checkpoint as ckpt_mod
from . import external_data, mapped_weights, placeholders, validate
from .wrappers import AudioDecoder, AudioEncoder, Decoder, TextEncoder, static_step_inputs

log = logging.getLogger(__name__)

# int8/int4: weight-only MatMulNBits for the decoder's matmuls, block 32, symmetric, int8 compute on
# CPU (accuracy level 4). The LM heads get 8 bits in both tiers: measured harmless on the full-size
# small architecture (int4 tier: top-1 and KL vs fp32 unchanged) and 8% faster than fp32 heads. The
# embeddings (Gather), the text encoder and the codec stay fp32.
QUANT_BITS = {"int8": 8, "int4": 4}
QUANT_BLOCK = 32
# Weights go to NAME.onnx.data above this size (protobuf's own limit is 2 GiB). onnxruntime maps external
# data straight into tensors, while an inline graph is held twice while it loads: the melody int8 decoder
# peaked 2629 MB over its 1866 MB steady state inline, 1822 MB external (README, "Memory").
EXTERNAL_DATA_THRESHOLD = 64_000_000


@dataclass
class GraphSpec:
    """Everything needed to export and validate one graph."""

    name: str
    module: torch.nn.Module
    example: tuple
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    cases: list[tuple] = field(default_factory=list)  # validation inputs beyond the example


def _layer_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def graph_specs(model, conditioning: str, kv_cache: str = "static") -> list[GraphSpec]:
    """Wrappers, example inputs, names and dynamic axes of the four graphs of one checkpoint."""
    cfg = model.config
    gen = torch.Generator().manual_seed(7)
    K = cfg.decoder.num_codebooks
    H = cfg.decoder.num_attention_heads
    d = cfg.decoder.hidden_size
    hd = d // H
    L = cfg.decoder.num_hidden_layers
    vocab = cfg.text_encoder.vocab_size
    text_encoder = TextEncoder(model, conditioning).eval()
    decoder = Decoder(model, conditioning, kv_cache).eval()
    static = kv_cache == "static"
    batch_axes = {0: "batch_x_cfg"}

    def text_inputs(batch, length, frames=None):
        ids, mask = validate.random_text(batch, length, vocab, gen)
        if conditioning == "prefix":
            return (ids, mask, validate.random_onehot_chroma(batch, frames, cfg.num_chroma, gen))
        return (ids, mask)

    te_names = ["input_ids", "attention_mask"]
    te_axes = {"input_ids": {0: "batch_x_cfg", 1: "text_length"}, "attention_mask": {0: "batch_x_cfg", 1: "text_length"}}
    if conditioning == "prefix":
        te_names.append("chroma")
        te_axes["chroma"] = {0: "batch_x_cfg", 1: "chroma_frames"}
        te_out = ["encoder_hidden_states"]
        te_axes["encoder_hidden_states"] = {0: "batch_x_cfg", 1: "prefix_length"}
        te_cases = [text_inputs(1, 3, 300), text_inputs(4, 9, 1), text_inputs(3, 6, 235)]
        te_example = text_inputs(2, 7, 11)
    else:
        te_out = _layer_names("cross", L)
        te_axes.update({n: {0: "batch_x_cfg", 2: "text_length"} for n in te_out})
        te_cases = [text_inputs(1, 3), text_inputs(4, 9)]
        te_example = text_inputs(2, 7)

    past_in = _layer_names("past", L)
    present_out = _layer_names("present", L)

    def decoder_inputs(batch, new_len, past_len, prefix_len=0, text_len=6):
        ids = torch.randint(0, cfg.decoder.vocab_size + 1, (batch, K, new_len), generator=gen)
        if conditioning == "prefix":
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

    de_names = ["input_ids"]
    de_axes = {"input_ids": {0: "batch_x_cfg", 2: "new_length"}}
    if conditioning == "prefix":
        de_names.append("prefix_embeds")
        de_axes["prefix_embeds"] = {0: "batch_x_cfg", 1: "prefix_length"}
        de_example = decoder_inputs(2, 1, 0, prefix_len=12)
        de_cases = [decoder_inputs(2, 1, 13), decoder_inputs(6, 3, 0, prefix_len=20), decoder_inputs(1, 1, 40)]
        if not static:  # GroupQueryAttention takes several new columns only on an empty past
            de_cases.append(decoder_inputs(4, 2, 5, prefix_len=3))
    else:
        cross = _layer_names("cross", L)
        de_names += ["encoder_attention_mask", *cross]
        de_axes["encoder_attention_mask"] = {0: "batch_x_cfg", 1: "text_length"}
        de_axes.update({n: {0: "batch_x_cfg", 2: "text_length"} for n in cross})
        de_example = decoder_inputs(2, 1, 0)
        de_cases = [decoder_inputs(2, 1, 13, text_len=3), decoder_inputs(6, 3, 0, text_len=9),
                    decoder_inputs(1, 1, 40, text_len=1)]
    if static:
        de_names += STEP_INPUTS
        # prefix models: the prefix plus the new columns, so not input_ids' new_length (a shared name would let
        # onnxruntime plan one buffer for both sizes)
        de_axes.update({"position_ids": {0: "batch_x_cfg", 1: "new_positions"}, "seqlens_k": batch_axes})
    de_names += past_in
    cache_axis = "max_length" if static else "past_length"
    de_axes.update({n: {0: "batch_x_cfg", 2: cache_axis} for n in past_in})
    de_axes["logits"] = batch_axes
    de_axes.update({n: {0: "batch_x_cfg", 2: "max_length" if static else "total_length"} for n in present_out})

    codec = model.audio_encoder
    bandwidth = codec.config.target_bandwidths[0]
    Kc = codec.quantizer.get_num_quantizers_for_bandwidth(bandwidth)
    hop = int(np.prod(codec.config.upsampling_ratios))
    audio_decoder = AudioDecoder(codec).eval()
    audio_encoder = AudioEncoder(codec, bandwidth).eval()

    def codes(batch, frames):
        return (torch.randint(0, codec.config.codebook_size, (batch, Kc, frames), generator=gen),)

    def wave(batch, samples):
        return (torch.randn(batch, 1, samples, generator=gen) * 0.1,)

    return [
        GraphSpec("text_encoder", text_encoder, te_example, te_names, te_out, te_axes, te_cases),
        GraphSpec("decoder", decoder, de_example, de_names, ["logits", *present_out], de_axes, de_cases),
        GraphSpec("audio_decoder", audio_decoder, codes(2, 10), ["audio_codes"], ["audio_values"],
                  {"audio_codes": {0: "batch", 2: "frames"}, "audio_values": {0: "batch", 2: "samples"}},
                  [codes(1, 5), codes(3, 37), codes(1, 150)]),
        GraphSpec("audio_encoder", audio_encoder, wave(2, hop * 10), ["audio_values"], ["audio_codes"],
                  {"audio_values": {0: "batch", 2: "samples"}, "audio_codes": {0: "batch", 2: "frames"}},
                  [wave(1, hop * 5), wave(3, hop * 7 + 123), wave(1, hop * 40 - 1)]),
    ]


def _export_graph(spec: GraphSpec, path: Path, opset: int, markers: dict | None = None) -> None:
    """Trace ``spec`` into ``path``. torch serialises only the graph (``export_params=False``): with its
    parameters a graph under 2 GB becomes one in-memory proto, held three times over (torch's proto, its
    bytes, onnx's copy; musicgen-small's decoder peaked at 5.8 GB for a 1.5 GB file), and a bigger one is
    scattered over one scratch file per tensor. The initializers torch would have written are taken as
    it hands them to its serialiser and written here one at a time: ``markers`` (:mod:`.placeholders`)
    resolve to checkpoint tensors read when the writer reaches them, the rest come from memory."""
    import onnx

    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        raw = Path(scratch) / path.name
        with warnings.catch_warnings(), torch.no_grad(), _initializers_of_export() as params:
            warnings.simplefilter("ignore")
            torch.onnx.export(
                spec.module, spec.example, str(raw), input_names=spec.input_names,
                output_names=spec.output_names, dynamic_axes=spec.dynamic_axes, opset_version=opset,
                dynamo=False, do_constant_folding=True, export_params=False,
            )
        model = onnx.load(str(raw))
    _write(model, path, _as_initializers(model, params, markers or {}))


_EXPORT_LOCK = threading.Lock()


@contextlib.contextmanager
def _initializers_of_export():
    """The initializers (name -> tensor) of the graph being exported, as torch's exporter passes them to
    its serialiser (after constant folding and de-duplication): the one call in between is wrapped."""
    captured: dict[str, torch.Tensor] = {}
    _EXPORT_LOCK.acquire()  # the wrapped call is process-wide (torch's exporter has global state anyway)
    original = torch._C._jit_pass_onnx_deduplicate_initializers

    def capture(*args):
        params = original(*args)
        captured.clear()
        captured.update(params)
        return params

    torch._C._jit_pass_onnx_deduplicate_initializers = capture
    try:
        yield captured
    finally:
        torch._C._jit_pass_onnx_deduplicate_initializers = original
        _EXPORT_LOCK.release()


def _as_initializers(model, params: dict[str, torch.Tensor], markers: dict) -> dict[str, external_data.Source]:
    """Turn the graph inputs that torch left for ``params`` back into initializers, in torch's order and
    encoding (dims, data type, name, raw data), each with a :class:`Source` for its bytes: a checkpoint
    tensor for a marker (as is or transposed), the tensor itself otherwise (made contiguous on read)."""
    from onnx import TensorProto, helper

    graph = model.graph
    inputs = list(graph.input)
    missing = sorted(set(params) - {i.name for i in inputs})
    if missing:
        raise ExportError(f"torch exported initializers that are not graph inputs: {', '.join(missing[:5])}")
    del graph.input[:]
    sources = {}
    for value in inputs:
        tensor = params.get(value.name)
        if tensor is None:
            graph.input.append(value)
            continue
        dtype = helper.np_dtype_to_tensor_dtype(np.dtype(str(tensor.dtype).removeprefix("torch.")))
        proto = TensorProto(name=value.name, dims=tuple(tensor.shape), data_type=dtype)
        graph.initializer.append(proto)
        found = None
        if tensor.dtype == torch.float32 and tensor.numel() >= 3:
            probe = np.array([tensor[idx].item() for idx in _probe_indices(tuple(tensor.shape))], np.float32)
            found = placeholders.resolve(value.name, dtype, tuple(tensor.shape), probe, markers)
        if found is None:
            sources[value.name] = external_data.Source(lambda t=tensor: t.detach().contiguous().numpy().tobytes(),
                                                       tensor.numel() * tensor.element_size())
        else:
            weight, transposed = found
            sources[value.name] = external_data.Source(
                lambda w=weight, tr=transposed: _tensor_bytes(w.read(), tr), 4 * int(np.prod(weight.shape)))
    return sources


def _probe_indices(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Indices of the first two and the last element in row-major order, read one element at a time
    (a marker is an expanded view: flattening it would make the full tensor)."""
    return [tuple(int(i) for i in np.unravel_index(flat, shape)) for flat in (0, 1, int(np.prod(shape)) - 1)]


def _tensor_bytes(tensor: torch.Tensor, transposed: bool) -> bytes:
    return (tensor.t() if transposed else tensor).contiguous().numpy().tobytes()


def _write(model, path: Path, sources: dict) -> None:
    """exporter's one rule, streamed: a data file above EXTERNAL_DATA_THRESHOLD, inline otherwise."""
    external_data.write(model, path, sources, external_data.data_bytes(model, sources) > EXTERNAL_DATA_THRESHOLD)


def _load_skeleton(path: Path):
    """The graph without its external bytes, and where each external tensor's bytes are."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return model, external_data.file_regions(model, path.parent)


def _to_fp16(path: Path) -> None:
    """fp16 weights and compute, fp32 inputs/outputs (CUDA tier; layer norms and softmax kept safe by ORT).
    Streamed: the converter sees each external tensor with no elements (it only reads their type and
    shape), and each converted one's bytes are cast, with the converter's own clamping, while writing."""
    from onnx import TensorProto, helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model, regions = _load_skeleton(path)
    shapes = {}
    for t in external_data.tensors(model.graph):
        if t.name in regions:
            external_data.detach(t)
            shapes[t.name] = (tuple(t.dims), t.data_type)
            del t.dims[:]
            t.dims.append(0)
    # Everything crosses the graph boundary in fp32 except the KV cache, which stays fp16 so that the
    # static cache's buffers are the graph's own tensors (a cast in between would defeat in-place updates).
    io = [v.name for v in [*model.graph.input, *model.graph.output] if not v.name.startswith(("past.", "present."))]
    fp16 = convert_float_to_float16(model, keep_io_types=io, disable_shape_infer=True,
                                    node_block_list=sorted(_position_nodes(model)))
    sources = {}
    for t in external_data.tensors(fp16.graph):
        if t.name not in shapes:
            continue
        dims, dtype = shapes[t.name]
        del t.dims[:]
        t.dims.extend(dims)
        region = regions[t.name]
        if dtype == TensorProto.FLOAT and t.data_type == TensorProto.FLOAT16:
            sources[t.name] = external_data.Source(external_data.float16_bytes(region.read), region.length // 2)
        else:
            sources[t.name] = external_data.Source(region.read, region.length)
    for info in fp16.graph.value_info:  # the converter described each converted initializer by its shape
        if info.name in shapes:
            info.CopyFrom(helper.make_tensor_value_info(info.name, info.type.tensor_type.elem_type, shapes[info.name][0]))
    _write(fp16, path, sources)


def _quantize(path: Path, precision: str, kv_fp16: bool = False) -> None:
    """Streamed: the quantizer reads each MatMul weight through onnx_ir, which maps it from the fp32 data
    file (resolved against the working directory, hence the relative location), one weight at a time;
    the quantised weights are small and stay in memory until the write."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # it logs every node at INFO
    model, regions = _load_skeleton(path)
    here = os.path.relpath(path.parent, os.getcwd())
    for t in external_data.tensors(model.graph):
        if t.name in regions:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = os.path.join(here, entry.value)
    heads = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name.startswith("/heads.")]
    for bits, scope in ((QUANT_BITS[precision], {"nodes_to_exclude": heads}), (8, {"nodes_to_include": heads})):
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=QUANT_BLOCK, is_symmetric=True,
                                         accuracy_level=4, **scope)
        quantizer.process()
        model = quantizer.model.model
    if kv_fp16:
        _kv_to_fp16(model)
    sources = {}
    for t in external_data.tensors(model.graph):
        if t.name in regions:
            external_data.detach(t)
            sources[t.name] = external_data.Source(regions[t.name].read, regions[t.name].length)
    _write(model, path, sources)  # one write of the (large) quantised decoder


def _kv_to_fp16(model) -> None:
    """An fp16 KV cache around a quantised decoder: the cache crosses the graph boundary and is attended
    over in fp16 (each GroupQueryAttention gets fp16 q/k/v and casts its output back), the rest of the
    graph is untouched. It halves the largest allocation of a long generation (musicgen-melody, 10 s with
    CFG: 0.88 -> 0.44 GB); the static cache's buffers stay the graph's own tensors. Edits ``model`` in place."""
    from onnx import TensorProto, helper

    graph = model.graph
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past.", "present.")):
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    nodes = []
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            nodes.append(node)
            continue
        for i in (0, 1, 2):  # query, key, value
            half = f"{node.input[i]}/fp16"
            nodes.append(helper.make_node("Cast", [node.input[i]], [half], to=TensorProto.FLOAT16,
                                          name=f"{node.name}/cast_in{i}"))
            node.input[i] = half
        out = node.output[0]
        node.output[0] = f"{out}/fp16"
        nodes += [node, helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT,
                                         name=f"{node.name}/cast_out")]
    del graph.node[:]
    graph.node.extend(nodes)


def _position_nodes(model) -> set[str]:
    """Nodes computing the sinusoidal positions (int -> Cast -> ... -> Sin/Cos): kept fp32, because fp16
    cannot even represent position 2049 exactly, let alone its angle."""
    producer = {out: node for node in model.graph.node for out in node.output}
    keep: set[str] = set()
    stack = [t for n in model.graph.node if n.op_type in ("Sin", "Cos") for t in [*n.input]]
    keep |= {n.name for n in model.graph.node if n.op_type in ("Sin", "Cos")}
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in keep:
            continue
        keep.add(node.name)
        if node.op_type != "Cast":  # the int -> float cast is where the position path starts
            stack.extend(node.input)
    return keep


def _files_of(folder: Path, name: str) -> list[Path]:
    files = [folder / f"{name}.onnx"]
    data = folder / f"{name}.onnx.data"
    if data.exists():
        files.append(data)
    return files


# The runtime's session settings on CPU, with the node order that keeps an fp16 graph's fp32 weight
# copies one at a time (melody-large fp16 decoder: validation peaked at 19 GB with the default order).
VALIDATION_SESSION = SessionSettings(priority_order=True)

# The graphs traced with placeholder weights (the big ones); the codec keeps its real weights (its
# convolutions' weight norm folds two parameters into one initializer, and it is small).
STREAMED_GRAPHS = ("text_encoder", "decoder")


def _reference_cases(spec: GraphSpec):
    """``(inputs, torch outputs)`` of every validation case, computed while the real weights are loaded,
    so that validation can run after they have been dropped."""
    with torch.no_grad():
        for case in [spec.example, *spec.cases]:
            want = spec.module(*case)
            yield case, (want if isinstance(want, tuple) else (want,))


def _store_references(spec: GraphSpec, folder: Path) -> list[Path]:
    """Keep each validation case (inputs and torch outputs) in a file of its own, read back one at a time
    while validating: held in memory, the decoder's cases (KV caches of 48 layers at several batch sizes)
    were ~0.45 GB of melody-large's export peak, next to a 4.9 GB fp16 decoder. ``spec.cases`` is emptied."""
    files = []
    for n, (case, want) in enumerate(_reference_cases(spec)):
        path = folder / f"{spec.name}.{n}.npz"
        np.savez(path, *[t.numpy() for t in case], *[t.numpy() for t in want])
        files.append(path)
    spec.cases = []
    return files


def _load_case(path: Path, inputs: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    with np.load(path) as stored:
        arrays = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    return arrays[:inputs], arrays[inputs:]


def _validate_graph(spec: GraphSpec, path: Path, precision: str, cases: list[Path],
                    atol: float | None = None, rtol: float | None = None) -> None:
    """``cases``: the files :func:`_store_references` wrote for this graph."""
    session = open_session(path, VALIDATION_SESSION)
    if spec.name == "audio_encoder":  # codes from an argmin: judged by the fraction that differ
        tol = validate.CODE_MISMATCH[precision]
    else:
        tol = validate.TOLERANCES[precision][spec.name].overridden(atol, rtol)
    input_types = {i.name: i.type for i in session.get_inputs()}
    for n, file in enumerate(cases):
        case, want = _load_case(file, len(spec.input_names))
        feeds = {name: a.astype(np.float16) if input_types[name] == "tensor(float16)" else a
                 for name, a in zip(spec.input_names, case)}
        got = session.run(spec.output_names, feeds)
        if "total_sequence_length" in feeds:  # static cache: only the filled part of each buffer is defined
            total = int(feeds["total_sequence_length"])
            got = [got[0], *[g[:, :, :total] for g in got[1:]]]
            want = [want[0], *[w[:, :, :total] for w in want[1:]]]
        shape = ", ".join(f"{k}={tuple(v.shape)}" for k, v in list(feeds.items())[:2])
        validate.compare(spec.name, spec.output_names, got, want, tol, f" (case {n}: {shape})")
        del case, want, feeds, got


def _references(model, ckpt, specs, by_name, validate_graphs: bool, step, atol, rtol,
                folder: Path) -> dict[str, list[Path]]:
    """Check the wrappers against transformers and compute every graph's torch outputs on its validation
    cases (kept in ``folder``): the only time the real weights are needed in memory."""
    if not validate_graphs:
        return {}
    step("checking the export wrappers against transformers")
    validate.check_wrappers_against_transformers(
        model, by_name["text_encoder"].module, by_name["decoder"].module, ckpt.conditioning,
        validate.WRAPPER_TOLERANCE.overridden(atol, rtol))
    validate.check_codec_against_transformers(
        model.audio_encoder, by_name["audio_decoder"].module, by_name["audio_encoder"].module,
        validate.CODEC_WRAPPER_TOLERANCE.overridden(atol, rtol))
    step("computing the torch reference outputs")
    return {spec.name: _store_references(spec, folder) for spec in specs}


def export(
    checkpoint: str,
    out_dir: str | os.PathLike,
    precision: str = "fp32",
    opset: int = 17,
    validate_graphs: bool = True,
    force: bool = False,
    allow_pickle: bool = False,
    kv_cache: str = "static",
    kv_dtype: str | None = None,
    progress: Callable[[str], None] | None = None,
    source_label: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    text_encoder: str | None = None,
    codec: str | None = None,
    reference: str | None = None,
    stems: str | None = None,
    _fail_after: str | None = None,
) -> Path:
    """Export ``checkpoint`` into ``out_dir``; returns the folder. ``atol`` / ``rtol`` replace the
    validation tolerances of every graph (``max|diff| <= atol + rtol * max|reference|``), as optimum's
    ``--atol`` does. ``text_encoder`` / ``codec``: folders for the parts an audiocraft checkpoint only names
    (export/audiocraft.py). ``reference``: whose behaviour the folder reproduces where transformers and
    audiocraft differ (manifest.REFERENCES; default: the checkpoint's own format). ``stems``: a Demucs model
    (``export/stems.py``) to add as ``stems.onnx``, so that melodies are separated before their chroma as
    audiocraft does. ``_fail_after`` is a test hook."""
    progress = progress or (lambda msg: log.info(msg))
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
    if kv_cache not in KV_CACHES:
        raise ExportError(f"kv_cache {kv_cache!r} is not supported; choose one of {', '.join(KV_CACHES)}")
    if kv_dtype is not None and kv_dtype not in KV_DTYPES:
        raise ExportError(f"kv_dtype {kv_dtype!r} is not supported; choose one of {', '.join(KV_DTYPES)}")
    if kv_dtype == "fp16" and (precision not in QUANT_BITS or kv_cache != "static"):
        raise ExportError(f"kv_dtype 'fp16' needs precision int8 or int4 with the static KV cache (fp16 keeps its "
                          f"cache in fp16 anyway; fp32 stays the exact reference), not {precision}/{kv_cache}")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value < float("inf")):
            raise ExportError(f"{name} must be a finite number >= 0, got {value!r}")
    if reference is not None and reference not in REFERENCES:
        raise ExportError(f"reference {reference!r} is not supported; choose one of {', '.join(REFERENCES)}")
    if not (14 <= opset <= 21):
        raise ExportError(f"opset {opset} is not supported; choose an opset in [14, 21]")
    out = Path(out_dir)
    if out.exists() and not force:
        raise ExportError(f"output folder {str(out)!r} already exists; pass --force to replace it")
    step = timed_steps(progress)
    ckpt = ckpt_mod.resolve(checkpoint, allow_pickle=allow_pickle, text_encoder=text_encoder, codec=codec)
    if stems is not None and ckpt.conditioning != "prefix":
        raise ExportError(f"--stems: checkpoint {checkpoint!r} is text-only (no melody to separate); "
                          f"use export-stems for a stems-only folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    need = int(sum(p.stat().st_size for p in ckpt.weight_files) * 1.2) + (50 << 20)
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise ExportError(f"not enough disk space in {str(out.parent)!r}: {free >> 20} MB free, "
                          f"about {need >> 20} MB needed")
    demucs = None
    if stems is not None:  # before the minutes of the MusicGen graphs: a bad DEMUCS fails first
        from . import stems as stems_mod

        step(f"loading demucs model {stems}")
        demucs, demucs_source = stems_mod.load_demucs(stems, allow_pickle)
    step(f"loading {checkpoint} ({ckpt.source_format} format, {ckpt.conditioning} conditioning)")
    model = ckpt_mod.load_model(ckpt)
    tokenizer_json = ckpt_mod.load_tokenizer_json(ckpt)
    validate.check_tokenizer(tokenizer_json)
    # cases: the validation cases, inside the partial folder (so a killed export leaves no stray files)
    # and gone before it is renamed into place.
    with partial_folder(out) as tmp, tempfile.TemporaryDirectory(dir=tmp, prefix=".cases-") as cases:
        specs = graph_specs(model, ckpt.conditioning, kv_cache)
        by_name = {s.name: s for s in specs}
        released = mapped_weights.released_after_use(model) if validate_graphs else contextlib.nullcontext()
        with released:  # the reference runs hand each module's mapped weights back after use
            references = _references(model, ckpt, specs, by_name, validate_graphs, step, atol, rtol, Path(cases))
        # From here on the big graphs' weights are placeholders: the real ones are read from the
        # checkpoint one at a time while writing, and the model no longer holds them in memory.
        markers = placeholders.swap_in(model, [by_name[n].module for n in STREAMED_GRAPHS],
                                       placeholders.CheckpointTensors(ckpt.weight_files))
        _drop_weights(model.audio_encoder)  # the codec graphs' wrappers hold folded copies of their own
        release_freed_memory()
        graphs = {}
        # The codec first: its real weights are dropped before the big graphs are exported and validated.
        for spec in sorted(specs, key=lambda s: s.name in STREAMED_GRAPHS):
            path = tmp / f"{spec.name}.onnx"
            step(f"exporting {spec.name}")
            graph_precision = precision
            _export_graph(spec, path, opset, markers if spec.name in STREAMED_GRAPHS else None)
            if precision == "fp16" and spec.name in ("text_encoder", "decoder"):
                _to_fp16(path)
            elif precision in QUANT_BITS and spec.name == "decoder":
                _quantize(path, precision, kv_fp16=kv_dtype == "fp16")
            elif precision != "fp32":
                graph_precision = "fp32"  # the codec (and, quantised, the text encoder) stay fp32
            release_freed_memory()
            if validate_graphs:
                step(f"validating {spec.name} against its torch module")
                _validate_graph(spec, path, graph_precision, references.pop(spec.name), atol, rtol)
                release_freed_memory()
            files = _files_of(tmp, spec.name)
            graphs[spec.name] = GraphInfo(
                file=path.name, precision=graph_precision, inputs=tuple(spec.input_names),
                outputs=tuple(spec.output_names), files={f.name: sha256_file(f) for f in files},
                roles={n: n for n in [*spec.input_names, *spec.output_names]},  # our tensors are named for their roles
                size_bytes=sum(f.stat().st_size for f in files),
            )
            if _fail_after == spec.name:
                raise ExportError(f"injected failure after {spec.name}")
            if spec.name not in STREAMED_GRAPHS:
                _drop_weights(spec.module)
                release_freed_memory()
        graphs = {spec.name: graphs[spec.name] for spec in specs}  # the manifest lists them in the usual order
        stems_params = None
        if demucs is not None:
            graphs["stems"], stems_params = stems_mod.export_stems(demucs, tmp, opset, validate_graphs, step)
        (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        manifest = build_manifest(model, ckpt, graphs, kv_cache, source_label, reference or ckpt.source_format,
                                  tokenizer_sha256=sha256_file(tmp / "tokenizer.json"),
                                  kv_dtype="fp16" if precision == "fp16" or kv_dtype == "fp16" else "fp32")
        if demucs is not None:
            manifest = dataclasses.replace(manifest, stems=stems_params,
                                           source={**manifest.source, "stems": demucs_source})
        (tmp / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    step(f"done: {out}")
    return out


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


def timed_steps(progress: Callable[[str], None]) -> Callable[[str], None]:
    """``step(msg)`` reports ``[seconds since start] msg``."""
    t0 = time.perf_counter()

    def step(msg: str) -> None:
        progress(f"[{time.perf_counter() - t0:7.1f}s] {msg}")

    return step


@contextlib.contextmanager
def partial_folder(out: Path):
    """A hidden temporary sibling of ``out`` to build in, renamed to ``out`` when the block succeeds and
    removed when it fails: an interrupted export never leaves a folder that looks complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by an export that was killed (kill -9)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the finished folder private
    try:
        yield tmp
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def build_manifest(model, ckpt, graphs: dict[str, GraphInfo], kv_cache: str, source_label: str | None = None,
                   reference: str = "transformers", tokenizer_sha256: str | None = None, kv_dtype: str = "fp32") -> Manifest:
    cfg = model.config
    dec = cfg.decoder
    K = dec.num_codebooks
    stereo = dec.audio_channels == 2
    delays = tuple(k // 2 for k in range(K)) if stereo else tuple(range(K))
    codec = cfg.audio_encoder
    chroma = None
    if ckpt.conditioning == "prefix":
        chroma = ChromaParams(sample_rate=codec.sampling_rate, num_chroma=cfg.num_chroma,
                              chroma_length=cfg.chroma_length)
    gen_cfg = {}
    gen_path = ckpt.folder / "generation_config.json"
    if gen_path.is_file():
        import json

        gen_cfg = json.loads(gen_path.read_text())
    defaults = GenerationOptions(guidance_scale=float(gen_cfg.get("guidance_scale", 3.0)))
    return Manifest(
        conditioning=ckpt.conditioning,
        kv_cache=kv_cache,
        kv_dtype=kv_dtype,
        step_inputs="positions" if kv_cache == "static" else "past_length",
        hidden_size=dec.hidden_size,
        num_layers=dec.num_hidden_layers,
        num_heads=dec.num_attention_heads,
        num_codebooks=K,
        audio_channels=dec.audio_channels,
        delays=delays,
        graphs=graphs,
        text_hidden_size=cfg.text_encoder.d_model,
        text_vocab_size=cfg.text_encoder.vocab_size,
        tokenizer_sha256=tokenizer_sha256,
        codebook_size=dec.vocab_size,
        special_token_id=dec.pad_token_id,
        sample_rate=codec.sampling_rate,
        hop_length=int(np.prod(codec.upsampling_ratios)),
        max_duration=30.0,
        max_positions=None,
        chroma=chroma,
        defaults=defaults,
        source_format=ckpt.source_format,
        reference=reference,
        source={"checkpoint": source_label or ckpt.name, "revision": ckpt.revision, "weights_sha256": ckpt.weights_sha256(),
                "transformers": __import__("transformers").__version__, "torch": torch.__version__},
    )
