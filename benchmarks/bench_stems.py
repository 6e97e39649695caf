"""Stems on ONNX vs ``demucs.apply.apply_model`` on the same random-weight full-size htdemucs, same run.

    python -m benchmarks.bench_stems [--seconds 30] [--threads 2] [--segments-per-run 1,4] [--rounds 2]
        [--compare NAME=FOLDER ...] [--json out.json]
    python -m benchmarks.bench_stems --melody 3,30 [--rounds 2] [--compare NAME=FOLDER]   # melody path
    python -m benchmarks.bench_stems --profile [--compare NAME=FOLDER]   # per node type, one segment

Builds (and caches under benchmarks/cache/) HTDemucs with the released htdemucs architecture
(``export/random_demucs.py`` HTDEMUCS_KWARGS, random weights: the released ones cannot be downloaded here),
saved in the Hugging Face hub layout, and its ``export-stems`` folder. Then each side separates the
same ``--seconds`` of 44.1 kHz stereo in its own subprocess (peak RSS is that side's alone), with the
same shift: load time, separation wall time, real-time factor, peak RSS. Parity, untimed, in this
process: max |ONNX stems - apply_model| / input peak on 20 s of 44.1 kHz stereo and on 3 s of 32 kHz
mono (through ``convert_audio``), the chroma after stems against audiocraft's recipe on those inputs,
and the stems.onnx size. ``--rounds`` alternates the sides (medians reported), ``--compare`` times
other stems folders (e.g. an export from before a change) beside the export. Absolute times on a
shared 2-core machine are noisy; the ratio counts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_runtime import CACHE, peak_rss_mb, run_isolated

SHIFT = 12345
MELODY_RATE = 32000  # the chroma's rate: melodies reach the stems mono at 32 kHz


def ensure_demucs() -> Path:
    from musicgen_onnx.export import random_demucs

    folder = CACHE / "htdemucs-random"
    if not (folder / "htdemucs.yaml").exists():
        print(f"building random-weight htdemucs in {folder} ...", file=sys.stderr)
        random_demucs.save_hub_folder(random_demucs.random_htdemucs("htdemucs", seed=0), folder)
    return folder


def ensure_export() -> Path:
    from musicgen_onnx.export.stems import export_stems_folder

    out = CACHE / "htdemucs-onnx"
    if not (out / "musicgen_onnx_stems.json").exists():
        export_stems_folder(str(ensure_demucs()), out, force=True, progress=lambda m: print(m, file=sys.stderr))
    return out


def music(seconds: float, sr: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    notes = rng.choice([110.0, 220.0, 261.63, 329.63, 392.0, 440.0], size=(channels, 16))
    step = np.minimum((t / seconds * 16).astype(int), 15)
    tone = 0.3 * np.sin(2 * np.pi * notes[:, step] * t) + 0.2 * np.sin(2 * np.pi * 2 * notes[:, step] * t)
    beat = 0.4 * np.exp(-25 * (t % 0.5)) * np.sin(2 * np.pi * 55 * t)
    return (tone + beat + 0.03 * rng.standard_normal((channels, t.shape[0]))).astype(np.float32)


def run_torch(hub: str, wav_path: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from demucs.apply import BagOfModels, apply_model

    from musicgen_onnx.export.stems import load_demucs

    t0 = time.perf_counter()
    bag = BagOfModels([load_demucs(hub)[0]])
    load = time.perf_counter() - t0
    wav = torch.from_numpy(np.load(wav_path))[None]
    random.randint = lambda a, b: SHIFT
    t0 = time.perf_counter()
    with torch.no_grad():
        out = apply_model(bag, wav, device="cpu")
    total = time.perf_counter() - t0
    np.save(wav_path + ".torch.npy", out.numpy())
    return {"load_s": load, "separate_s": total, "peak_rss_mb": peak_rss_mb()}


def run_torch_melody(hub: str, wav_path: str, threads: int) -> dict:
    """audiocraft's ``_get_stemmed_wav`` in torch + demucs on a mono 32 kHz melody: ``convert_audio`` to
    44.1 kHz stereo, ``apply_model``, [vocals, other] summed, channel mean, ``convert_audio`` back."""
    import torch

    torch.set_num_threads(threads)
    from demucs.apply import BagOfModels, apply_model
    from demucs.audio import convert_audio

    from musicgen_onnx.export.stems import load_demucs

    bag = BagOfModels([load_demucs(hub)[0]])
    wav = torch.from_numpy(np.load(wav_path))[None, None]
    random.randint = lambda a, b: SHIFT
    idx = [bag.sources.index("vocals"), bag.sources.index("other")]
    t0 = time.perf_counter()
    with torch.no_grad():
        stems = apply_model(bag, convert_audio(wav, MELODY_RATE, bag.samplerate, bag.audio_channels), device="cpu")
        convert_audio(stems[:, idx].sum(1).mean(1, keepdim=True), bag.samplerate, MELODY_RATE, 1)
    return {"stems_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}


def run_onnx(folder: str, wav_path: str, threads: int, segments_per_run: int, tag: str = "") -> dict:
    from musicgen_onnx.runtime.stems import StemSeparator

    t0 = time.perf_counter()
    separator = StemSeparator.from_folder(folder, providers="cpu", threads=threads)
    separator.segments_per_run = segments_per_run
    load = time.perf_counter() - t0
    wav = np.load(wav_path)[None]
    t0 = time.perf_counter()
    out = separator.separate(wav, SHIFT)
    total = time.perf_counter() - t0
    np.save(wav_path + f".onnx{segments_per_run}{tag}.npy", out)
    return {"load_s": load, "separate_s": total, "peak_rss_mb": peak_rss_mb()}


def run_melody(folder: str, wav_path: str, threads: int) -> dict:
    """The melody path's stems stage alone (``StemSeparator.melody``: julius to 44.1 kHz stereo, the
    segments, [vocals, other] summed, channel mean, julius back) and its chroma, on a mono 32 kHz melody."""
    from musicgen_onnx.runtime.chroma import batch_chroma
    from musicgen_onnx.runtime.manifest import ChromaParams
    from musicgen_onnx.runtime.stems import StemSeparator

    params = ChromaParams()
    separator = StemSeparator.from_folder(folder, providers="cpu", threads=threads)
    wav = np.load(wav_path)[None]
    t0 = time.perf_counter()
    stems = separator.melody(wav, params.sample_rate, SHIFT)
    t1 = time.perf_counter()
    chroma = batch_chroma(list(stems), params)
    t2 = time.perf_counter()
    np.save(wav_path + ".chroma.npy", np.asarray(chroma))
    return {"stems_s": t1 - t0, "chroma_s": t2 - t1, "peak_rss_mb": peak_rss_mb()}


def profile(folder: Path, threads: int) -> list[tuple[str, float, int]]:
    """onnxruntime's profiler on one segment of ``stems.onnx`` (roofline_stems.profile_graph: the runtime's
    session options, the fastest of three calls), summed by node type: ``[(op type, ms, nodes)]``, largest
    first."""
    from benchmarks.roofline_stems import profile_graph

    ops = profile_graph(folder / "stems.onnx", threads)["ops"]
    return [(op, v["ms"], v["nodes"]) for op, v in ops.items()]


def parity(hub: Path, folder: Path, threads: int) -> dict:
    """max |ONNX - apply_model| / input peak: 20 s stereo 44.1 kHz, 3 s mono 32 kHz (convert_audio)."""
    import torch

    torch.set_num_threads(threads)
    from demucs.apply import BagOfModels, apply_model
    from demucs.audio import convert_audio

    from musicgen_onnx.export.stems import load_demucs
    from musicgen_onnx.runtime.stems import StemSeparator

    bag = BagOfModels([load_demucs(str(hub))[0]])
    separator = StemSeparator.from_folder(folder, providers="cpu", threads=threads)
    random.randint = lambda a, b: SHIFT
    out = {}
    for name, (seconds, sr, channels) in {"stereo_44k_20s": (20, 44100, 2), "mono_32k_3s": (3, 32000, 1)}.items():
        wav = music(seconds, sr, channels, seed=1)
        mix = separator.prepare_mix(wav, sr, name)
        with torch.no_grad():
            want = apply_model(bag, convert_audio(torch.from_numpy(wav)[None], sr, 44100, 2), device="cpu").numpy()
        got = separator.separate(mix[None], SHIFT)
        out[name] = {"max_abs_over_input_peak": float(np.abs(got - want).max() / np.abs(wav).max()),
                     "max_abs_over_stems_peak": float(np.abs(got - want).max() / np.abs(want).max()),
                     **chroma_parity(bag, separator, wav, sr)}
    return out


def chroma_parity(bag, separator, wav: np.ndarray, sr: int) -> dict:
    """The chroma after stems: the runtime's melody path (prepare -> separate -> numpy chroma) against
    audiocraft's recipe in torch + demucs (``convert_audio`` to 32 kHz mono, ``_get_stemmed_wav``:
    ``convert_audio`` to 44.1 kHz stereo, ``apply_model``, [vocals, other] summed, channel mean,
    ``convert_audio`` back) and transformers' chroma (export/reference.py), same shift."""
    import torch
    from demucs.apply import apply_model
    from demucs.audio import convert_audio

    from musicgen_onnx.export.reference import chroma_features
    from musicgen_onnx.runtime.chroma import batch_chroma
    from musicgen_onnx.runtime.manifest import ChromaParams
    from musicgen_onnx.runtime.melody import prepare_melodies

    params = ChromaParams()  # the released melody models' chroma (spec 2.2)
    ours = prepare_melodies(wav, sr, 1, params, stems=separator.params)
    got = batch_chroma(list(separator.melody(np.stack(ours), params.sample_rate, SHIFT)), params)
    melody32 = convert_audio(torch.from_numpy(wav), sr, params.sample_rate, 1)
    with torch.no_grad():
        stems = apply_model(bag, convert_audio(melody32[None], params.sample_rate, bag.samplerate, bag.audio_channels),
                            device="cpu")
    idx = [bag.sources.index("vocals"), bag.sources.index("other")]
    want_wav = convert_audio(stems[:, idx].sum(1).mean(1, keepdim=True), bag.samplerate, params.sample_rate, 1)
    want = np.asarray(chroma_features(want_wav[:, 0].numpy()))
    got = np.asarray(got)
    return {"chroma_frames": int(got.shape[-2]) if got.ndim >= 2 else 0,
            "chroma_equal": bool(got.shape == want.shape and np.array_equal(got, want)),
            "chroma_frames_equal": float((got == want).all(axis=-1).mean()) if got.shape == want.shape else 0.0}


