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
