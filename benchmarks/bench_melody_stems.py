"""May the melody path default to the fast stems tier? Chroma agreement exact vs fast on a held set, and speed.

    python -m benchmarks.bench_melody_stems [--fast-graph PATH | --fast-folder FOLDER] [--threads 2]
        [--items N] [--speed 30,3] [--rounds 1] [--decompose] [--long N] [--no-agreement] [--no-speed]
        [--json out.json]

The melody path reads of the vocals + other stems only their chroma: a 12-bin argmax per frame (235
frames over 30 s at 32 kHz). So the fast tier (the int8 ``stems_fast`` graph under apply_model's segment
plan, what the melody path runs when a folder has it) is judged by that argmax, not by the waveform;
so is the ``fast`` segment plan of runtime/stems.py (the fewest segments), measured and not a default:

* **agreement**: a held set of music-like inputs, deterministic (chords, drum patterns, voice-like
  tones with vibrato and formants, bass, noise, and mixtures; 16, 22.05, 32, 44.1 and 48 kHz; 3, 10
  and 30 s; mono and stereo files, which the melody path mixes down), each through the single-window
  melody path as ``GenerationTask.window_chroma`` runs it (``prepare_melodies`` with stems,
  ``single_window_cut``, ``StemSeparator.melody``, ``batch_chroma``): the exact tier (fp32 graph, exact
  plan, the item's seeded shift) against the fast tier. Frame agreement = share of chroma frames with
  the same argmax, overall (frame-weighted), mean and min per item. ``--decompose`` adds the int8 graph
  under the fast plan and the fast plan with the fp32 graph (what the plan changes), and the exact
  tier under another seed's shift (how far apply_model's own random shift moves the chroma). The exact tier's chroma is cached per item
  under benchmarks/cache/melody-stems/ (keyed by the fp32 graph's hash and the held set's version),
  so a second run, e.g. of a new fast graph, costs only the fast tier.
* **speed**: the stems stage of a 30 s and a 3 s mono 32 kHz melody: audiocraft's recipe
  (``apply_model`` in torch + demucs, bench_stems.run_torch_melody), the exact tier, the fast tier, and
  the int8 graph under the fast plan, each in its own subprocess, alternating ``--rounds`` times: seconds
  (median), peak RSS, ratio to apply_model.
* ``--long N``: N melodies of 45 s (longer than one window reads), the fast tier with the exact
  plan's single-window cut (one segment and shift past the chroma span) and with the fast plan's
  (the chroma span rounded up to whole segments), each against the exact tier: segments and agreement.

Full-size htdemucs architecture with random weights (bench_stems' cache: benchmarks/cache/htdemucs-random,
htdemucs-onnx). The fast graph: ``--fast-graph`` an .onnx with the stems graph's inputs and outputs, or
``--fast-folder`` a stems folder whose manifest names graph ``stems_fast`` (or that holds ``stems_fast.onnx``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_runtime import CACHE, peak_rss_mb, run_isolated
from benchmarks.bench_stems import MELODY_RATE, SHIFT, ensure_demucs, ensure_export, music

HELD_SET_VERSION = 1  # bump when the generators below change: the cached exact chroma is keyed by it
RATES = (16000, 22050, 32000, 44100, 48000)
KINDS = ("chords", "drums", "voice", "noise", "voice+chords", "chords+drums", "voice+noise", "full mix")
LENGTHS = (3.0, 3.0, 10.0, 3.0, 10.0, 30.0)  # cycled: 10 items of 3 s, 8 of 10 s, 6 of 30 s in 24
DEFAULT_ITEMS = 24
OTHER_SHIFT = "exact, another shift"  # the yardstick: how much the exact tier moves with its own random shift
OTHER_SEED = 7919


# ---------------------------------------------------------------- the held set: music-like signals
def _hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69) / 12)


def _notes(rng, seconds: float, low: float, high: float, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Note onsets (s) and MIDI pitches: durations in [low, high), pitches drawn from ``pool``."""
    onsets = [0.0]
    while onsets[-1] < seconds:
        onsets.append(onsets[-1] + rng.uniform(low, high))
    return np.array(onsets), rng.choice(pool, size=len(onsets))