def _folders(args) -> dict[str, Path]:
    folders = {"onnx": ensure_export()}
    for item in args.compare:
        name, _, folder = item.partition("=")
        folders[name] = Path(folder)
    return folders


def _rounds(args, sides: dict[str, tuple]) -> dict[str, list[dict]]:
    """Each side in its own subprocess, alternating, ``args.rounds`` times (a loaded machine drifts)."""
    results: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, (function, *call) in sides.items():
            results[name].append(run_isolated("benchmarks.bench_stems", function, *call))
    return results


def _median(runs: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--segments-per-run", default="1", help="comma list: ONNX segments per onnxruntime call")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the sides this many times; medians reported")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=FOLDER",
                        help="another stems folder timed beside the export (e.g. one exported before a change)")
    parser.add_argument("--melody", default=None, metavar="SECONDS",
                        help="comma list: time the melody path (stems + chroma of a mono 32 kHz melody this long) "
                             "against audiocraft's recipe instead of the stems of a stereo mix")
    parser.add_argument("--profile", action="store_true", help="onnxruntime's per-node-type profile of one segment")
    parser.add_argument("--no-parity", action="store_true")
    parser.add_argument("--parity-only", action="store_true", help="skip the timed runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    hub, folders = ensure_demucs(), _folders(args)
    if args.profile:
        for name, folder in folders.items():
            table = profile(folder, args.threads)
            total = sum(t for _, t, _ in table)
            print(f"\n{name} ({folder}): one segment, {total:.0f} ms in nodes")
            for op, t, n in table[:12]:
                print(f"  {op:26}{t:9.0f} ms {100 * t / total:6.1f}%  {n:4d} nodes")
        return
    if args.parity_only:
        print_parity(parity(hub, folders["onnx"], args.threads), args.json)
        return
    if args.melody:
        return melody_main(args, hub, folders)
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = str(Path(tmp) / "mix.npy")
        np.save(wav_path, music(args.seconds, 44100, 2))
        sides = {"apply_model": ("run_torch", str(hub), wav_path, args.threads)}
        for tag, folder in folders.items():
            for n in (int(v) for v in args.segments_per_run.split(",")):
                sides[f"{tag} ({n} segment{'s' if n > 1 else ''}/run)"] = ("run_onnx", str(folder), wav_path,
                                                                          args.threads, n, tag)
        runs = _rounds(args, sides)
        want = np.load(wav_path + ".torch.npy")
        peak = float(np.abs(np.load(wav_path)).max())
        results = {}
        for name, side in sides.items():
            r = {k: _median(runs[name], k) for k in ("separate_s", "load_s", "peak_rss_mb")}
            r["rounds_s"] = [x["separate_s"] for x in runs[name]]
            if side[0] == "run_onnx":
                out = np.load(wav_path + f".onnx{side[4]}{side[5]}.npy")
                r["max_abs_over_input_peak"] = float(np.abs(out - want).max() / peak)
            results[name] = r
    t = results["apply_model"]
    print(f"\nhtdemucs architecture (random weights), {args.seconds:g} s of 44.1 kHz stereo, shift {SHIFT}, "
          f"{args.threads} threads, CPU, {args.rounds} alternating round(s), load {os.getloadavg()[0]:.1f}")
    print(f"{'':30}{'separate s':>11}{'x torch':>9}{'RTF':>8}{'load s':>8}{'RSS MB':>8}{'|diff|/peak':>13}")
    for name, r in results.items():
        r["rtf"] = args.seconds / r["separate_s"]
        r["x_torch"] = t["separate_s"] / r["separate_s"]
        print(f"{name:30}{r['separate_s']:>11.2f}{r['x_torch']:>9.2f}{r['rtf']:>8.2f}"
              f"{r['load_s']:>8.2f}{r['peak_rss_mb']:>8.0f}{r.get('max_abs_over_input_peak', 0.0):>13.2e}")
    sizes = {name: sum(f.stat().st_size for f in folder.glob("stems.onnx*")) / 1e6 for name, folder in folders.items()}
    report = {"seconds": args.seconds, "threads": args.threads, "shift": SHIFT, "stems_onnx_mb": sizes, **results}
    if not args.no_parity:
        report["parity"] = parity(hub, folders["onnx"], args.threads)
    print_parity(report.get("parity", {}), None)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


def melody_main(args, hub: Path, folders: dict[str, Path]) -> None:
    """Per melody length: audiocraft's stems step in torch, then each folder's melody stems + chroma,
    alternating; the chroma frames each folder gives against the first folder's."""
    report = {}
    print(f"\nmelody path, mono {MELODY_RATE} Hz melodies, shift {SHIFT}, {args.threads} threads, "
          f"{args.rounds} alternating round(s)")
    print(f"{'':34}{'stems s':>9}{'x torch':>9}{'chroma s':>10}{'RSS MB':>8}{'frames = first':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (float(v) for v in args.melody.split(",")):
            wav_path = str(Path(tmp) / f"melody{seconds:g}.npy")
            np.save(wav_path, music(seconds, MELODY_RATE, 1)[0])
            sides = {"audiocraft recipe (apply_model)": ("run_torch_melody", str(hub), wav_path, args.threads)}
            sides.update({name: ("run_melody", str(folder), wav_path, args.threads) for name, folder in folders.items()})
            chroma = {}
            runs: dict[str, list[dict]] = {name: [] for name in sides}
            for _ in range(args.rounds):
                for name, (function, *call) in sides.items():
                    runs[name].append(run_isolated("benchmarks.bench_stems", function, *call))
                    if function == "run_melody":
                        chroma[name] = np.load(wav_path + ".chroma.npy")
            torch_s = _median(runs["audiocraft recipe (apply_model)"], "stems_s")
            first = chroma[next(iter(folders))]
            for name, r in runs.items():
                row = {k: _median(r, k) for k in r[0]}
                row["x_torch"] = torch_s / row["stems_s"]
                if name in chroma:
                    row["frames_equal"] = float((chroma[name] == first).all(axis=-1).mean())
                report[f"{seconds:g}s {name}"] = row
                print(f"{f'{seconds:g} s: {name}':34}{row['stems_s']:>9.2f}{row['x_torch']:>9.2f}"
                      f"{row.get('chroma_s', float('nan')):>10.3f}{row['peak_rss_mb']:>8.0f}"
                      f"{row.get('frames_equal', float('nan')):>16.1%}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


def print_parity(parities: dict, json_path: Path | None) -> None:
    for name, p in parities.items():
        print(f"parity {name:16} max |ONNX - apply_model| = {p['max_abs_over_input_peak']:.2e} x input peak "
              f"({p['max_abs_over_stems_peak']:.2e} x stems peak); chroma after stems equal to audiocraft's "
              f"recipe: {p['chroma_equal']} ({p['chroma_frames_equal']:.1%} of {p['chroma_frames']} frames)")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"parity": parities}, indent=2))


if __name__ == "__main__":
    main()
