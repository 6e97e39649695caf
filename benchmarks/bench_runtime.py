"""This runtime vs transformers ``generate`` on the same random-weight checkpoint, in the same run.

    python -m benchmarks.bench_runtime --arch small --seconds 10 --variants fp32,int8,int4 [--json out.json]

Builds (and caches under benchmarks/cache/) the full-size checkpoint and its ONNX export, then runs
each side in its own subprocess (so peak RSS is that side's alone): load the model, greedy decode
``frames + 3`` steps with CFG 3 on the same prompt, decode audio. Reports steps/s, real-time factor
(audio seconds per wall second), time to first audio (= total: both sides make one call; streaming's
first-audio times are in the README), load time, peak RSS over weights on disk (both in MB), and
ratios to PyTorch. Each variant (precision, KV cache) is also scored under teacher forcing
on transformers' own greedy stream: max |logit diff|, mean KL and top-1 agreement against transformers
fp32. Absolute times on a shared 2-core machine are noisy; ratios count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / "cache"
PROMPT = "80s pop track with bassy drums and synth"


def ensure_checkpoint(arch: str) -> Path:
    from musicgen_onnx.export.random_checkpoints import build_checkpoint

    folder = CACHE / arch
    if not (folder / "model.safetensors").exists() and not list(folder.glob("*.safetensors")):
        print(f"building random-weight {arch} checkpoint in {folder} ...", file=sys.stderr)
        build_checkpoint(arch, folder)
    return folder


def ensure_export(arch: str, variant: str = "fp32") -> Path:
    """``variant`` is a precision, optionally with ``-concat`` (the portable KV cache graph) or ``-kv16``
    (an fp16 KV cache, int8/int4); ``-lowmem`` is a runtime option and shares the folder."""
    precision, *flags = variant.split("-")
    out = CACHE / f"{arch}-onnx-{'-'.join([precision, *[f for f in flags if f != 'lowmem']])}"
    if not (out / "musicgen_onnx.json").exists():
        from musicgen_onnx.export.exporter import export

        export(str(ensure_checkpoint(arch)), out, precision=precision, force=True,
               kv_cache="concat" if "concat" in flags else "static", kv_dtype="fp16" if "kv16" in flags else None,
               progress=lambda m: print(m, file=sys.stderr))
    return out


def peak_rss_mb() -> float:
    """VmHWM of this process in MB (1e6 bytes, like the weights): unlike ru_maxrss it is not inherited
    across exec from a big parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def run_torch(checkpoint: str, frames: int, threads: int, scores_path: str) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from musicgen_onnx.export import reference

    t0 = time.perf_counter()
    model, tok = reference.load(checkpoint)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes, audio = reference.generate(model, tok, [PROMPT], frames)
    total = time.perf_counter() - t0
    rss = peak_rss_mb()
    _, _, scores = reference.generate(model, tok, [PROMPT], frames, return_scores=True)  # untimed
    np.savez(scores_path, codes=codes, scores=scores)
    weights_mb = sum(p.stat().st_size for p in Path(checkpoint).glob("*.safetensors")) / 1e6
    return {"load_s": load, "generate_s": total, "audio_s": audio.shape[-1] / 32000, "peak_rss_mb": rss,
            "weights_mb": weights_mb,
            "codes": codes.tolist()}


def run_onnx(folder: str, frames: int, threads: int, scores_path: str, low_memory: bool = False) -> dict:
    import numpy as np

    from musicgen_onnx.export.verify import logit_agreement
    from musicgen_onnx.runtime import MusicGen

    t0 = time.perf_counter()
    model = MusicGen.from_pretrained(folder, providers="cpu", verify_hashes=False, threads=threads,
                                     low_memory=low_memory)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    audio, codes = model.generate([PROMPT], duration=frames / model.frame_rate, greedy=True, return_codes=True)
    total = time.perf_counter() - t0
    rss = peak_rss_mb()
    ref = np.load(scores_path)
    quality = logit_agreement(ref["scores"], model.teacher_forced_logits([PROMPT], ref["codes"]))
    weights_mb = sum(p.stat().st_size for p in Path(folder).glob("*.onnx*")) / 1e6
    return {"load_s": load, "generate_s": total, "audio_s": audio.shape[-1] / model.sample_rate,
            "peak_rss_mb": rss, "codes": codes.tolist(), "quality": quality, "weights_mb": weights_mb}


