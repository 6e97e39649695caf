"""The one GPU script: capture gate, CUDA parity, sampler parity, then speed in four modes.

    python -m musicgen_onnx.benchmarks.gpu_check [--folders DIR] [--batches 1,4,8] [--seconds 10] [--out DIR]
    python -m musicgen_onnx.benchmarks.gpu_check --dry-run      # the same steps on the CPU EP, tiny models

Runs on the GPU machine as it is (no network: onnxruntime-gpu arrives in parts, see wheel_parts.py and
README "GPU"); installs nothing. Writes ``gpu_check.json`` to ``--out`` (default ``$OUT``) after every
step, so a run cut short still reports what it measured. Steps:

1. environment: onnxruntime, its providers, the card (nvidia-smi), torch and transformers if importable;
2. capture gate: today's decoder (models/tiny-melody, ``past_length``) is refused by onnxruntime with
   ``enable_cuda_graph``; the step-input decoder (``tiny-melody-fp16``) is captured, and 50 replayed
   steps give logits bit-equal to the same steps uncaptured;
3. fp32 parity on the tiny concat graph: greedy codes on CUDA (default math and ``use_tf32=0``) vs
   the CPU EP (token agreement);
4. the sampling graphs on CUDA vs the numpy sampler (token agreement);
5. for each folder in ``--folders`` (full-size graphs; ``--random-weights`` fills a weightless export's
   external data first): each batch in four modes - ``plain`` (the CUDA EP, tokens on the host),
   ``device_sampler``, ``cuda_graph``, ``cuda_graph+device_sampler`` - ms/step, steps/s, GPU memory and
   token agreement with ``plain``; transformers fp16 in the same process if it and the checkpoint are there.

Folders ``DIR/tiny-melody-fp16`` and ``DIR/tiny-melody-fp32-concat`` are exported on the spot when
missing and torch is importable (``--prepare DIR`` writes them here, to carry along instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "models" / "tiny-melody"
PROMPTS = ["80s pop track with bassy drums and synth", "a calm folk song with acoustic guitar",
           "energetic techno with a heavy kick", "sad jazz with piano and brushes"]
MODES = {"plain": dict(), "device_sampler": dict(device_sampler=True), "cuda_graph": dict(cuda_graph=True),
         "cuda_graph+device_sampler": dict(cuda_graph=True, device_sampler=True)}
TINY = {"tiny-melody-fp16": dict(precision="fp16"), "tiny-melody-fp32-concat": dict(kv_cache="concat")}


def _gpu_used_mb() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return float(out.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def _card() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
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

    def guard(self, step: str, fn, **entry) -> None:
        """Run one step; a failure is reported as that step's result and the script goes on."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one failed step must not lose the others' numbers
            self.add(step=step, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                     **entry)


def prepare(folders: Path) -> None:
    """Export the tiny folders the checks need (here, with torch), to carry to the GPU machine."""
    from musicgen_onnx.export.exporter import export
    from musicgen_onnx.export.random_checkpoints import build_checkpoint

    ck = build_checkpoint("tiny-melody", folders / "_checkpoint", seed=0)
    for name, kw in TINY.items():
        if not (folders / name).is_dir():
            export(str(ck), folders / name, force=True, **kw)


def _settings(providers: str, **kw):
    from musicgen_onnx.runtime.session import SessionSettings

    return dataclasses.replace(SessionSettings.resolve(providers), **kw)


def _model(folder: Path, settings):
    from musicgen_onnx.runtime.layouts import open_layout
    from musicgen_onnx.runtime.musicgen import MusicGen

    return MusicGen(open_layout(folder, None, False), settings)


