"""Export time, peak RSS and folder size for full-size random-weight architectures.

    python -m benchmarks.bench_export small melody [--precision fp32] [--json out.json]

Each export runs in its own subprocess (peak RSS = that export alone), validation on, into
benchmarks/cache/ARCH-onnx-PRECISION (replaced).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.bench_runtime import CACHE, ROOT, ensure_checkpoint


def run_export(checkpoint: str, out: str, precision: str) -> dict:
    import time

    from benchmarks.bench_runtime import peak_rss_mb
    from musicgen_onnx.export.exporter import export

    t0 = time.perf_counter()
    export(checkpoint, out, precision=precision, force=True, progress=lambda m: print(m, file=sys.stderr))
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(out).iterdir())
    return {"export_s": seconds, "peak_rss_mb": peak_rss_mb(), "folder_mb": size / 1e6,
            "files": sorted(p.name for p in Path(out).iterdir())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="+")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results = {}
    for arch in args.archs:
        ckpt = ensure_checkpoint(arch)
        weights = sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) / 1e6
        out = CACHE / f"{arch}-onnx-{args.precision}"
        code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench_export import run_export; "
                f"print('RESULT' + json.dumps(run_export({str(ckpt)!r}, {str(out)!r}, {args.precision!r})))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")]
        if r.returncode or not line:
            raise SystemExit(f"export of {arch} failed:\n{r.stderr[-3000:]}")
        results[arch] = {"checkpoint_mb": weights, **json.loads(line[0][6:])}
        res = results[arch]
        print(f"{arch:10} {args.precision}: export {res['export_s']:.0f} s, peak RSS {res['peak_rss_mb']:.0f} MB, "
              f"folder {res['folder_mb']:.0f} MB (checkpoint {weights:.0f} MB), files {', '.join(res['files'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
