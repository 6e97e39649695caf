"""The decoder's first call (prefill) of a melody model with CFG: every row run vs the null rows reused.

    python -m benchmarks.bench_null_prefill [--folder FOLDER] [--batch 1,2] [--rounds 3] [--threads 2]

Default folder: benchmarks/cache/melody-onnx-int4-stems (bench_melody_path builds it). One interpreter
loads the folder and times the first call alone (235 chroma frames, the prompt's tokens, the start
column) for each batch, three ways in turn each round: ``off`` (MUSICGEN_ONNX_NULL_PREFILL=off: 2B rows),
``miss`` (the model's entry cleared: B + 1 rows, the entry stored) and ``hit`` (B rows). The logits of
each way are compared with ``off``'s (max |diff|; 0 is bitwise). Medians over the rounds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_runtime import CACHE, PROMPT

WAYS = ("off", "miss", "hit")


def prefill(model, batch: int, way: str) -> tuple[float, np.ndarray]:
    from musicgen_onnx.runtime import null_prefill

    os.environ[null_prefill.SWITCH] = "off" if way == "off" else "on"
    if way == "miss":
        model.adapter._decoder_io(model.graphs)["null_prefill"].clear()
    m = model.manifest
    chroma = np.eye(m.chroma.num_chroma, dtype=np.float32)[np.arange(m.chroma.chroma_length) % 12]
    conditioning = model.conditioner([PROMPT] * batch, np.repeat(chroma[None], batch, axis=0), True)
    stepper = model.new_stepper(2 * batch, conditioning, 4)
    ids = np.full((2 * batch, m.num_codebooks, 1), m.special_token_id, dtype=np.int64)
    t0 = time.perf_counter()
    logits = stepper.run(ids, conditioning.prefix_length + 1)
    return time.perf_counter() - t0, logits


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=CACHE / "melody-onnx-int4-stems")
    parser.add_argument("--batch", default="1,2", help="comma list of batch sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    from musicgen_onnx.runtime.musicgen import MusicGen

    model = MusicGen.from_pretrained(args.folder, providers="cpu", threads=args.threads)
    load = os.getloadavg()[0]
    batches = [int(b) for b in args.batch.split(",")]
    seconds = {(b, w): [] for b in batches for w in WAYS}
    diff = {(b, w): 0.0 for b in batches for w in WAYS}
    for _ in range(args.rounds):
        for b in batches:
            results = {w: prefill(model, b, w) for w in WAYS}  # off, miss, hit: in turn, each round
            for w, (s, logits) in results.items():
                seconds[b, w].append(s)
                diff[b, w] = max(diff[b, w], float(np.abs(logits - results["off"][1]).max()))
    print(f"\n{args.folder.name}: prefill seconds (median of {args.rounds}), {args.threads} threads, CPU, "
          f"load {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'batch':>6}" + "".join(f"{w:>10}" for w in WAYS) + f"{'hit/off':>9}{'miss/off':>9}  max |logits - off|")
    for b in batches:
        med = {w: float(np.median(seconds[b, w])) for w in WAYS}
        print(f"{b:>6}" + "".join(f"{med[w]:>10.2f}" for w in WAYS)
              + f"{med['hit'] / med['off']:>9.2f}{med['miss'] / med['off']:>9.2f}  "
              + ", ".join(f"{w} {diff[b, w]:.1e}" for w in WAYS[1:]))
        print(f"{'':>6}  rounds: " + "; ".join(f"{w} " + "/".join(f"{s:.2f}" for s in seconds[b, w]) for w in WAYS))


if __name__ == "__main__":
    main()
