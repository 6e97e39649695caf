"""benchmarks/roofline_stems.py counts the arithmetic of each node from onnxruntime's profile: the count
the README's bounds rest on, checked here against the formulas on a small graph of every kind it counts
(a grouped Conv, a ConvTranspose, a batched MatMul, an int8 MatMulInteger) with the weights external,
as the stems graphs store them."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from musicgen_onnx.benchmarks import roofline_stems


def _graph(path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((12, 2, 3, 1), dtype=np.float32), "w_conv"),
             numpy_helper.from_array(rng.standard_normal((12, 5, 4, 1), dtype=np.float32), "w_convt"),
             numpy_helper.from_array(rng.standard_normal((7, 9), dtype=np.float32), "w_mm"),
             numpy_helper.from_array(rng.integers(-127, 127, (9, 4), dtype=np.int8), "w_int8")]
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["c"], name="conv", group=3, strides=[2, 1], pads=[1, 0, 1, 0]),
        helper.make_node("ConvTranspose", ["c", "w_convt"], ["t"], name="convt", strides=[4, 1]),
        helper.make_node("MatMul", ["a", "w_mm"], ["m"], name="mm"),
        helper.make_node("MatMulInteger", ["q", "w_int8"], ["i"], name="mmi"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 16, 5]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 11, 7]),
         helper.make_tensor_value_info("q", TensorProto.UINT8, [1, 13, 9])],
        [helper.make_tensor_value_info(n, t, None) for n, t in
         (("t", TensorProto.FLOAT), ("m", TensorProto.FLOAT), ("i", TensorProto.INT32))], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="g.onnx.data",
              size_threshold=0)


def test_counts_every_product_kind_by_its_formula(tmp_path, monkeypatch):
    path = tmp_path / "g.onnx"
    _graph(path)
    feeds = {"x": np.ones((1, 6, 16, 5), np.float32), "a": np.ones((1, 3, 11, 7), np.float32),
             "q": np.ones((1, 13, 9), np.uint8)}
    monkeypatch.setattr(roofline_stems, "_feeds", lambda session: feeds)
    ops = roofline_stems.profile_graph(path, threads=1)["ops"]
    conv_out = (1, 12, 8, 5)  # (16 + 2 - 3) // 2 + 1 = 8 rows
    want = {
        "Conv": 2 * math.prod(conv_out) * 2 * 3 * 1,  # each output: C_in / group x kernel multiply-adds
        "ConvTranspose": 2 * math.prod(conv_out) * 5 * 4 * 1,  # each input: C_out x kernel
        "MatMul": 2 * 3 * 11 * 9 * 7,
        "MatMulInteger": 2 * 13 * 4 * 9,
    }
    for op, flop in want.items():
        assert ops[op]["gflop"] * 1e9 == pytest.approx(flop, rel=1e-12), op
    assert all(ops[op]["ms"] >= 0 for op in want)


def test_bounds_put_int8_and_fp32_products_at_their_own_ceilings():
    prof = {"wall_s": 2.0, "ops": {"MatMul": {"ms": 1000.0, "gflop": 100.0, "nodes": 1},
                                   "DynamicQuantizeMatMul": {"ms": 500.0, "gflop": 300.0, "nodes": 1},
                                   "Add": {"ms": 250.0, "gflop": 0.0, "nodes": 1}}}
    ceil = {"s": {"ort_fp32": 200.0, "torch_fp32": 100.0, "ort_int8": 600.0}}
    b = roofline_stems.bounds(prof, ceil, torch_s=4.0)
    assert b["floor_products_only_s"] == pytest.approx(100 / 200 + 300 / 600)
    assert b["floor_with_other_s"] == pytest.approx(1.0 + 0.25)
    assert b["floor_with_other_x_torch_segment"] == pytest.approx(4.0 / 1.25)
    assert b["x_torch_segment"] == pytest.approx(2.0)


def test_counts_the_fused_kinds_of_the_stems_graphs(tmp_path, monkeypatch):
    """The kinds that carry most of the count and that torch's own counter cannot check: attention
    (85 of the exact graph's 335 GFLOP) with queries and keys of different lengths as in the cross
    layers, QLinearConv (its weight is input 3) and DynamicQuantizeMatMul (the int8 graph's products)."""
    rng = np.random.default_rng(0)
    ms = "com.microsoft"
    inits = [numpy_helper.from_array(rng.integers(-127, 127, (6, 2, 3, 1), dtype=np.int8), "w_q"),
             numpy_helper.from_array(rng.integers(-127, 127, (8, 5), dtype=np.int8), "w_dq")]
    inits += [numpy_helper.from_array(np.array(v, dtype), n) for n, v, dtype in
              (("s", 0.1, np.float32), ("zu", 0, np.uint8), ("zs", 0, np.int8))]
    nodes = [
        helper.make_node("MultiHeadAttention", ["query", "kv", "kv"], ["att"], name="mha", domain=ms, num_heads=2),
        helper.make_node("QLinearConv", ["xq", "s", "zu", "w_q", "s", "zs", "s", "zu"], ["cq"], name="qconv", group=2),
        helper.make_node("DynamicQuantizeMatMul", ["a", "w_dq", "s", "zs"], ["dq"], name="dqmm", domain=ms),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("query", TensorProto.FLOAT, [1, 10, 8]),
         helper.make_tensor_value_info("kv", TensorProto.FLOAT, [1, 6, 8]),
         helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 4, 9, 3]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 7, 8])],
        [helper.make_tensor_value_info(n, t, None) for n, t in
         (("att", TensorProto.FLOAT), ("cq", TensorProto.UINT8), ("dq", TensorProto.FLOAT))], initializer=inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)]),
              str(path), save_as_external_data=True, location="g.onnx.data", size_threshold=0)
    feeds = {"query": np.ones((1, 10, 8), np.float32), "kv": np.ones((1, 6, 8), np.float32),
             "xq": np.ones((1, 4, 9, 3), np.uint8), "a": np.ones((2, 7, 8), np.float32)}
    monkeypatch.setattr(roofline_stems, "_feeds", lambda session: feeds)
    ops = roofline_stems.profile_graph(path, threads=1)["ops"]
    want = {
        "MultiHeadAttention": 2 * (2 * 10 * 6 * 8),  # Q K^T and weights x V: Lq x Lk x (heads x head size) each
        "QLinearConv": 2 * (1 * 6 * 7 * 3) * 2 * 3 * 1,  # output (1, 6, 9 - 3 + 1, 3), C_in / group x kernel
        "DynamicQuantizeMatMul": 2 * 2 * 7 * 5 * 8,
    }
    for op, flop in want.items():
        assert ops[op]["gflop"] * 1e9 == pytest.approx(flop, rel=1e-12), op


@pytest.mark.parametrize("op, ins, weight", [
    ("Conv", [[1, 4, 9]], None),  # a weight the graph file does not hold as an initializer
    ("Attention", [[1, 10, 8], [8, 24]], None),  # input 1 is the packed projection weight, not the keys
    ("Gemm", [[8, 10], [8, 5]], None),  # transA would make ins[0][-1] the rows, not the inner dimension
    ("MultiHeadAttention", [[1, 10, 2, 3, 4]], None),  # packed QKV: no key input
])
def test_a_product_it_cannot_count_raises_rather_than_counting_wrong(op, ins, weight):
    with pytest.raises(ValueError):
        roofline_stems.node_flops(op, ins, [[1, 10, 8]], weight)
