"""Where the time of ``generate --melody`` goes, per stage, on a full-size melody export with stems.

    python -m benchmarks.bench_melody_path [--folder FOLDER] [--seconds 10] [--melody 30,3] [--rounds 1]
        [--threads 2] [--before DIR [--before-folder FOLDER]] [--stream-first] [--json out.json]

Default folder: benchmarks/cache/melody-onnx-int4-stems, built on first use from the random-weight
``melody`` checkpoint (``export.random_checkpoints``) and the random-weight htdemucs of bench_stems
(``export(..., precision="int4", stems=...)``; ~6 min of 2 cores). For each melody length, with and
without stems, a fresh interpreter loads the folder (stems.onnx opened before timing: the first call
must not pay for it) and runs ``generate`` once with every stage timed, then ``generate_stream`` up
to its first chunk (time to first audio). Stages are timed by wrapping what ``MusicGen.parts()``
hands the loop (``separate_melodies``, ``conditioner``, ``new_stepper``) and the codec's ``decode``,
and by patching ``generation.batch_chroma``: no runtime code changes. ``prefill`` is the decoder's
first call (the conditioning prefix and the start column), ``steps`` the rest of the decoder calls,
``other`` the wall time none of the stages account for (sampling, delay pattern, bookkeeping). The
first-audio breakdown is of the stream call, after ``generate``: its prefill is the session's second.

``--before DIR``: DIR holds another ``musicgen_onnx`` (a checkout of an earlier commit, e.g. via
``git worktree add`` and a folder with a ``musicgen_onnx`` link to it); every side then also runs
with that code (on ``--before-folder``, default the same folder), alternating within each round, so
the before/after table comes from one run on one machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import weakref
from pathlib import Path

import numpy as np

from benchmarks.bench_runtime import CACHE, PROMPT, ensure_checkpoint, peak_rss_mb, run_isolated
from benchmarks.bench_stems import MELODY_RATE, ensure_demucs, music

STAGES = ("stems", "chroma", "text_encoder", "prefill", "steps", "codec")


def ensure_export() -> Path:
    out = CACHE / "melody-onnx-int4-stems"
    if not (out / "musicgen_onnx.json").exists():
        from musicgen_onnx.export.exporter import export

        export(str(ensure_checkpoint("melody")), out, precision="int4", stems=str(ensure_demucs()), force=True,
               progress=lambda m: print(m, file=sys.stderr))
    return out


class StageClock:
    """Seconds per stage, summed over the calls a generation makes."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.decoder_calls = 0

    def timed(self, stage: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0
        return wrapper

    def stepper(self, new_stepper):
        """Each stepper's ``run``: its first call is the prefill, the others the steps. The wrapper holds
        the stepper weakly: a bound ``run`` stored on the stepper would be a reference cycle, keeping its
        buffers alive past the loop until a garbage collection, and the codec's decode after the loop then
        page-faults fresh memory instead of reusing theirs (measured: 2.2-2.5 s instead of 0.8-0.9 s)."""
        def wrapper(*args, **kwargs):
            stepper = new_stepper(*args, **kwargs)
            me, run, first = weakref.ref(stepper), type(stepper).run, [True]

            def timed_run(*a, **k):
                stage = "prefill" if first[0] else "steps"
                first[0] = False
                self.decoder_calls += 1
                return self.timed(stage, run)(me(), *a, **k)
            stepper.run = timed_run
            return stepper
        return wrapper


def run_path(folder: str, melody_s: float, seconds: float, stems: bool, threads: int,
             stream_first: bool = False) -> dict:
    """One interpreter: load, ``generate`` with every stage timed, then ``generate_stream`` to its first chunk."""
    import musicgen_onnx
    from musicgen_onnx.runtime import generation
    from musicgen_onnx.runtime.musicgen import MusicGen

    t0 = time.perf_counter()
    model = MusicGen.from_pretrained(folder, providers="cpu", threads=threads)
    if stems:
        model.stems  # noqa: B018 - opens stems.onnx now, not inside the timed stems stage
    load = time.perf_counter() - t0
    clock = StageClock()
    model.separate_melodies = clock.timed("stems", model.separate_melodies)
    model.conditioner = clock.timed("text_encoder", model.conditioner)
    model.new_stepper = clock.stepper(model.new_stepper)
    model.codec.decode = clock.timed("codec", model.codec.decode)
    generation.batch_chroma = clock.timed("chroma", generation.batch_chroma)
    melody = music(melody_s, MELODY_RATE, 1)[0]
    kwargs = dict(duration=seconds, seed=1, stems=stems)
    row = {"load_s": load}

    def whole() -> None:
        before = dict(clock.seconds)
        t0 = time.perf_counter()
        audio = model.generate([PROMPT], melody, MELODY_RATE, **kwargs)
        row["total_s"] = time.perf_counter() - t0
        row.update({f"{k}_s": v - before[k] for k, v in clock.seconds.items()})
        row["other_s"] = row["total_s"] - sum(row[f"{k}_s"] for k in STAGES)
        row["audio_s"] = audio.shape[-1] / model.sample_rate

    def first_audio() -> None:
        before = dict(clock.seconds)
        t0 = time.perf_counter()
        stream = model.generate_stream([PROMPT], melody, MELODY_RATE, **kwargs)
        first = next(stream)
        row["first_audio_s"] = time.perf_counter() - t0
        row.update({f"first_audio_{k}_s": v - before[k] for k, v in clock.seconds.items()})
        row["first_chunk_s"] = first.shape[-1] / model.sample_rate
        stream.close()

    # generate first (the stream call is then the process's second: what a server's later calls see),
    # or with ``stream_first`` the stream call is the process's first (a CLI run: nothing reused yet)
    for part in ((first_audio, whole) if stream_first else (whole, first_audio)):
        part()
    row["peak_rss_mb"] = peak_rss_mb()
    row["code"] = str(Path(musicgen_onnx.__file__).resolve().parent)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None, help="a melody export with stems (default: built)")
    parser.add_argument("--seconds", type=float, default=10.0, help="music to generate")
    parser.add_argument("--melody", default="30,3", help="comma list of melody lengths in seconds")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole set, alternating; medians reported")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--before", type=Path, default=None,
                        help="a folder holding an earlier musicgen_onnx: each side runs with it too")
    parser.add_argument("--before-folder", type=Path, default=None, help="the model folder for --before (default: --folder)")
    parser.add_argument("--stream-first", action="store_true",
                        help="time the stream first, in a fresh process (nothing reused yet), then generate")
    args = parser.parse_args(argv)
    folder = args.folder or ensure_export()
    codes = {"": (None, folder)}
    if args.before:
        codes = {"before ": (str(args.before), args.before_folder or folder), "after ": (None, folder)}
    sides = [(code, float(m), stems) for m in args.melody.split(",") for stems in (True, False) for code in codes]
    runs: dict[tuple, list[dict]] = {side: [] for side in sides}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for code, melody_s, stems in sides:
            code_path, where = codes[code]
            runs[(code, melody_s, stems)].append(
                run_isolated("benchmarks.bench_melody_path", "run_path", str(where), melody_s, args.seconds, stems,
                             args.threads, args.stream_first, code_path=code_path))
    keys = [f"{s}_s" for s in STAGES] + ["other_s", "total_s", "first_audio_s"]
    print(f"\n{folder.name}: {args.seconds:g} s of music, mono {MELODY_RATE} Hz melody, {args.threads} threads, CPU, "
          f"{args.rounds} round(s), load {load:.1f} -> {os.getloadavg()[0]:.1f}")
    width = 16 + max(map(len, codes))
    print(f"{'melody':{width}}" + "".join(f"{k[:-2]:>13}" for k in keys) + f"{'RSS MB':>8}")
    report = {}
    for (code, melody_s, stems), rs in runs.items():
        row = {k: float(np.median([r[k] for r in rs])) for k in rs[0] if k != "code"}
        name = f"{code}{melody_s:g} s {'stems' if stems else 'no-stems'}"
        report[name] = {**row, "code": rs[0]["code"], "rounds": rs}
        print(f"{name:{width}}" + "".join(f"{row[k]:>13.2f}" for k in keys) + f"{row['peak_rss_mb']:>8.0f}")
    print("seconds per stage of one generate call; first_audio: generate_stream until its first chunk, of which:")
    first = [f"first_audio_{s}_s" for s in STAGES]
    print(f"{'':{width}}" + "".join(f"{k[12:-2]:>13}" for k in first) + f"{'chunk s':>9}")
    for name, row in report.items():
        print(f"{name:{width}}" + "".join(f"{row[k]:>13.2f}" for k in first) + f"{row['first_chunk_s']:>9.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"folder": str(folder), "seconds": args.seconds, "threads": args.threads,
                                         "load_before": load, **report}, indent=2))


if __name__ == "__main__":
    main()
