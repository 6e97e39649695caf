"""Token agreement with audiocraft (and transformers on the same weights), export time and peak RSS, for
full-size audiocraft-format folders written by benchmarks/audiocraft_reference.py.

    # in the audiocraft environment (see audiocraft_reference.py):
    python benchmarks/audiocraft_reference.py t5 base benchmarks/cache/ac-t5-base
    python benchmarks/audiocraft_reference.py build melody benchmarks/cache/ac-melody --t5 benchmarks/cache/ac-t5-base
    python benchmarks/audiocraft_reference.py generate benchmarks/cache/ac-melody --t5 benchmarks/cache/ac-t5-base \\
        --frames 50 --melody-seconds 3 -o benchmarks/cache/ac-melody.tokens.json
    # here (each step in its own interpreter: the export's peak RSS is the export's alone):
    flock /tmp/musicgen-bigmem.lock python -m benchmarks.audiocraft_parity benchmarks/cache/ac-melody \\
        benchmarks/cache/ac-melody.tokens.json --t5 benchmarks/cache/ac-t5-base --json out.json

Rows: ours (exported from the audiocraft folder, reference "audiocraft") vs audiocraft; transformers (on
the converted folder) vs audiocraft; ours with reference "transformers" vs transformers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_runtime import peak_rss_mb, run_isolated


def _melodies(record: dict):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from audiocraft_reference import melody_waves  # plain numpy; no audiocraft import at module level

    return melody_waves(len(record["prompts"]), record["melody_seconds"], seed=record["melody_seed"])


def run_export(folder: str, out: str, t5: str) -> dict:
    from musicgen_onnx.export.exporter import export

    t0 = time.perf_counter()
    export(folder, out, text_encoder=t5, force=True, progress=lambda m: print(m, file=sys.stderr))
    return {"export_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak_rss_mb()),
            "folder_mb": round(sum(p.stat().st_size for p in Path(out).iterdir()) / 1e6)}


def run_ours(onnx: str, tokens: str) -> dict:
    from musicgen_onnx.runtime import MusicGen

    record = json.loads(Path(tokens).read_text())
    model = MusicGen.from_pretrained(onnx, providers="cpu")
    kw = dict(melody=_melodies(record), melody_sample_rate=32000) if record.get("melody_seconds") else {}
    _, codes = model.generate(record["prompts"], duration=(record["frames"] + 0.5) / 50, greedy=True,
                              guidance_scale=record["cfg_coef"], return_codes=True, **kw)
    return {"codes": codes.tolist()}


def run_transformers(folder: str, t5: str, converted: str, tokens: str) -> dict:
    from musicgen_onnx.export import audiocraft, reference

    record = json.loads(Path(tokens).read_text())
    if not Path(converted, "config.json").is_file():
        audiocraft.convert(folder, converted, text_encoder=t5)
    model, tok = reference.load(converted)
    feats = reference.chroma_features(_melodies(record)) if record.get("melody_seconds") else None
    codes, _ = reference.generate(model, tok, record["prompts"], record["frames"], input_features=feats)
    return {"codes": codes.tolist(), "peak_rss_mb": round(peak_rss_mb())}


def agreement(a, b) -> dict:
    a, b = np.asarray(a), np.asarray(b)
    first = [int(np.argmax(np.any(a[i] != b[i], axis=0))) if not np.array_equal(a[i], b[i]) else None
             for i in range(len(a))]
    return {"tokens_equal_pct": round(100 * float((a == b).mean()), 2), "identical": bool(np.array_equal(a, b)),
            "first_diff_frame_per_prompt": first}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="audiocraft-format folder")
    parser.add_argument("tokens", help="audiocraft's tokens (audiocraft_reference.py generate -o)")
    parser.add_argument("--t5", required=True)
    parser.add_argument("--keep", action="store_true", help="keep the exported and converted folders")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    onnx, converted = f"{folder}-onnx", f"{folder}-hf"
    record = json.loads(Path(args.tokens).read_text())
    result = {"folder": str(folder), "prompts": record["prompts"], "frames": record["frames"],
              "melody_seconds": record.get("melody_seconds"), "audiocraft_generate_s": record.get("seconds")}
    result["export"] = run_isolated("benchmarks.audiocraft_parity", "run_export", str(folder), onnx, args.t5)
    ours = run_isolated("benchmarks.audiocraft_parity", "run_ours", onnx, args.tokens)["codes"]
    hf = run_isolated("benchmarks.audiocraft_parity", "run_transformers", str(folder), args.t5, converted, args.tokens)
    from musicgen_onnx.runtime.manifest import MANIFEST_NAME

    manifest = json.loads(Path(onnx, MANIFEST_NAME).read_text())  # same graphs, transformers' behaviour
    Path(onnx, MANIFEST_NAME).write_text(json.dumps({**manifest, "reference": "transformers"}))
    ours_hf = run_isolated("benchmarks.audiocraft_parity", "run_ours", onnx, args.tokens)["codes"]
    result["ours_vs_audiocraft"] = agreement(ours, record["codes"])
    result["transformers_vs_audiocraft"] = agreement(hf["codes"], record["codes"])
    result["ours_transformers_ref_vs_transformers"] = agreement(ours_hf, hf["codes"])
    result["transformers_peak_rss_mb"] = hf["peak_rss_mb"]
    if not args.keep:
        shutil.rmtree(onnx, ignore_errors=True)
        shutil.rmtree(converted, ignore_errors=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
