"""This runtime vs transformers ``generate`` on the same random-weight checkpoint, in the same run.

    python -m benchmarks.bench_runtime --arch small --seconds 2 [--json out.json]

Builds (and caches under benchmarks/cache/) the full-size checkpoint and its ONNX export, then runs
each side in its own subprocess (so peak RSS is that side's alone): load the model, greedy decode
``frames + 3`` steps with CFG 3 on the same prompt, decode audio. Reports steps/s, real-time factor
(audio seconds per wall second), time to first audio (= total: neither side streams yet), load time,
peak RSS, and ratios to PyTorch. Absolute times on a shared 2-core machine are noisy; ratios count.
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
    from benchmarks.checkpoints import build_checkpoint

    folder = CACHE / arch
    if not (folder / "model.safetensors").exists() and not list(folder.glob("*.safetensors")):
        print(f"building random-weight {arch} checkpoint in {folder} ...", file=sys.stderr)
        build_checkpoint(arch, folder)
    return folder


def ensure_export(arch: str, precision: str = "fp32") -> Path:
    out = CACHE / f"{arch}-onnx-{precision}"
    if not (out / "musicgen_onnx.json").exists():
        from musicgen_onnx.export.exporter import export

        export(str(ensure_checkpoint(arch)), out, precision=precision, force=True,
               progress=lambda m: print(m, file=sys.stderr))
    return out


def peak_rss_mb() -> float:
    """VmHWM of this process: unlike ru_maxrss it is not inherited across exec from a big parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_torch(checkpoint: str, frames: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT / "tests"))
    import reference

    t0 = time.perf_counter()
    model, tok = reference.load(checkpoint)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes, audio = reference.generate(model, tok, [PROMPT], frames)
    total = time.perf_counter() - t0
    return {"load_s": load, "generate_s": total, "audio_s": audio.shape[-1] / 32000, "peak_rss_mb": peak_rss_mb(),
            "codes": codes.tolist()}


def run_onnx(folder: str, frames: int, threads: int) -> dict:
    from musicgen_onnx.runtime import MusicGen

    t0 = time.perf_counter()
    model = MusicGen.from_pretrained(folder, providers="cpu", verify_hashes=False, threads=threads)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    audio, codes = model.generate([PROMPT], duration=frames / model.frame_rate, greedy=True, return_codes=True)
    total = time.perf_counter() - t0
    return {"load_s": load, "generate_s": total, "audio_s": audio.shape[-1] / model.sample_rate,
            "peak_rss_mb": peak_rss_mb(), "codes": codes.tolist()}


def _subprocess(side: str, target: str, frames: int, threads: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench_runtime import run_{side}; "
            f"print('RESULT' + json.dumps(run_{side}({target!r}, {frames}, {threads})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")]
    if r.returncode or not line:
        raise SystemExit(f"{side} run failed:\n{r.stderr[-3000:]}")
    return json.loads(line[0][6:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small")
    parser.add_argument("--seconds", type=float, default=2.0, help="audio to generate (frames = 50 x seconds)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    frames = int(args.seconds * 50)
    ckpt = ensure_checkpoint(args.arch)
    folder = ensure_export(args.arch)
    results = {"torch": _subprocess("torch", str(ckpt), frames, args.threads),
               "onnx": _subprocess("onnx", str(folder), frames, args.threads)}
    steps = frames + 3
    for r in results.values():
        r["steps_per_s"] = steps / r["generate_s"]
        r["rtf"] = r["audio_s"] / r["generate_s"]
        r["time_to_first_audio_s"] = r["generate_s"]
    same = results["torch"].pop("codes") == results["onnx"].pop("codes")
    t, o = results["torch"], results["onnx"]
    print(f"\n{args.arch} architecture, random weights, greedy, CFG 3, {frames} frames ({steps} steps), "
          f"{args.threads} threads, CPU; tokens identical: {same}")
    print(f"{'':22}{'transformers':>14}{'musicgen-onnx':>15}{'ratio':>9}")
    rows = [("steps/s", "steps_per_s", "{:.2f}", True), ("real-time factor", "rtf", "{:.3f}", True),
            ("time to first audio s", "time_to_first_audio_s", "{:.1f}", False), ("load s", "load_s", "{:.1f}", False),
            ("peak RSS MB", "peak_rss_mb", "{:.0f}", False)]
    for label, key, fmt, higher_better in rows:
        ratio = o[key] / t[key] if higher_better else t[key] / o[key]
        print(f"{label:22}{fmt.format(t[key]):>14}{fmt.format(o[key]):>15}{ratio:>8.2f}x")
    out = {"arch": args.arch, "frames": frames, "steps": steps, "threads": args.threads, "tokens_identical": same,
           **results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