def run_isolated(module: str, function: str, *args, code_path: str | None = None) -> dict:
    """``module.function(*args)`` in a fresh interpreter (so peak RSS is that run's alone); its JSON result.
    ``code_path``: a folder holding another ``musicgen_onnx`` (e.g. a checkout of an earlier commit) to
    import instead of this one, for before/after numbers from one run."""
    call = ", ".join(repr(a) for a in args)
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from {module} import {function}; "
            f"print('RESULT' + json.dumps({function}({call})))")
    env = dict(os.environ)
    if code_path:
        env["PYTHONPATH"] = os.pathsep.join([str(code_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")]
    if r.returncode or not line:
        raise SystemExit(f"{function} run failed:\n{r.stderr[-3000:]}")
    return json.loads(line[0][6:])


def _subprocess(side: str, target: str, frames: int, threads: int, scores_path: str, *extra) -> dict:
    return run_isolated("benchmarks.bench_runtime", f"run_{side}", target, frames, threads, scores_path, *extra)


def main(argv=None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio to generate (frames = 50 x seconds)")
    parser.add_argument("--variants", default="fp32,int8,int4", help="comma list: fp32, int8, int4, fp32-concat, int8-kv16, int4-kv16-lowmem ...")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    frames = int(args.seconds * 50)
    steps = frames + 3
    ckpt = ensure_checkpoint(args.arch)
    variants = args.variants.split(",")
    folders = {v: ensure_export(args.arch, v) for v in variants}
    scores = str(Path(tempfile.mkdtemp()) / "reference.npz")
    results = {"transformers": _subprocess("torch", str(ckpt), frames, args.threads, scores)}
    for v in variants:
        results[v] = _subprocess("onnx", str(folders[v]), frames, args.threads, scores, "lowmem" in v.split("-"))
    ref_codes = results["transformers"].pop("codes")
    for r in results.values():
        r["steps_per_s"] = steps / r["generate_s"]
        r["rtf"] = r["audio_s"] / r["generate_s"]
        r["time_to_first_audio_s"] = r["generate_s"]
        if "codes" in r:
            r["greedy_tokens_identical"] = r.pop("codes") == ref_codes
    t = results["transformers"]
    print(f"\n{args.arch} architecture (random weights), {frames} frames = {args.seconds:g} s of audio, {steps} steps, "
          f"greedy, CFG 3, batch 1, {args.threads} threads, CPU")
    print(f"{'':22}{'steps/s':>9}{'x torch':>9}{'RTF':>7}{'TTFA s':>8}{'load s':>8}{'RSS MB':>8}"
          f"{'weights MB':>11}{'RSS/w':>7}{'same tokens':>12}{'top-1':>7}{'KL':>9}{'max|dl|':>9}")
    for name, r in results.items():
        q = r.get("quality", {})
        r["rss_over_weights"] = r["peak_rss_mb"] / r["weights_mb"]
        print(f"{name:22}{r['steps_per_s']:>9.2f}{r['steps_per_s'] / t['steps_per_s']:>9.2f}{r['rtf']:>7.3f}"
              f"{r['time_to_first_audio_s']:>8.1f}{r['load_s']:>8.1f}{r['peak_rss_mb']:>8.0f}"
              f"{r['weights_mb']:>11.0f}{r['rss_over_weights']:>7.2f}{str(r.get('greedy_tokens_identical', '-')):>12}"
              f"{q.get('top1', float('nan')):>7.3f}{q.get('kl', float('nan')):>9.2e}{q.get('max_abs', float('nan')):>9.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"arch": args.arch, "frames": frames, "steps": steps,
                                         "threads": args.threads, **results}, indent=2))


if __name__ == "__main__":
    main()
