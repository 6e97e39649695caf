"""MatMulNBits speed and error per quantisation block size, on the melody decoder's product shapes.

Why: the block size (``export --block-size``) trades int4/int8 precision for CPU speed; this measures
both sides on one matmul, outside the model, so that the choice can be read off one table. Each product is
a one-node graph quantised as export/precision.py quantises the decoder (symmetric, accuracy level 4),
run by onnxruntime on the CPU; GFLOP/s is 2*M*K*N over the best of ``--repeats`` runs; ``rel err`` is
``|y - y_fp32| / |y_fp32|`` (Frobenius) for Gaussian weights, which have no outliers: trained weights do,
and a coarse block costs them more.

    python -m benchmarks.bench_quant_block --threads 2
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from musicgen_onnx.export.precision import QUANT_ACCURACY_LEVEL, QUANT_BITS, QUANT_BLOCKS

# melody 1.5B: hidden 1536, ffn 6144; 256 rows ~ a prefill of ~250 positions, 2 rows a CFG decode step
SHAPES = ((256, 1536, 6144), (256, 6144, 1536), (2, 1536, 6144))


def _graph(k: int, n: int):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((k, n)) * 0.02).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def product_session(model, threads: int):
    """A one-product model in onnxruntime on ``threads`` CPU threads (also roofline_stems' ceilings)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def best_of(fn, repeats: int):
    """``(fastest seconds of repeats calls after a warm-up, the warm-up's result)``."""
    result = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def measure(precision: str, blocks, threads: int, repeats: int) -> list[dict]:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # it logs every node at INFO
    rows = []
    for m, k, n in SHAPES:
        a = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
        flops = 2 * m * k * n
        session = product_session(_graph(k, n), threads)
        seconds, ref = best_of(lambda: session.run(None, {"a": a})[0], repeats)
        rows.append({"shape": (m, k, n), "block": "fp32", "gflops": flops / seconds / 1e9, "rel_err": 0.0})
        for block in blocks:
            quantizer = MatMulNBitsQuantizer(_graph(k, n), bits=QUANT_BITS[precision], block_size=block,
                                             is_symmetric=True, accuracy_level=QUANT_ACCURACY_LEVEL)
            quantizer.process()
            quantized = product_session(quantizer.model.model, threads)
            seconds, y = best_of(lambda: quantized.run(None, {"a": a})[0], repeats)
            rows.append({"shape": (m, k, n), "block": block, "gflops": flops / seconds / 1e9,
                         "rel_err": float(np.linalg.norm(y - ref) / np.linalg.norm(ref))})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=sorted(QUANT_BITS), default="int4")
    parser.add_argument("--blocks", default=",".join(map(str, QUANT_BLOCKS)), help="comma list of block sizes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    blocks = [int(b) for b in args.blocks.split(",")]
    print(f"{args.precision}, {args.threads} threads: M x K x N, block, GFLOP/s, rel err vs fp32")
    for row in measure(args.precision, blocks, args.threads, args.repeats):
        m, k, n = row["shape"]
        print(f"{m:>4} x {k:>4} x {n:>4}  {row['block']:>5}  {row['gflops']:8.1f}  {row['rel_err']:.2e}")


if __name__ == "__main__":
    main()
