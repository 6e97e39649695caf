"""Export time, peak RSS and folder size for full-size random-weight architectures.

    python -m benchmarks.bench_export small melody melody-large --precision fp32 fp16 int8 int4 [--json out.json]
    python -m benchmarks.bench_export melody --precision all --keep

Each export runs in its own subprocess (peak RSS = that export alone, VmHWM), validation on, into
benchmarks/cache/export-bench-ARCH-PRECISION (replaced; deleted after measuring unless --keep: a melody-large
fp32 folder is 10 GB). The exporter is whichever ``musicgen_onnx`` is importable, so the same script
measures another checkout with PYTHONPATH pointing at it. "ratio" is peak RSS over the largest single
output file, the figure the bounded-memory export aims to keep near 1 (README, "Export memory").
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.bench_runtime import CACHE, ROOT, ensure_checkpoint

PRECISIONS = ("fp32", "fp16", "int8", "int4")


def run_export(checkpoint: str, out: str, precision: str) -> dict:
    from benchmarks.bench_runtime import peak_rss_mb
    from musicgen_onnx.export.exporter import export

    t0 = time.perf_counter()
    export(checkpoint, out, precision=precision, force=True, progress=lambda m: print(m, file=sys.stderr))
    seconds = time.perf_counter() - t0
    files = {p.name: p.stat().st_size for p in Path(out).iterdir()}
    largest = max(files, key=files.get)
    return {"export_s": seconds, "peak_rss_mb": peak_rss_mb(), "folder_mb": sum(files.values()) / 1e6,
            "largest_file": largest, "largest_mb": files[largest] / 1e6, "files": sorted(files)}


def measure(arch: str, precision: str, keep: bool) -> dict:
    ckpt = ensure_checkpoint(arch)
    out = CACHE / f"export-bench-{arch}-{precision}"  # not ensure_export's ARCH-onnx-PRECISION, which others reuse
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench_export import run_export; "
            f"print('RESULT' + json.dumps(run_export({str(ckpt)!r}, {str(out)!r}, {precision!r})))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps: list[tuple[str, float]] = [("start", 0.0)]  # (step message, highest RSS MB seen while it ran)
    log_lines: list[str] = []

    def follow() -> None:
        for line in proc.stderr:
            log_lines.append(line)
            if re.match(r"\[\s*[0-9.]+s\] ", line):  # exporter.timed_steps
                steps.append((line.split("]", 1)[-1].strip(), 0.0))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:  # VmRSS sampled 5 times a second: which step makes the peak
        try:
            rss = next(int(l.split()[1]) * 1024 / 1e6 for l in status.read_text().splitlines() if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            break
        name, high = steps[-1]
        steps[-1] = (name, max(high, rss))
        time.sleep(0.2)
    stdout = proc.stdout.read()
    proc.wait()
    reader.join(timeout=5)
    line = [l for l in stdout.splitlines() if l.startswith("RESULT")]
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    if proc.returncode or not line:
        raise SystemExit(f"export of {arch} {precision} failed:\n{''.join(log_lines)[-3000:]}")
    weights = sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) / 1e6
    peak_step = max(steps, key=lambda s: s[1])
    return {"arch": arch, "precision": precision, "checkpoint_mb": weights, **json.loads(line[0][6:]),
            "peak_step": peak_step[0], "steps_rss_mb": steps}


HEADER = f"{'arch':13} {'precision':9} {'export s':>8} {'peak RSS MB':>11} {'folder MB':>9} {'largest file':>26} {'ratio':>5}  peak during"


def row(res: dict) -> str:
    largest = f"{res['largest_mb']:.0f} ({res['largest_file']})"
    return (f"{res['arch']:13} {res['precision']:9} {res['export_s']:8.0f} {res['peak_rss_mb']:11.0f} "
            f"{res['folder_mb']:9.0f} {largest:>26} {res['peak_rss_mb'] / res['largest_mb']:5.2f}  {res['peak_step']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="+")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=[*PRECISIONS, "all"])
    parser.add_argument("--keep", action="store_true", help="keep the exported folders in benchmarks/cache")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    precisions = PRECISIONS if "all" in args.precision else args.precision
    import musicgen_onnx

    print(f"exporter: {Path(musicgen_onnx.__file__).resolve().parent}", flush=True)
    print(HEADER, flush=True)
    results = []
    for arch in args.archs:
        for precision in precisions:
            results.append(measure(arch, precision, args.keep))
            print(row(results[-1]), flush=True)
            if args.json:  # after every row: a long run that dies keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
