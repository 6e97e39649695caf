"""An optimum export against this project's export of the same checkpoint, and against transformers.

Why: a user holding an optimum / transformers.js folder wants to know what reading it as it is costs
compared with re-exporting it here. The same random-weight checkpoint (``random_checkpoints``, seed 0)
is exported both ways; each side generates greedily with CFG in its own process (batch 1, same
prompt), and the tokens are compared with transformers' greedy tokens. optimum's decoder
concatenates its KV cache every step, like this project's ``concat`` graph: the ``fp32-concat`` vs
``fp32`` (static, in-place cache) rows measure what that concatenation costs on this machine, and the
optimum row adds optimum's own graph (3-D ids, logits for every position, cross K/V as a past).

    python -m benchmarks.bench_optimum --arch small --seconds 10 --optimum-python /tmp/optimum-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.bench_runtime import CACHE, _subprocess, ensure_checkpoint, ensure_export


def ensure_optimum(arch: str, optimum_python: str) -> Path:
    from benchmarks.build_optimum_fixture import build

    out = CACHE / f"{arch}-optimum"
    if not (out / "source.json").exists():
        build(arch, out, optimum_python, "top", checkpoint_dir=ensure_checkpoint(arch))
    return out


def run_steps(folder: str, frames: int, threads: int) -> dict:
    """Only the runtime: load, one greedy generation; for machines where the transformers side (and its
    teacher-forced scores pass) does not fit the time at hand (``--no-transformers``)."""
    import time

    from benchmarks.bench_runtime import PROMPT, peak_rss_mb
    from musicgen_onnx.runtime import MusicGen

    t0 = time.perf_counter()
    model = MusicGen.from_pretrained(folder, providers="cpu", verify_hashes=False, threads=threads)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, codes = model.generate([PROMPT], duration=frames / model.frame_rate, greedy=True, return_codes=True)
    return {"load_s": load, "generate_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
            "codes": codes.tolist()}


def _run_steps_subprocess(folder: str, frames: int, threads: int) -> dict:
    from benchmarks.bench_runtime import run_isolated

    return run_isolated("benchmarks.bench_optimum", "run_steps", folder, frames, threads)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--optimum-python", required=True)
    parser.add_argument("--variants", default="fp32,fp32-concat", help="this project's exports to time")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--no-transformers", action="store_true",
                        help="time the ONNX folders only; tokens are compared with the first of this project's exports")
    args = parser.parse_args(argv)
    frames = round(args.seconds * 50)
    ckpt = ensure_checkpoint(args.arch)
    folders = {"optimum (split decoder, concat cache)": ensure_optimum(args.arch, args.optimum_python)}
    folders.update({f"musicgen-onnx {v}": ensure_export(args.arch, v) for v in args.variants.split(",") if v})
    results = {}
    if args.no_transformers:
        for name, folder in folders.items():
            results[name] = _run_steps_subprocess(str(folder), frames, args.threads)
            print(f"{name}: {results[name]['generate_s']:.1f} s", flush=True)
        ref = results[next(n for n in folders if n.startswith("musicgen-onnx"))] if len(folders) > 1 else None
        steps = frames + 3
        print(f"| runtime | steps/s | load s | peak RSS MB | same tokens as musicgen-onnx {args.variants.split(',')[0]} |")
        print("|---|---|---|---|---|")
        for name, r in results.items():
            same = "-" if ref is None or r is ref else ("yes" if r["codes"] == ref["codes"] else "no")
            print(f"| {name} | {steps / r['generate_s']:.2f} | {r['load_s']:.1f} | {r['peak_rss_mb']:.0f} | {same} |")
        return
    with tempfile.TemporaryDirectory() as tmp:
        scores = str(Path(tmp) / "scores.npz")
        results["transformers fp32"] = _subprocess("torch", str(ckpt), frames, args.threads, scores)
        print(f"transformers fp32: {results['transformers fp32']['generate_s']:.1f} s", flush=True)
        for name, folder in folders.items():
            results[name] = _subprocess("onnx", str(folder), frames, args.threads, scores)
            print(f"{name}: {results[name]['generate_s']:.1f} s", flush=True)
    ref = results["transformers fp32"]
    steps = frames + 3  # + max_delay (mono); as bench_runtime counts them
    print(f"{args.arch}, {args.seconds:g} s ({steps} steps), batch 1, greedy, CFG 3, {args.threads} threads")
    print("| runtime | steps/s | x transformers | load s | peak RSS MB | same tokens | top-1 | KL |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        rate = steps / r["generate_s"]
        same = "-" if r is ref else ("yes" if r["codes"] == ref["codes"] else "no")
        q = r.get("quality") or {}
        print(f"| {name} | {rate:.2f} | {rate / (steps / ref['generate_s']):.2f} | {r['load_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {same} | {q.get('top1', '-')} | {q.get('kl', '-')} |")
    if args.json:
        args.json.write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "codes"}
                                         for k, v in results.items()}, indent=2, default=str))


if __name__ == "__main__":
    main()
