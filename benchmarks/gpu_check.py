"""The one GPU check: CUDA parity, then this runtime vs transformers fp16 in the same process.

    python -m benchmarks.gpu_check [--archs melody,small] [--batches 1,4,8] [--seconds 10] [--out DIR]
    python -m benchmarks.gpu_check --dry-run      # the same steps on CPU with tiny models (proves the script)

Runs in the CUDA test environment as it is (no network: onnxruntime-gpu, transformers 5.24 and the
other wheels are installed beforehand, see README "GPU"); installs nothing. Writes ``gpu_check.json``
to ``--out`` (default ``$OUT`` or benchmarks/results) after every step, so a run cut short still
reports what it measured:

1. environment (onnxruntime providers, torch, device);
2. parity on the tiny melody model: greedy codes of the fp32 concat graph on CUDA vs transformers fp32
   on CUDA, with onnxruntime's default TF32 math and with ``use_tf32=0`` (agreement fraction each);
3. per architecture and batch: steps/s of this runtime (fp16, static cache) and of transformers fp16
   ``generate`` on the same prompts and steps, peak GPU memory of each, time to first audio with
   ``generate_stream``, load time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

PROMPTS = ["80s pop track with bassy drums and synth", "a calm folk song with acoustic guitar",
           "energetic techno with a heavy kick", "sad jazz with piano and brushes"]


def _gpu_used_mb() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return float(out.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


class Report:
    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"steps": []}

    def add(self, **entry) -> None:
        self.data["steps"].append(entry)
        print(json.dumps(entry), flush=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)  # whole or not at all, after every step


def _prompts(batch: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(batch)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="melody,small")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--work", default="/tmp/gpu-work")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny architectures, fp32, short: proves the script")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    from musicgen_onnx.export import reference
    from musicgen_onnx.export.exporter import export
    from musicgen_onnx.export.random_checkpoints import build_checkpoint
    from musicgen_onnx.runtime import MusicGen
    from musicgen_onnx.runtime.options import duration_frames

    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    providers = "cpu" if dry else "cuda"
    archs = ["tiny-melody", "tiny-text"] if dry else args.archs.split(",")
    batches = [1, 2] if dry else [int(b) for b in args.batches.split(",")]
    seconds = 0.5 if dry else args.seconds
    precision = "fp32" if dry else "fp16"  # CPU GroupQueryAttention runs fp32; CUDA's has only fp16 kernels
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out / "gpu_check.json")
    report.add(step="environment", dry_run=dry, onnxruntime=ort.__version__, providers=ort.get_available_providers(),
               torch=torch.__version__, device=torch.cuda.get_device_name(0) if not dry else "cpu")

    # 2. parity on the tiny melody model, fp32 concat graph, with and without TF32
    ck = build_checkpoint("tiny-melody", work / "tiny-melody", seed=0)
    folder = export(str(ck), work / "tiny-melody-fp32-concat", kv_cache="concat", force=True)
    model, tok = reference.load(ck)
    model = model.to(device)
    prompts = _prompts(3)
    ref_codes, _ = reference.generate(model, tok, prompts, 50)
    del model
    for tf32 in ("default", "0"):
        options = {} if tf32 == "default" or dry else {"CUDAExecutionProvider": {"use_tf32": tf32}}
        ours = MusicGen.from_pretrained(folder, providers=providers)
        if options:
            from musicgen_onnx.runtime.session import SessionSettings

            ours = MusicGen(ours.adapter, SessionSettings(ours.settings.providers, options))
        _, codes = ours.generate(prompts, duration=1.0, greedy=True, return_codes=True)
        report.add(step="parity", graph="tiny-melody fp32 concat", use_tf32=tf32,
                   agreement=float((codes == ref_codes).mean()), identical=bool((codes == ref_codes).all()))

    # 3. speed per architecture and batch, both sides in this process
    frames = duration_frames(seconds, 50)
    for arch in archs:
        ck = build_checkpoint(arch, work / arch, seed=0)
        t0 = time.perf_counter()
        folder = export(str(ck), work / f"{arch}-{precision}", precision=precision, force=True, validate_graphs=dry)
        report.add(step="export", arch=arch, precision=precision, seconds=time.perf_counter() - t0)
        model, tok = reference.load(ck)
        model = model.to(device, torch.float16 if not dry else torch.float32)
        reference.generate(model, tok, ["warm up"], 5)
        for batch in batches:
            if not dry:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            reference.generate(model, tok, _prompts(batch), frames)
            if not dry:
                torch.cuda.synchronize()
            took = time.perf_counter() - t0
            report.add(step="transformers", arch=arch, batch=batch, steps_per_s=(frames + 3) / took,
                       peak_gpu_mb=None if dry else torch.cuda.max_memory_allocated() / 2**20)
        del model
        if not dry:
            torch.cuda.empty_cache()
        before = _gpu_used_mb()
        t0 = time.perf_counter()
        ours = MusicGen.from_pretrained(folder, providers=providers, verify_hashes=False)
        load_s = time.perf_counter() - t0
        ours.generate(["warm up"], duration=0.2, greedy=True)
        for batch in batches:
            t0 = time.perf_counter()
            ours.generate(_prompts(batch), duration=seconds, greedy=True)
            took = time.perf_counter() - t0
            t0 = time.perf_counter()
            first = next(iter(ours.generate_stream(_prompts(batch), duration=seconds, greedy=True, chunk_frames=50)))
            ttfa = time.perf_counter() - t0
            used = _gpu_used_mb()
            report.add(step="musicgen-onnx", arch=arch, precision=precision, batch=batch, load_s=load_s,
                       steps_per_s=(frames + 3) / took, real_time_factor=batch * seconds / took,
                       time_to_first_audio_s=ttfa, first_chunk_samples=int(first.shape[-1]),
                       gpu_used_mb=None if used is None or before is None else used - before)
        del ours
    report.add(step="done")


if __name__ == "__main__":
    main()
