"""Would onnxruntime's CUDA EP put host/device copies into this graph? Checked on the CPU, from the file.

onnxruntime refuses ``enable_cuda_graph`` for a session with any Memcpy node. Memcpy nodes come from
its placement rule for small shape computations (``GetCpuPreferredNodes``, in
onnxruntime/core/framework/fallback_cpu_capability.cc): starting from the consumers of kernel outputs
that live in host memory (``Shape``, ``Size``), a node moves to the CPU when each of its inputs is a
small initializer, a graph input, or a host tensor the CUDA kernel does not take as a host input;
its consumers become candidates in turn. fp16/bf16 inputs keep a node on the device. A copy is then
needed wherever a host tensor feeds a device input or a device tensor feeds a host input.

This module reproduces that rule over the ONNX graph (before onnxruntime's own optimizations, which
only fold what is constant) with the host-input table of the CUDA kernels this project's graphs use.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

# CUDA kernels' inputs declared OrtMemTypeCPUInput (by input index); outputs in host memory
HOST_INPUTS = {
    "Reshape": {1}, "Expand": {1}, "Unsqueeze": {1}, "Squeeze": {1}, "Slice": {1, 2, 3, 4},
    "ConstantOfShape": {0}, "Tile": {1}, "TopK": {1}, "Split": {1}, "CumSum": {1},
    "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMean": {1}, "Pad": {1, 2, 3}, "Resize": {1, 2, 3}, "Trilu": {1},
    "OneHot": {1}, "GroupQueryAttention": {6},
}
HOST_OUTPUTS = {"Shape", "Size"}
# CUDA kernels that read an input with a synchronous device-to-host copy (no capture while one runs there)
SYNC_READS = {"Range"}
SMALL_INITIALIZER = 100  # elements: onnxruntime's kSmallInitializerThreshold
HALF_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Placement:
    cpu_nodes: list[str]  # node names (or op types where unnamed) the rule puts on the CPU
    crossings: list[tuple[str, str]]  # (tensor, "to device" | "to host"): one Memcpy node each
    sync_reads: list[str]  # device nodes of SYNC_READS

    @property
    def capturable(self) -> bool:
        return not self.crossings and not self.sync_reads

    def summary(self) -> str:
        return (f"{len(self.cpu_nodes)} CPU nodes, {len(self.crossings)} host/device copies {self.crossings}, "
                f"{len(self.sync_reads)} synchronous reads {self.sync_reads}")


def placement(model: onnx.ModelProto) -> Placement:
    graph = model.graph
    nodes = list(graph.node)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    sizes = {init.name: int(_numel(init.dims)) for init in graph.initializer}
    for node in nodes:  # onnxruntime turns Constant nodes into initializers on load
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            sizes[node.output[0]] = int(_numel(node.attribute[0].t.dims))
    elem_types = _elem_types(model)
    graph_inputs = {i.name for i in graph.input}
    constant = {i for i, n in enumerate(nodes) if n.op_type == "Constant"}

    host = set()  # tensors in host memory
    candidates = []
    for node in nodes:
        if node.op_type in HOST_OUTPUTS:
            host.update(node.output)
            for out in node.output:
                candidates += consumers.get(out, [])
    cpu, visited = set(), set()
    while candidates:
        i = min(candidates)  # topological order is graph order in exported files
        candidates = [c for c in candidates if c != i]
        if i in visited or i in constant:
            continue
        visited.add(i)
        node = nodes[i]
        place = True
        for index, name in enumerate(node.input):
            if not name:
                continue
            if elem_types.get(name) in HALF_TYPES:
                place = False
                break
            if sizes.get(name, SMALL_INITIALIZER + 1) <= SMALL_INITIALIZER or name in graph_inputs:
                continue
            if name not in host or index in HOST_INPUTS.get(node.op_type, ()):
                place = False
                break
        if place:
            cpu.add(i)
            host.update(node.output)
            for out in node.output:
                candidates += consumers.get(out, [])

    crossings = set()
    for i, node in enumerate(nodes):
        if i in constant:
            continue
        on_cpu = i in cpu
        for index, name in enumerate(node.input):
            if not name or name in sizes or name in graph_inputs:
                continue  # initializers are placed where they are used; feeds are copied before the run
            wants_host = on_cpu or index in HOST_INPUTS.get(node.op_type, ())
            if name in host and not wants_host:
                crossings.add((name, "to device"))
            elif name not in host and wants_host:
                crossings.add((name, "to host"))
    name = lambda i: nodes[i].name or nodes[i].op_type
    sync = [name(i) for i, n in enumerate(nodes) if n.op_type in SYNC_READS and i not in cpu]
    return Placement([name(i) for i in sorted(cpu)], sorted(crossings), sync)


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type is known without running shape inference's full pass."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({i.name: i.data_type for i in g.initializer})
    return types
