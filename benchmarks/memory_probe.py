"""Where a model folder's memory goes: RSS and peak after loading, during and after generations.

    python -m benchmarks.memory_probe FOLDER [--seconds 10] [--runs 2] [--low-memory] [--arena]

Reads /proc/self/status (MiB) after ``from_pretrained``, at a few decoding steps of the first run and
after each run, and prints steps/s per run. ``--arena`` turns onnxruntime's CPU memory arena back on
(the runtime disables it) to reproduce the README's "Memory" comparison. Linux only.
"""

from __future__ import annotations

import argparse
import time


def _mem() -> str:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) // 1024
    return f"RSS {fields['VmRSS']} MiB, peak {fields['VmHWM']} MiB"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--low-memory", action="store_true")
    parser.add_argument("--arena", action="store_true", help="re-enable onnxruntime's CPU arena")
    args = parser.parse_args(argv)
    if args.arena:
        import onnxruntime as ort

        base = ort.SessionOptions

        class WithArena(base):
            def __setattr__(self, name, value):
                super().__setattr__(name, True if name == "enable_cpu_mem_arena" else value)

        ort.SessionOptions = WithArena
    from musicgen_onnx.runtime import MusicGen

    model = MusicGen.from_pretrained(args.folder, providers="cpu", verify_hashes=False, low_memory=args.low_memory)
    print(f"loaded: {_mem()}", flush=True)
    steps = int(args.seconds * model.frame_rate) + model.manifest.max_delay
    marks = {1, 10, steps // 2, steps}
    for run in range(args.runs):
        report = (lambda done, total: done in marks and print(f"  step {done}: {_mem()}", flush=True)) if run == 0 else None
        t0 = time.perf_counter()
        model.generate(["a calm piano melody"], duration=args.seconds, greedy=True, progress=report)
        print(f"run {run + 1}: {steps / (time.perf_counter() - t0):.2f} steps/s, after decode {_mem()}", flush=True)


if __name__ == "__main__":
    main()