def _per_sample(t: np.ndarray, onsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    return values[np.clip(np.searchsorted(onsets, t, side="right") - 1, 0, len(values) - 1)]


def _envelope(t: np.ndarray, onsets: np.ndarray, attack: float = 0.02, decay: float = 1.5) -> np.ndarray:
    since = t - _per_sample(t, onsets, onsets)
    return np.minimum(since / attack, 1.0) * np.exp(-since / decay)


def chords(t: np.ndarray, rng) -> np.ndarray:
    """Triads (major or minor) changing every 1-2 s, three harmonics per note, soft attacks."""
    onsets, roots = _notes(rng, t[-1], 1.0, 2.0, np.arange(48, 60))
    minor = rng.integers(0, 2, size=len(roots))
    out = np.zeros_like(t)
    for k, interval in enumerate((0, 4, 7)):
        midi = roots + np.where((k == 1) & (minor == 1), 3, interval)
        f = _per_sample(t, onsets, _hz(midi))
        for h, a in ((1, 1.0), (2, 0.4), (3, 0.2)):
            out += a * np.sin(2 * np.pi * h * f * t + k)
    return 0.12 * out * _envelope(t, onsets, 0.03, 2.5)


def drums(t: np.ndarray, sr: int, rng) -> np.ndarray:
    """Kick (pitch-swept sine) on 1 and 3, snare (noise + 180 Hz) on 2 and 4, hats on eighths."""
    beat = 60.0 / rng.uniform(85, 135)
    pos = t % (4 * beat)
    kick_t = pos % (2 * beat)
    kick = np.sin(2 * np.pi * (50 * kick_t + 70 * 0.04 * (1 - np.exp(-kick_t / 0.04)))) * np.exp(-kick_t / 0.15)
    snare_t = (pos - beat) % (2 * beat)
    noise = rng.standard_normal(t.shape[0])
    snare = (0.6 * noise + np.sin(2 * np.pi * 180 * t)) * np.exp(-snare_t / 0.08)
    hat_t = pos % (beat / 2)
    hats = np.diff(noise, prepend=0.0) * np.exp(-hat_t / 0.02)
    return 0.5 * kick + 0.25 * snare + 0.08 * hats


VOWELS = ((800, 1200, 2500), (300, 2300, 3000), (350, 800, 2300), (500, 1700, 2500), (450, 900, 2600))


def voice(t: np.ndarray, rng) -> np.ndarray:
    """A sung line: notes of a major scale, 0.3-0.9 s each, vibrato (5-6 Hz, +-0.3 semitone), harmonics
    of the glottal source shaped by three formants of a vowel that changes with each note."""
    scale = 60 + np.array([0, 2, 4, 5, 7, 9, 11, 12]) + rng.integers(-5, 6)
    onsets, midi = _notes(rng, t[-1], 0.3, 0.9, scale)
    vib = 0.3 * np.sin(2 * np.pi * rng.uniform(5, 6) * t)
    f0 = _hz(_per_sample(t, onsets, midi.astype(float)) + vib)
    phase = 2 * np.pi * np.cumsum(f0) / (1.0 / (t[1] - t[0]))
    vowel = _per_sample(t, onsets, np.arange(len(onsets)) % len(VOWELS))
    formants = np.array(VOWELS, dtype=np.float64)[vowel]  # [samples, 3]
    out = np.zeros_like(t)
    for h in range(1, 30):
        fh = h * f0
        gain = sum(1.0 / (1.0 + ((fh - formants[:, k]) / (80.0 + 40 * k)) ** 2) for k in range(3)) / h ** 0.5
        out += np.where(fh < 5000, gain, 0.0) * np.sin(h * phase)
    return 0.1 * out * np.minimum(_envelope(t, onsets, 0.05, 3.0) * 1.5, 1.0)


def bass(t: np.ndarray, rng) -> np.ndarray:
    onsets, midi = _notes(rng, t[-1], 0.4, 0.8, np.arange(33, 45))
    f = _per_sample(t, onsets, _hz(midi))
    return 0.3 * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)) * _envelope(t, onsets, 0.01, 0.6)


def noise(t: np.ndarray, rng) -> np.ndarray:
    """Pink noise (1/f power), shaped in the frequency domain."""
    spec = np.fft.rfft(rng.standard_normal(t.shape[0]))
    spec /= np.sqrt(np.maximum(np.arange(spec.shape[0]), 1))
    out = np.fft.irfft(spec, n=t.shape[0])
    return 0.2 * out / np.abs(out).max()


