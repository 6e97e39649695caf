"""How far the stems graphs are from what this CPU can do: the arithmetic of one 7.8 s htdemucs segment
(counted from onnxruntime's profile, node by node, from the shapes each node ran with), the time each
kind of node took, and the machine's own ceiling for dense fp32 and int8 products (onnxruntime's MLAS
and torch's oneDNN, measured here, same thread count). From those: the fastest either tier could be
if every product ran at the measured ceiling and nothing else took time, as a ratio to apply_model's
segment measured in the same run. This is what decides whether a speed target is reachable by tuning
or needs less arithmetic.

    python -m benchmarks.roofline_stems --threads 2 [--folder STEMS_FOLDER] [--json out.json]

``--folder`` holds ``stems.onnx`` (and ``stems_fast.onnx`` if it was exported); without it the cached
full-size random-weight export of ``bench_stems`` is used (built on first use).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

# Node kinds whose arithmetic is a dense product; everything else is counted as "other" (time only).
PRODUCTS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "ConvTranspose", "MatMul", "FusedMatMul",
            "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul",
            "MultiHeadAttention", "Attention"}
CONVS = ("Conv", "FusedConv", "QLinearConv", "ConvInteger", "ConvTranspose")  # torch's "convolution", all of them
INT8 = {"QLinearConv", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
        "QLinearMatMul"}


def _shapes(arg: list) -> list[list[int]]:
    return [next(iter(d.values())) for d in arg]


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Node name -> the weight's dims for every conv-like node of the graph file (dims are in the
    protobuf even when the data is external; the profile lists only the activations' shapes)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    index = {"Conv": 1, "ConvInteger": 1, "ConvTranspose": 1, "QLinearConv": 3}
    return {n.name: dims[n.input[index[n.op_type]]] for n in model.graph.node
            if n.op_type in index and len(n.input) > index[n.op_type] and n.input[index[n.op_type]] in dims}


def node_flops(op: str, ins: list[list[int]], outs: list[list[int]], weight: tuple[int, ...] | None) -> float:
    """Multiply-adds x 2 of one node from the shapes it ran with (0 for what is not a dense product).
    Conv-like nodes need the weight's dims (``weight``), matmuls and attention only the activations'.
    A product whose count would be wrong raises rather than bend the floor: a conv without its weight,
    and the kinds whose count depends on attributes the profile does not carry (Gemm's and
    FusedMatMul's transposes, Attention's packed projection weights)."""
    if op in ("Conv", "FusedConv", "ConvInteger", "QLinearConv", "ConvTranspose") and not weight:
        raise ValueError(f"a {op} node without a weight initializer in the graph file: its arithmetic is unknown")
    if op in ("Conv", "FusedConv", "ConvInteger", "QLinearConv"):
        return 2.0 * math.prod(outs[0]) * math.prod(weight[1:])
    if op == "ConvTranspose":
        return 2.0 * math.prod(ins[0]) * math.prod(weight[1:])
    if op in ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul"):
        return 2.0 * math.prod(outs[0]) * ins[0][-1]
    if op == "MultiHeadAttention":  # 3-D query, key and value: Q K^T and softmax x V, B x Lq x Lk x D each
        if len(ins) < 2 or len(ins[0]) != 3 or len(ins[1]) != 3:
            raise ValueError(f"MultiHeadAttention with packed or 4-D inputs {ins}: not counted")
        return 4.0 * math.prod(ins[0]) * ins[1][-2]
    if op in PRODUCTS:
        raise ValueError(f"{op}: no count for this kind (its shapes alone do not give its arithmetic)")
    return 0.0


def _feeds(session) -> dict[str, np.ndarray]:
    """Random float inputs, batch 1, the graph's own sizes otherwise (the stems graphs fix them)."""
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal([1, *i.shape[1:]]).astype(np.float32) for i in session.get_inputs()}