def capture_gate(report: Report, folders: Path, providers: str) -> None:
    from musicgen_onnx.runtime.errors import ModelFolderError
    from musicgen_onnx.runtime.session import open_session

    cuda = providers == "cuda"
    try:
        open_session(BUNDLED / "decoder.onnx", _settings(providers, cuda_graph=True), "decoder")
        refused = None
    except ModelFolderError as exc:
        refused = str(exc)[:300]
    report.add(step="capture_gate_today", refused=refused is not None, message=refused,
               expected=cuda)  # on the CPU EP nothing is captured, so nothing is refused
    folder = folders / "tiny-melody-fp16"
    runs = {}
    for captured in (False, True):
        model = _model(folder, _settings(providers, cuda_graph=captured))
        cond = model.conditioner(PROMPTS[:2], None, True)
        stepper = model.new_stepper(4, cond, 60)
        K = model.manifest.num_codebooks
        rng = np.random.default_rng(0)
        out = [stepper.run(np.full((4, K, 1), model.manifest.special_token_id, dtype=np.int64), cond.prefix_length + 1)]
        addresses = []
        for _ in range(50):
            out.append(stepper.run(rng.integers(0, model.manifest.codebook_size, (4, K, 1)), 1))
            addresses.append(stepper.bound())
        runs[captured] = out, addresses
    same = all(np.array_equal(a, b) for a, b in zip(runs[False][0], runs[True][0]))
    report.add(step="capture_gate_new", folder=folder.name, replayed_steps=50, bit_equal=same,
               fixed_addresses=all(a == runs[True][1][0] for a in runs[True][1]))


def concat_parity(report: Report, folders: Path, providers: str) -> None:
    folder = folders / "tiny-melody-fp32-concat"
    cpu = _model(folder, _settings("cpu"))
    want = cpu.generate(PROMPTS[:3], duration=1.0, greedy=True, return_codes=True)[1]
    for tf32 in ("default", "0"):
        options = {} if tf32 == "default" else {"CUDAExecutionProvider": {"use_tf32": tf32}}
        settings = dataclasses.replace(_settings(providers), provider_options=options if providers == "cuda" else {})
        got = _model(folder, settings).generate(PROMPTS[:3], duration=1.0, greedy=True, return_codes=True)[1]
        report.add(step="fp32_concat_parity", use_tf32=tf32, agreement=float((got == want).mean()),
                   identical=bool((got == want).all()))


def sampler_parity(report: Report, providers: str) -> None:
    from musicgen_onnx.runtime.device_sampler import VOCAB, GraphSampler
    from musicgen_onnx.runtime.sampling import Sampler, classifier_free_guidance

    rng = np.random.default_rng(0)
    settings = _settings(providers)
    agree = total = 0
    for kw in (dict(top_k=250), dict(top_k=1), dict(top_k=0, temperature=1.5), dict(top_p=0.9), dict(greedy=True)):
        greedy = kw.pop("greedy", False)
        for batch in (1, 4, 8):
            host = Sampler(greedy, seed=list(range(batch)), rows=batch, **kw)
            graph = GraphSampler(Sampler(greedy, seed=list(range(batch)), rows=batch, **kw), 3.0, settings)
            for _ in range(5):
                logits = (rng.standard_normal((2 * batch, 4, VOCAB)) * 4).astype(np.float32)
                want = host(classifier_free_guidance(logits, 3.0))
                got, _ = graph(logits)
                agree += int((got == want).sum())
                total += want.size
    report.add(step="sampler_parity", agreement=agree / total, tokens=total)


