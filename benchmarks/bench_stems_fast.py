"""The two stems tiers per segment: the exact fp32 graph against the int8 ``stems_fast`` graph, on the
released htdemucs architecture (random weights), alternating in one process, plus the chroma the melody
path takes from each on a few music-like melodies.

    python -m benchmarks.bench_stems_fast --threads 2 --rounds 3 [--folder STEMS_FOLDER]

Without ``--folder`` a stems folder with both graphs is exported once into benchmarks/cache/htdemucs-onnx-fast
(validated: ``--no-validate`` would leave the fast graph out). The graphs run with the runtime's session
options for a stems graph (runtime/session.py ``session_options``), intra-op spinning off. Graph time is the
onnxruntime call alone, segment time the whole per-segment melody step around it (normalisation, STFT, graph,
inverse STFT); CPU time is the process's (spinning off, so it counts work, not waiting) and is what to read on
a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


from benchmarks.bench_runtime import CACHE
from benchmarks.bench_stems import ensure_demucs, music

TIERS = ("stems", "stems_fast")


def ensure_folder() -> Path:
    out = CACHE / "htdemucs-onnx-fast"
    if not out.exists():
        from musicgen_onnx.export.stems import export_stems_folder

        # validated: without it the export leaves the fast graph out (unchecked, it would become the default)
        export_stems_folder(str(ensure_demucs()), out, progress=lambda m: print(m, file=sys.stderr))
    return out


class Timed:
    """The separator's graph, its calls timed (wall and process CPU)."""

    def __init__(self, graph):
        self.graph, self.wall, self.cpu = graph, [], []

    def run(self, outputs, feeds):
        c, t = time.process_time(), time.perf_counter()
        out = self.graph.run(outputs, feeds)
        self.wall.append(time.perf_counter() - t)
        self.cpu.append(time.process_time() - c)
        return out


def separators(folder: Path, threads: int) -> dict:
    import onnxruntime as ort

    from musicgen_onnx.runtime.manifest import folder_file, load_stems_manifest
    from musicgen_onnx.runtime.session import SessionSettings, session_options
    from musicgen_onnx.runtime.stems import StemSeparator

    m = load_stems_manifest(folder)
    out = {}
    for name in TIERS:
        so = session_options(SessionSettings.resolve("cpu", threads), arena=True)  # the runtime's, for a stems graph
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # CPU time counts work, not waiting
        session = ort.InferenceSession(str(folder_file(folder, m.graphs[name].file)), so, providers=["CPUExecutionProvider"])
        out[name] = StemSeparator(Timed(session), m.stems, m.graphs[name])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None, help="a stems folder with graphs stems and stems_fast")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--melodies", type=int, default=3, help="music() melodies of 12 s for the chroma check")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from musicgen_onnx.export.stems_fast import chroma_agreement

    seps = separators(args.folder or ensure_folder(), args.threads)
    p = seps["stems"].params
    segment = music(p.segment_length / p.sample_rate + 0.01, p.sample_rate, p.audio_channels, seed=9)[None, :, :p.segment_length]
    rows = {name: {"segment_wall": [], "segment_cpu": []} for name in TIERS}
    for s in seps.values():
        s._model(segment, melody=True)  # warm-up
        s.graph.wall.clear(), s.graph.cpu.clear()
    for _ in range(args.rounds):
        for name, s in seps.items():
            c, t = time.process_time(), time.perf_counter()
            s._model(segment, melody=True)
            rows[name]["segment_wall"].append(time.perf_counter() - t)
            rows[name]["segment_cpu"].append(time.process_time() - c)
    for name, s in seps.items():
        rows[name].update(graph_wall=list(s.graph.wall), graph_cpu=list(s.graph.cpu))  # before the chroma check's calls
    melodies = [music(12.0, 32000, 1, seed=100 + i)[0] for i in range(args.melodies)]
    agree = chroma_agreement(seps["stems"], seps["stems_fast"], melodies)
    load = os.getloadavg()[0]
    print(f"load average {load:.1f}; {args.threads} threads; min (all rounds) per 7.8 s segment")
    print(f"{'graph':12} {'graph wall s':>22} {'graph CPU s':>22} {'segment wall s':>22} {'segment CPU s':>22}")
    for name, r in rows.items():
        print(f"{name:12}" + "".join(f" {min(r[k]):7.2f} {str([round(v, 2) for v in r[k]]):>14}"
                                     for k in ("graph_wall", "graph_cpu", "segment_wall", "segment_cpu")))
    a, b = rows["stems"], rows["stems_fast"]
    print(f"fast / exact speed-up: graph wall {min(a['graph_wall']) / min(b['graph_wall']):.2f}x, graph CPU "
          f"{min(a['graph_cpu']) / min(b['graph_cpu']):.2f}x, segment CPU {min(a['segment_cpu']) / min(b['segment_cpu']):.2f}x")
    print(f"chroma of vocals + other, fast vs exact: {agree:.1%} of frames equal ({len(melodies)} melodies of 12 s, music())")
    if args.json:
        args.json.write_text(json.dumps({"load": load, "rows": rows, "chroma_agreement": agree}, indent=2))


if __name__ == "__main__":
    main()