def held_item(kind: str, sr: int, seconds: float, channels: int, seed: int) -> np.ndarray:
    """``[channels, samples]`` float32; stereo places each part at its own pan."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    parts = {"chords": lambda: chords(t, rng), "drums": lambda: drums(t, sr, rng), "voice": lambda: voice(t, rng),
             "noise": lambda: noise(t, rng), "bass": lambda: bass(t, rng)}
    names = {"full mix": ["voice", "chords", "drums", "bass"]}.get(kind, kind.split("+"))
    mix = np.zeros((channels, t.shape[0]))
    for name in names:
        part = parts[name]()
        pan = rng.uniform(0.2, 0.8)
        gains = [1.0] if channels == 1 else [np.sqrt(1 - pan), np.sqrt(pan)]
        for c, g in enumerate(gains):
            mix[c] += g * part
    return (0.8 * mix / max(np.abs(mix).max(), 1e-9)).astype(np.float32)


def held_set(count: int = DEFAULT_ITEMS) -> list[dict]:
    """Every kind at every length, the rates and channel counts cycled across them; seeds fixed."""
    items = []
    for i in range(count):
        kind, sr, seconds = KINDS[i % len(KINDS)], RATES[i % len(RATES)], LENGTHS[i % len(LENGTHS)]
        channels = 2 if (i // 2) % 2 else 1
        items.append({"name": f"{i:02d} {kind}, {sr / 1000:g} kHz, {seconds:g} s, {'stereo' if channels == 2 else 'mono'}",
                      "kind": kind, "sr": sr, "seconds": seconds, "channels": channels, "seed": 1000 + i})
    return items


# ---------------------------------------------------------------- the melody path, one tier
def open_tier(folder: Path, graph_path: Path | None, plan: str, threads: int):
    """A :class:`StemSeparator` over the folder's facts with ``graph_path`` (None: its own stems.onnx)."""
    from musicgen_onnx.runtime.manifest import folder_file, load_stems_manifest
    from musicgen_onnx.runtime.session import SessionSettings, open_graph
    from musicgen_onnx.runtime.stems import StemSeparator

    manifest = load_stems_manifest(folder)
    info = manifest.graphs["stems"]
    path = graph_path or folder_file(folder, info.file)
    graph = open_graph(folder, "stems", Path(path), manifest, SessionSettings.resolve("cpu", threads))  # as StemSeparator.open
    return StemSeparator(graph, manifest.stems, info, plan=plan)


def melody_chroma(separator, wav: np.ndarray, sr: int, seed: int, cut_plan: str | None = None) -> tuple[np.ndarray, int]:
    """The single-window melody path of ``wav [channels, samples]``: chroma frames ``[frames, 12]`` and
    the segments the separation ran. ``cut_plan``: whose single-window cut (default: the separator's)."""
    from musicgen_onnx.runtime.chroma import batch_chroma
    from musicgen_onnx.runtime.manifest import ChromaParams
    from musicgen_onnx.runtime.melody import prepare_melodies, single_window_cut

    params = ChromaParams()
    wavs = prepare_melodies(wav, sr, 1, params, stems=separator.params)
    wavs = single_window_cut(wavs, params, separator.params, cut_plan or separator.plan)
    shift = separator.draw_shift(np.random.default_rng(seed))
    segments = []
    stems = separator.melody(np.stack(wavs), params.sample_rate, shift, lambda done, total: segments.append(total))
    return batch_chroma(list(stems), params)[0], segments[-1]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of frames whose argmax (the one-hot's bin) is the same."""
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def _graph_key(folder: Path) -> str:
    from musicgen_onnx.runtime.manifest import load_stems_manifest

    files = load_stems_manifest(folder).graphs["stems"].files
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]


def exact_chroma(separator, folder: Path, item: dict) -> tuple[np.ndarray, int]:
    """The exact tier's chroma of ``item``, cached (it changes only with the fp32 graph or the held set)."""
    cache = CACHE / "melody-stems" / f"exact-{_graph_key(folder)}-v{HELD_SET_VERSION}"
    key = hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{key}.npz"
    if path.exists():
        saved = np.load(path)
        return saved["chroma"], int(saved["segments"])
    wav = held_item(item["kind"], item["sr"], item["seconds"], item["channels"], item["seed"])
    chroma, segments = melody_chroma(separator, wav, item["sr"], item["seed"])
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, chroma=chroma, segments=segments)
    os.replace(tmp, path)
    return chroma, segments