def fill_random_weights(folder: Path, seed: int = 0) -> int:
    """Write each external-data file a weightless graph refers to: random values of every initializer's
    shape and dtype, scaled by 1/sqrt(fan-in) so the logits stay finite; returns the bytes written."""
    import onnx

    rng = np.random.default_rng(seed)
    written = 0
    for path in sorted(folder.glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        files: dict[str, list] = {}
        for init in model.graph.initializer:
            if init.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in init.external_data}
            files.setdefault(info["location"], []).append((int(info.get("offset", 0)), init))
        for location, inits in files.items():
            target = folder / Path(location).name
            with open(target, "wb") as f:
                for offset, init in sorted(inits, key=lambda x: x[0]):
                    dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
                    shape = tuple(init.dims)
                    fan_in = shape[0] if len(shape) >= 2 else 1
                    if np.issubdtype(dtype, np.floating):
                        values = (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(dtype)
                    else:
                        values = rng.integers(0, 8, shape).astype(dtype)
                    f.seek(offset)
                    f.write(values.tobytes())
                    written += values.nbytes
    return written


def speed(report: Report, folder: Path, batches: list[int], seconds: float, providers: str) -> None:
    base = {}
    for mode, kw in MODES.items():
        model = _model(folder, _settings(providers, **kw))
        model.generate(["warm up"], duration=0.2, greedy=True)
        for batch in batches:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
            before = _gpu_used_mb()
            t0 = time.perf_counter()
            codes = model.generate(prompts, duration=seconds, top_k=250, seed=list(range(batch)), return_codes=True)[1]
            took = time.perf_counter() - t0
            steps = codes.shape[2] + model.manifest.max_delay
            base.setdefault(batch, codes)
            used = _gpu_used_mb()
            report.add(step="speed", folder=folder.name, mode=mode, batch=batch, ms_per_step=1000 * took / steps,
                       steps_per_s=steps / took, real_time_factor=batch * seconds / took,
                       gpu_used_mb=used, gpu_delta_mb=None if used is None or before is None else used - before,
                       agreement_with_plain=float((codes == base[batch]).mean()))
        del model


def transformers_speed(report: Report, checkpoint: Path, batches: list[int], seconds: float, dry: bool) -> None:
    import torch

    from musicgen_onnx.export import reference

    model, tok = reference.load(checkpoint)
    model = model.to("cpu" if dry else "cuda", torch.float32 if dry else torch.float16)
    frames = int(seconds * 50)
    reference.generate(model, tok, ["warm up"], 5)
    for batch in batches:
        t0 = time.perf_counter()
        reference.generate(model, tok, [PROMPTS[i % len(PROMPTS)] for i in range(batch)], frames)
        if not dry:
            torch.cuda.synchronize()
        report.add(step="transformers", checkpoint=checkpoint.name, batch=batch,
                   steps_per_s=(frames + 3) / (time.perf_counter() - t0))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folders", default="/tmp/gpu-folders", help="tiny folders (made if missing) and full-size ones")
    ap.add_argument("--full", default="", help="comma-separated folder names under --folders to time")
    ap.add_argument("--random-weights", action="store_true", help="fill the --full folders' external data first")
    ap.add_argument("--checkpoints", default="", help="transformers checkpoints to time in the same process")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--prepare", action="store_true", help="only export the tiny folders into --folders")
    ap.add_argument("--dry-run", action="store_true", help="CPU EP, tiny folders, short: proves the script")
    args = ap.parse_args(argv)
    folders = Path(args.folders)
    folders.mkdir(parents=True, exist_ok=True)
    if args.prepare or any(not (folders / n).is_dir() for n in TINY):
        prepare(folders)
        if args.prepare:
            return
    import onnxruntime as ort

    dry = args.dry_run
    providers = "cpu" if dry else "cuda"
    batches = [1, 2] if dry else [int(b) for b in args.batches.split(",")]
    seconds = 0.5 if dry else args.seconds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out / "gpu_check.json")
    env = dict(dry_run=dry, onnxruntime=ort.__version__, providers=ort.get_available_providers(), card=_card())
    for name in ("torch", "transformers"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    report.add(step="environment", **env)
    report.guard("capture_gate", lambda: capture_gate(report, folders, providers))
    report.guard("fp32_concat_parity", lambda: concat_parity(report, folders, providers))
    report.guard("sampler_parity", lambda: sampler_parity(report, providers))
    full = [folders / n for n in args.full.split(",") if n] or ([folders / "tiny-melody-fp32-concat"] if dry else [])
    for folder in full:
        if args.random_weights:
            report.guard("random_weights", lambda: report.add(step="random_weights", folder=folder.name,
                                                              bytes=fill_random_weights(folder)))
        report.guard("speed", lambda: speed(report, folder, batches, seconds, providers), folder=folder.name)
    for ck in [Path(c) for c in args.checkpoints.split(",") if c] or ([folders / "_checkpoint"] if dry else []):
        if env["transformers"] is not None:
            report.guard("transformers", lambda: transformers_speed(report, ck, batches, seconds, dry))
    report.add(step="done")


if __name__ == "__main__":
    main()
