"""Precision passes over a traced graph: fp16 (CUDA tier) and weight-only int8 / int4 (CPU tiers).

Each pass reads the fp32 file's weights from disk as it goes and writes the result through
:func:`.tracing.write_graph`, so no pass holds a full-size graph's weights twice.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import external_data
from .tracing import load_skeleton, write_graph

# int8/int4: weight-only MatMulNBits for the decoder's matmuls, block 32 by default, symmetric, int8
# compute on CPU (accuracy level 4). The LM heads get 8 bits in both tiers, always in blocks of
# QUANT_BLOCK: measured harmless on the full-size small architecture (int4 tier: top-1 and KL vs fp32
# unchanged) and 8% faster than fp32 heads; they are a small share of the work, so a coarser block
# would buy little there. The embeddings (Gather), the text encoder and the codec stay fp32.
QUANT_BITS = {"int8": 8, "int4": 4}
QUANT_BLOCK = 32
# The block sizes offered: MatMulNBits takes powers of two from 16. Coarser blocks are faster on CPU
# (measured: benchmarks/bench_quant_block.py) and coarser in precision (one scale per block).
QUANT_BLOCKS = (16, 32, 64, 128, 256)
QUANT_ACCURACY_LEVEL = 4  # MatMulNBits computes in int8 on CPU (activations quantised per block)


def quant_source(precision: str, block_size: int) -> str:
    """The manifest's record of how the decoder was quantised (its ``source`` entry ``decoder_quant``)."""
    return (f"{precision}: MatMulNBits {QUANT_BITS[precision]}-bit, block {block_size}, symmetric, "
            f"accuracy level {QUANT_ACCURACY_LEVEL}; LM heads 8-bit, block {QUANT_BLOCK}")


def to_fp16(path: Path) -> None:
    """fp16 weights and compute, fp32 inputs/outputs (CUDA tier; layer norms and softmax kept safe by ORT).
    Streamed: the converter sees each external tensor with no elements (it only reads their type and
    shape), and each converted one's bytes are cast, with the converter's own clamping, while writing."""
    from onnx import TensorProto, helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model, regions = load_skeleton(path)
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
                                    node_block_list=sorted(position_nodes(model)))
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
    write_graph(fp16, path, sources)


def quantize(path: Path, precision: str, kv_fp16: bool = False, block_size: int = QUANT_BLOCK) -> None:
    """Streamed: the quantizer reads each MatMul weight through onnx_ir, which maps it from the fp32 data
    file (resolved against the working directory, hence the relative location), one weight at a time;
    the quantised weights are small and stay in memory until the write."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # it logs every node at INFO
    model, regions = load_skeleton(path)
    here = os.path.relpath(path.parent, os.getcwd())
    for t in external_data.tensors(model.graph):
        if t.name in regions:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = os.path.join(here, entry.value)
    heads = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name.startswith("/heads.")]
    for bits, block, scope in ((QUANT_BITS[precision], block_size, {"nodes_to_exclude": heads}),
                               (8, QUANT_BLOCK, {"nodes_to_include": heads})):
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True,
                                         accuracy_level=QUANT_ACCURACY_LEVEL, **scope)
        quantizer.process()
        model = quantizer.model.model
    if kv_fp16:
        _kv_to_fp16(model)
    sources = {}
    for t in external_data.tensors(model.graph):
        if t.name in regions:
            external_data.detach(t)
            sources[t.name] = external_data.Source(regions[t.name].read, regions[t.name].length)
    write_graph(model, path, sources)  # one write of the (large) quantised decoder


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


def position_nodes(model) -> set[str]:
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