def run_agreement(folder: Path, fast_graph: Path, threads: int, items: list[dict], decompose: bool) -> dict:
    from musicgen_onnx.runtime.stems import EXACT, FAST

    exact = open_tier(folder, None, EXACT, threads)
    tiers = {"fast tier": open_tier(folder, fast_graph, EXACT, threads)}  # what the melody path runs
    if decompose:
        tiers["int8 + fast plan"] = with_plan(tiers["fast tier"], FAST)
        tiers["fast plan, fp32"] = with_plan(exact, FAST)
        tiers[OTHER_SHIFT] = exact
    rows = []
    print(f"\n{'item':44}{'frames':>7}{'segments exact/fast':>21}" + "".join(f"{name:>24}" for name in tiers))
    for item in items:
        want, exact_segments = exact_chroma(exact, folder, item)
        wav = held_item(item["kind"], item["sr"], item["seconds"], item["channels"], item["seed"])
        row = {**item, "frames": int(want.shape[0]), "segments_exact": exact_segments}
        for name, separator in tiers.items():
            seed = item["seed"] + (OTHER_SEED if name == OTHER_SHIFT else 0)
            got, segments = melody_chroma(separator, wav, item["sr"], seed)
            row[name] = agreement(want, got)
            if name in ("fast tier", "int8 + fast plan"):
                row["segments_fast"] = segments
        rows.append(row)
        print(f"{item['name']:44}{row['frames']:>7}{exact_segments:>12}/{row['segments_fast']:<8}"
              + "".join(f"{row[name]:>24.1%}" for name in tiers), flush=True)
    summary = {}
    frames = sum(r["frames"] for r in rows)
    for name in tiers:
        summary[name] = {"overall": sum(r[name] * r["frames"] for r in rows) / frames,
                         "mean_per_item": float(np.mean([r[name] for r in rows])),
                         "min_per_item": min(r[name] for r in rows),
                         "min_item": min(rows, key=lambda r: r[name])["name"]}
        s = summary[name]
        print(f"{name}: {s['overall']:.2%} of {frames} frames agree with the exact tier (mean per item "
              f"{s['mean_per_item']:.2%}, min {s['min_per_item']:.2%}: {s['min_item']})")
    return {"items": rows, "frames": frames, "summary": summary}


def with_plan(separator, plan: str):
    """The same graph session under another plan (no second copy of the weights)."""
    from musicgen_onnx.runtime.stems import StemSeparator

    clone = StemSeparator.__new__(StemSeparator)
    clone.__dict__.update(separator.__dict__, plan=plan)
    return clone


def run_long(folder: Path, fast_graph: Path, threads: int, count: int) -> dict:
    """Melodies longer than a window reads: the fast tier with either plan's single-window cut."""
    from musicgen_onnx.runtime.stems import EXACT, FAST

    exact = open_tier(folder, None, EXACT, threads)
    fast = open_tier(folder, fast_graph, FAST, threads)
    rows = []
    print(f"\n{'long melody (45 s)':44}{'exact segs':>11}{'exact-cut fast':>16}{'fast-cut fast':>15}")
    for i in range(count):
        item = {"name": f"long {i} {KINDS[(5 + 2 * i) % len(KINDS)]}, 44.1 kHz, 45 s", "kind": KINDS[(5 + 2 * i) % len(KINDS)],
                "sr": 44100, "seconds": 45.0, "channels": 2, "seed": 2000 + i}
        want, exact_segments = exact_chroma(exact, folder, item)
        wav = held_item(item["kind"], item["sr"], item["seconds"], item["channels"], item["seed"])
        row = {**item, "frames": int(want.shape[0]), "segments_exact": exact_segments}
        for cut in (EXACT, FAST):
            t0 = time.perf_counter()
            got, segments = melody_chroma(fast, wav, item["sr"], item["seed"], cut_plan=cut)
            row[f"{cut}_cut"] = {"agreement": agreement(want, got), "segments": segments,
                                 "seconds": time.perf_counter() - t0}
        rows.append(row)
        e, f = row["exact_cut"], row["fast_cut"]
        print(f"{item['name']:44}{exact_segments:>11}{e['agreement']:>9.1%} ({e['segments']})"
              f"{f['agreement']:>9.1%} ({f['segments']})", flush=True)
    return {"items": rows}