def profile_graph(path: Path, threads: int, rounds: int = 3) -> dict:
    """onnxruntime's profile of one segment (the fastest of ``rounds`` calls: its wall time and its nodes'
    times), the runtime's session options for a stems graph (arena on, shrunk after each run): per node
    kind, milliseconds and GFLOP."""
    import onnxruntime as ort

    from musicgen_onnx.runtime.session import SessionSettings, session_options

    scratch = Path(tempfile.mkdtemp())
    opts = session_options(SessionSettings.resolve("cpu", threads), arena=True)
    opts.enable_profiling, opts.profile_file_prefix = True, str(scratch / "roofline")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    feeds = _feeds(session)
    walls = []
    for _ in range(rounds):
        t = time.perf_counter()
        session.run(None, feeds, shrink)
        walls.append(time.perf_counter() - t)
    events = json.loads(Path(session.end_profiling()).read_text())
    shutil.rmtree(scratch, ignore_errors=True)
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(nodes) // rounds
    best = int(np.argmin(walls))
    weights = weight_shapes(path)
    ms, gflop, count = collections.Counter(), collections.Counter(), collections.Counter()
    for e in nodes[best * per_run:(best + 1) * per_run]:
        a = e["args"]
        op, name = a["op_name"], e["name"][: -len("_kernel_time")]
        ms[op] += e["dur"] / 1e3
        count[op] += 1
        try:
            gflop[op] += node_flops(op, _shapes(a.get("input_type_shape", [])),
                                    _shapes(a.get("output_type_shape", [])), weights.get(name)) / 1e9
        except ValueError as exc:
            raise ValueError(f"{path}: node {name!r}: {exc}") from None
    return {"wall_s": walls[best], "ops": {op: {"ms": ms[op], "gflop": gflop[op], "nodes": count[op]}
                                          for op, _ in ms.most_common()}}


def ceilings(threads: int, sizes=((2688, 512, 2048), (4096, 4096, 4096), (1344, 1536, 384))) -> dict:
    """Best-of-5 GFLOP/s of one dense product at each size (M, K, N): onnxruntime fp32 MatMul (MLAS
    sgemm), onnxruntime int8 MatMulInteger (u8 x s8, MLAS's VNNI kernels where the CPU has them) and
    torch.mm fp32 (oneDNN/MKL)."""
    import torch
    from onnx import TensorProto, helper

    from benchmarks.bench_quant_block import best_of, product_session

    torch.set_num_threads(threads)
    out: dict = {}

    def session(kind: str, m: int, k: int, n: int):
        if kind == "fp32":
            node = helper.make_node("MatMul", ["a", "b"], ["y"])
            ins = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k]),
                   helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])]
            y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
        else:
            node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
            ins = [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k]),
                   helper.make_tensor_value_info("b", TensorProto.INT8, [k, n])]
            y = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
        model = helper.make_model(helper.make_graph([node], "g", ins, [y]), opset_imports=[helper.make_opsetid("", 17)])
        return product_session(model, threads)

    def best(fn) -> float:
        return best_of(fn, 5)[0]

    rng = np.random.default_rng(0)
    for m, k, n in sizes:
        flop = 2.0 * m * k * n
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
        s = session("fp32", m, k, n)
        row = {"ort_fp32": flop / best(lambda: s.run(None, {"a": a, "b": b})) / 1e9}
        qa, qb = rng.integers(0, 255, (m, k), dtype=np.uint8), rng.integers(-127, 127, (k, n), dtype=np.int8)
        s8 = session("int8", m, k, n)
        row["ort_int8"] = flop / best(lambda: s8.run(None, {"a": qa, "b": qb})) / 1e9
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        with torch.no_grad():
            row["torch_fp32"] = flop / best(lambda: torch.mm(ta, tb)) / 1e9
        out[f"{m}x{k}x{n}"] = row
    return out


