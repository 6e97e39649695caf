"""Build the two next-token graphs the runtime runs on the device (runtime/sampler.onnx, runtime/greedy.onnx).

They do what runtime/sampling.py does in numpy, fed by the decoder's logits where they already are, so
that only the tokens leave the device and a CUDA graph can hold the whole step:

* ``sampler.onnx``: CFG combine (float32, as numpy), temperature, softmax in float64, one descending
  TopK over the vocabulary (serves top-k and top-p; ties go to the lower index, as numpy's stable
  sort), top-p by audiocraft's rule or top-k keeping ties with the k-th, CumSum, and the draw
  ``count(cdf <= u * cdf[-1])`` from uniform numbers given as an input (the per-row numpy generators
  draw them, so seeds and row drops keep their meaning).
* ``greedy.onnx``: CFG combine and ArgMax (first index on ties, as numpy).

Every knob is a tensor input (``guidance_scale``, ``temperature``, ``top_k`` (0: off; the runtime passes
at most the vocabulary size), ``top_p`` (0: off)), so one captured graph serves every request. Both
also return ``nonfinite`` [2] bool: whether the decoder's logits, and the guided logits, hold a NaN or
an infinity (the host's two ``isfinite`` passes). The vocabulary size is fixed when the graph is built
(``VOCAB``, every MusicGen's codebook size), so nothing in them is derived from a shape.

    python -m musicgen_onnx.export.sampling_graphs [OUT_DIR]    # default: the runtime's folder
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB = 2048
OPSET = 18
NAMES = {"sampler": "sampler.onnx", "greedy": "greedy.onnx"}
RUNTIME = Path(__file__).resolve().parent.parent / "runtime"


class _Graph:
    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _nonfinite(g: _Graph, x: str, tag: str) -> str:
    bad = g.op("Or", [g.op("IsNaN", [x], f"{tag}_nan"), g.op("IsInf", [x], f"{tag}_inf")], f"{tag}_bad")
    return g.op("ReduceMax", [g.op("Cast", [bad], f"{tag}_bad_i", to=TensorProto.INT32)], f"{tag}_any", keepdims=0)


def _guided(g: _Graph) -> str:
    """``uncond + (cond - uncond) * scale`` in float32: runtime/sampling.classifier_free_guidance."""
    g.op("Split", ["logits"], "cond", num_outputs=2, axis=0)
    g.nodes[-1].output[:] = ["cond", "uncond"]
    diff = g.op("Sub", ["cond", "uncond"], "diff")
    return g.op("Add", ["uncond", g.op("Mul", [diff, "guidance_scale"], "scaled")], "guided")


def _flags(g: _Graph, guided: str) -> str:
    flags = g.op("Concat", [g.op("Unsqueeze", [_nonfinite(g, "logits", "raw"), g.const("axis0", np.array([0]))], "raw_1"),
                            g.op("Unsqueeze", [_nonfinite(g, guided, "cfg"), "axis0"], "cfg_1")], "flags_i", axis=0)
    return g.op("Cast", [flags], "nonfinite", to=TensorProto.BOOL)


def _model(g: _Graph, inputs, outputs, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="musicgen-onnx",
                              ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _logits_input():
    return helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["rows_x_cfg", "codebooks", VOCAB])


def greedy() -> onnx.ModelProto:
    g = _Graph()
    guided = _guided(g)
    g.op("ArgMax", [guided], "tokens", axis=-1, keepdims=0)
    flags = _flags(g, guided)
    return _model(g, [_logits_input(), helper.make_tensor_value_info("guidance_scale", TensorProto.FLOAT, [])],
                  [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["rows", "codebooks"]),
                   helper.make_tensor_value_info(flags, TensorProto.BOOL, [2])], "greedy")


def sampler() -> onnx.ModelProto:
    g = _Graph()
    guided = _guided(g)
    last = g.const("last_axis", np.array([-1]))
    x = g.op("Div", [g.op("Cast", [guided], "guided64", to=TensorProto.DOUBLE), "temperature"], "scaled_t")
    x = g.op("Sub", [x, g.op("ReduceMax", [x, last], "x_max", keepdims=1)], "x_shift")
    e = g.op("Exp", [x], "e")
    probs = g.op("Div", [e, g.op("ReduceSum", [e, last], "e_sum", keepdims=1)], "probs")
    g.op("TopK", [probs, g.const("vocab", np.array([VOCAB]))], "sorted_p", axis=-1, largest=1, sorted=1)
    g.nodes[-1].output[:] = ["sorted_p", "order"]
    axis = g.const("axis_last", np.array(-1))
    zero = g.const("zero", np.array(0.0))
    # top-p (audiocraft's sample_top_p): drop a sorted entry once the mass before it exceeds p
    before = g.op("Sub", [g.op("CumSum", ["sorted_p", axis], "sorted_cum"), "sorted_p"], "mass_before")
    kept = g.op("Where", [g.op("Greater", [before, "top_p"], "drop"), zero, "sorted_p"], "kept_sorted")
    by_p = g.op("ScatterElements", [probs, "order", kept], "by_p", axis=-1)
    # top-k: keep what is at least the k-th probability (ties with it stay)
    k_index = g.op("Max", [g.op("Sub", ["top_k", g.const("one", np.array(1, dtype=np.int64))], "k_1"),
                           g.const("zero_i", np.array(0, dtype=np.int64))], "k_index")
    kth = g.op("Unsqueeze", [g.op("Gather", ["sorted_p", k_index], "kth_", axis=-1), last], "kth")
    by_k = g.op("Where", [g.op("GreaterOrEqual", [probs, kth], "keep_k"), probs, zero], "by_k")
    use_k = g.op("Greater", ["top_k", "zero_i"], "use_k")
    use_p = g.op("Greater", ["top_p", zero], "use_p")
    chosen = g.op("Where", [use_p, by_p, g.op("Where", [use_k, by_k, probs], "k_or_all")], "chosen")
    cdf = g.op("CumSum", [chosen, axis], "cdf")
    total = g.op("Unsqueeze", [g.op("Gather", [cdf, g.const("minus_one", np.array(-1, dtype=np.int64))], "cdf_last_",
                                    axis=-1), last], "cdf_last")
    below = g.op("LessOrEqual", [cdf, g.op("Mul", ["uniform", total], "u")], "below")
    count = g.op("ReduceSum", [g.op("Cast", [below], "below_i", to=TensorProto.INT64), last], "count", keepdims=0)
    g.op("Min", [count, g.const("vocab_last", np.array(VOCAB - 1, dtype=np.int64))], "tokens")
    flags = _flags(g, guided)
    scalar = lambda n, t: helper.make_tensor_value_info(n, t, [])
    inputs = [_logits_input(), scalar("guidance_scale", TensorProto.FLOAT), scalar("temperature", TensorProto.DOUBLE),
              scalar("top_k", TensorProto.INT64), scalar("top_p", TensorProto.DOUBLE),
              helper.make_tensor_value_info("uniform", TensorProto.DOUBLE, ["rows", "codebooks", 1])]
    return _model(g, inputs, [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["rows", "codebooks"]),
                              helper.make_tensor_value_info(flags, TensorProto.BOOL, [2])], "sampler")


def build() -> dict[str, bytes]:
    """Each graph's file name -> its bytes (the same bytes on every run)."""
    return {NAMES["sampler"]: sampler().SerializeToString(), NAMES["greedy"]: greedy().SerializeToString()}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else RUNTIME
    for name, data in build().items():
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(out / name)
        print(out / name)


if __name__ == "__main__":
    main()