# ---------------------------------------------------------------- speed, each side in its own process
def run_tier(folder: str, graph_path: str | None, plan: str, wav_path: str, threads: int) -> dict:
    """``StemSeparator.melody`` on a mono 32 kHz melody (julius to 44.1 kHz stereo, the segments,
    [vocals, other] summed, channel mean, julius back), as bench_stems.run_melody times it."""
    separator = open_tier(Path(folder), Path(graph_path) if graph_path else None, plan, threads)
    wav = np.load(wav_path)[None]
    t0 = time.perf_counter()
    separator.melody(wav, MELODY_RATE, SHIFT)
    return {"stems_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}


def run_speed(hub: Path, folder: Path, fast_graph: Path, threads: int, lengths: list[float], rounds: int) -> dict:
    sides = {"apply_model (audiocraft recipe)": ("benchmarks.bench_stems", "run_torch_melody", str(hub)),
             "exact tier": ("benchmarks.bench_melody_stems", "run_tier", str(folder), None, "exact"),
             "fast tier (int8 graph, apply_model's plan)": ("benchmarks.bench_melody_stems", "run_tier", str(folder),
                                                            str(fast_graph), "exact"),
             "int8 graph + fast plan (not a default)": ("benchmarks.bench_melody_stems", "run_tier", str(folder),
                                                        str(fast_graph), "fast")}
    report = {}
    print(f"\nspeed: stems stage of a mono {MELODY_RATE} Hz melody, {threads} threads, {rounds} alternating round(s), "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'':46}{'stems s (median)':>17}{'x apply_model':>15}{'peak RSS MB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            wav_path = str(Path(tmp) / f"melody{seconds:g}.npy")
            np.save(wav_path, music(seconds, MELODY_RATE, 1)[0])
            runs: dict[str, list[dict]] = {name: [] for name in sides}
            for _ in range(rounds):
                for name, (module, function, *call) in sides.items():
                    runs[name].append(run_isolated(module, function, *call, wav_path, threads))
            base = float(np.median([r["stems_s"] for r in runs["apply_model (audiocraft recipe)"]]))
            for name, rs in runs.items():
                row = {"stems_s": float(np.median([r["stems_s"] for r in rs])),
                       "rounds_s": [r["stems_s"] for r in rs],
                       "peak_rss_mb": float(np.median([r["peak_rss_mb"] for r in rs]))}
                row["x_apply_model"] = base / row["stems_s"]
                report[f"{seconds:g}s {name}"] = row
                print(f"{f'{seconds:g} s melody: {name}':46}{row['stems_s']:>17.2f}{row['x_apply_model']:>15.2f}"
                      f"{row['peak_rss_mb']:>13.0f}", flush=True)
    report["load_after"] = os.getloadavg()[0]
    return report


def fast_graph_path(args) -> Path:
    if args.fast_graph:
        return Path(args.fast_graph)
    if args.fast_folder:
        folder = Path(args.fast_folder)
        manifest = json.loads(next(folder.glob("musicgen_onnx*.json")).read_text())
        entry = manifest.get("graphs", {}).get("stems_fast")
        return folder / (entry["file"] if entry else "stems_fast.onnx")
    return CACHE / "q_cm" / "q_cm.onnx"  # the coordinator's QDQ int8 graph (/work/exp/q_cm.onnx), until export makes one


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast-graph", default=None, help="the fast tier's stems graph (.onnx)")
    parser.add_argument("--fast-folder", default=None, help="a stems folder with graph stems_fast")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS, help="held-set items (the first N)")
    parser.add_argument("--decompose", action="store_true",
                        help="also the fast plan with the fp32 graph and the fast graph with the exact plan")
    parser.add_argument("--long", type=int, default=0, metavar="N", help="N 45 s melodies: the single-window cuts")
    parser.add_argument("--speed", default="30,3", help="comma list of melody seconds for the speed rows")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-agreement", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    hub, folder, fast_graph = ensure_demucs(), ensure_export(), fast_graph_path(args)
    if not fast_graph.exists():
        raise SystemExit(f"fast graph {fast_graph} does not exist (give --fast-graph PATH or --fast-folder FOLDER)")
    t0 = time.perf_counter()
    report = {"fast_graph": str(fast_graph), "threads": args.threads, "load_before": os.getloadavg()[0]}
    print(f"fast graph {fast_graph}; load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    if not args.no_agreement:
        report["agreement"] = run_agreement(folder, fast_graph, args.threads, held_set(args.items), args.decompose)
    if args.long:
        report["long"] = run_long(folder, fast_graph, args.threads, args.long)
    if not args.no_speed:
        report["speed"] = run_speed(hub, folder, fast_graph, args.threads,
                                    [float(v) for v in args.speed.split(",")], args.rounds)
    report["wall_s"] = time.perf_counter() - t0
    print(f"\nwall {report['wall_s']:.0f} s, load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