def torch_segment(demucs: Path, threads: int, rounds: int = 3) -> tuple[float, dict[str, float]]:
    """Seconds of one segment of ``HTDemucs.forward`` in torch (the model apply_model calls), best of
    ``rounds`` after one warm-up: the reference's arithmetic at its own speed. Also torch's own count of
    that arithmetic (``torch.utils.flop_counter``, GFLOP per aten op), a cross-check of the graph count:
    its convolutions must equal the graph's Conv + ConvTranspose (torch does not count the attention, nor
    the projections of its fused self-attention path)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from musicgen_onnx.export.stems import load_demucs

    torch.set_num_threads(threads)
    model = load_demucs(str(demucs))[0].eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 2, int(model.segment * model.samplerate)),
                                                                   dtype=np.float32))
    times = []
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(x)
        for _ in range(rounds):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    counted = {str(op).removeprefix("aten."): n / 1e9 for op, n in counter.get_flop_counts()["Global"].items()}
    return min(times), counted


def bounds(prof: dict, ceil: dict, torch_s: float) -> dict:
    """The fastest a graph could run: its fp32 products at the best fp32 ceiling measured, its int8
    products at the int8 one, everything else free; as x torch's segment."""
    fp32_peak = max(max(r["ort_fp32"], r["torch_fp32"]) for r in ceil.values())
    int8_peak = max(r["ort_int8"] for r in ceil.values())
    ops = prof["ops"]
    fp32 = sum(v["gflop"] for op, v in ops.items() if op in PRODUCTS and op not in INT8)
    int8 = sum(v["gflop"] for op, v in ops.items() if op in INT8)
    products_ms = sum(v["ms"] for op, v in ops.items() if op in PRODUCTS)
    other_ms = sum(v["ms"] for op, v in ops.items() if op not in PRODUCTS)
    floor_s = fp32 / fp32_peak + int8 / int8_peak
    return {"gflop_fp32": fp32, "gflop_int8": int8, "products_ms": products_ms, "other_ms": other_ms,
            "achieved_products_gflops": (fp32 + int8) / (products_ms / 1e3) if products_ms else 0.0,
            "floor_products_only_s": floor_s, "floor_x_torch_segment": torch_s / floor_s,
            "floor_with_other_s": floor_s + other_ms / 1e3,
            "floor_with_other_x_torch_segment": torch_s / (floor_s + other_ms / 1e3),
            "wall_s": prof["wall_s"], "x_torch_segment": torch_s / prof["wall_s"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=None, help="stems folder (default: bench_stems's export)")
    parser.add_argument("--demucs", type=Path, default=None,
                        help="the HTDemucs the folder was exported from (default: bench_stems's random htdemucs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from benchmarks.bench_stems import ensure_demucs, ensure_export

    args.folder = args.folder or ensure_export()
    args.demucs = args.demucs or ensure_demucs()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    report: dict = {"threads": args.threads, "load": os.getloadavg()[0], "ceilings_gflops": ceilings(args.threads)}
    torch_s, report["torch_counted_gflop"] = torch_segment(args.demucs, args.threads)
    report["torch_segment_s"] = torch_s
    for graph in ("stems", "stems_fast"):
        path = args.folder / f"{graph}.onnx"
        if path.exists():
            prof = profile_graph(path, args.threads)
            report[graph] = {"profile": prof, "bounds": bounds(prof, report["ceilings_gflops"], torch_s)}
            convs = sum(prof["ops"].get(op, {}).get("gflop", 0.0) for op in CONVS)
            torch_convs = report["torch_counted_gflop"].get("convolution", 0.0)
            if abs(convs - torch_convs) > 1e-6 * torch_convs:
                raise SystemExit(f"{path}: its convolutions count {convs:.3f} GFLOP, torch's forward of {args.demucs} "
                                 f"{torch_convs:.3f}: not the same model, or the count is wrong")
    print(f"ceilings, GFLOP/s ({args.threads} threads, load {report['load']:.1f}):")
    for size, row in report["ceilings_gflops"].items():
        print(f"  {size:>16}  " + "  ".join(f"{k} {v:6.0f}" for k, v in row.items()))
    print(f"torch HTDemucs.forward, one segment: {torch_s:.2f} s; torch's own count (GFLOP): "
          + ", ".join(f"{k} {v:.1f}" for k, v in report["torch_counted_gflop"].items()))
    for graph in ("stems", "stems_fast"):
        if graph not in report:
            continue
        b, ops = report[graph]["bounds"], report[graph]["profile"]["ops"]
        print(f"{graph}: {b['gflop_fp32']:.0f} GFLOP fp32 + {b['gflop_int8']:.0f} int8, products {b['products_ms'] / 1e3:.2f} s "
              f"({b['achieved_products_gflops']:.0f} GFLOP/s), other nodes {b['other_ms'] / 1e3:.2f} s, wall {b['wall_s']:.2f} s "
              f"= {b['x_torch_segment']:.2f}x torch; floor products only {b['floor_products_only_s']:.2f} s "
              f"= {b['floor_x_torch_segment']:.2f}x, with other nodes {b['floor_with_other_s']:.2f} s "
              f"= {b['floor_with_other_x_torch_segment']:.2f}x")
        for op, v in list(ops.items())[:12]:
            rate = f"{v['gflop'] / v['ms'] * 1e3:6.0f} GFLOP/s" if v["gflop"] else ""
            print(f"  {op:>24} {v['ms']:7.0f} ms {v['nodes']:4d} nodes {v['gflop']:7.1f} GFLOP {rate}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
