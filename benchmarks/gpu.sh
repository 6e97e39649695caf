#!/usr/bin/env bash
# CUDA check and GPU benchmark in one go (target: under 8 minutes on an H100).
#
#   bash benchmarks/gpu.sh [ARCH] [SECONDS]      # default: melody 10
#
# Installs onnxruntime-gpu next to torch (CUDA build) in a fresh venv, builds the random-weight
# checkpoint, exports it fp16 with the static KV cache, then:
#   1. parity: greedy tokens of the fp32 concat graph on CUDA == transformers fp32 on CUDA (tiny model);
#   2. speed: transformers fp16 generate vs this runtime fp16 on the same GPU, same prompt and steps.
# Results go to $OUT (or benchmarks/results) as JSON. Never run in CI (CI has no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-melody}
SECONDS_AUDIO=${2:-10}
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"

python3 -m venv /tmp/gpu-venv && . /tmp/gpu-venv/bin/activate
pip install -q --upgrade pip
pip install -q torch "transformers>=5" onnx safetensors sentencepiece onnxruntime-gpu numpy tokenizers soundfile soxr click
pip install -q --no-deps -e .
python - <<'EOF'
import onnxruntime as ort, torch
print("onnxruntime", ort.__version__, ort.get_available_providers())
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime-gpu sees no GPU"
EOF

export ARCH SECONDS_AUDIO RESULTS
python - <<'EOF'
import json, os, time
from pathlib import Path
import numpy as np, torch
from musicgen_onnx.export.random_checkpoints import build_checkpoint
from musicgen_onnx.export.exporter import export
from musicgen_onnx.export import reference
from musicgen_onnx.runtime import MusicGen

out = Path(os.environ["RESULTS"]); arch = os.environ["ARCH"]; seconds = float(os.environ["SECONDS_AUDIO"])
work = Path("/tmp/gpu-work"); work.mkdir(exist_ok=True)
report = {}

# 1. CUDA parity on the tiny melody model: fp32 concat graph on CUDA vs transformers fp32 on CUDA
ck = build_checkpoint("tiny-melody", work / "tiny")
folder = export(str(ck), work / "tiny-onnx", kv_cache="concat", force=True)
model, tok = reference.load(ck)
model = model.to("cuda")
prompts = ["happy rock", "sad jazz with piano", "techno"]
ref_codes, _ = reference.generate(model, tok, prompts, 50)
ours = MusicGen.from_pretrained(folder, providers="cuda")
_, codes = ours.generate(prompts, duration=1.0, greedy=True, return_codes=True)
report["cuda_parity_tokens_identical"] = bool((codes == ref_codes).all())
print("CUDA parity (tiny melody, fp32):", report["cuda_parity_tokens_identical"])

# 2. speed: full-size fp16, transformers vs this runtime on the same GPU
ck = build_checkpoint(arch, work / arch)
t0 = time.perf_counter()
folder = export(str(ck), work / f"{arch}-fp16", precision="fp16", force=True, validate_graphs=False)
report["export_s"] = time.perf_counter() - t0
frames = int(seconds * 50); steps = frames + 3
model, tok = reference.load(ck)
model = model.to("cuda", torch.float16)
reference.generate(model, tok, ["warm up"], 10)
torch.cuda.synchronize(); t0 = time.perf_counter()
reference.generate(model, tok, ["80s pop track with bassy drums and synth"], frames)
torch.cuda.synchronize(); torch_s = time.perf_counter() - t0
del model; torch.cuda.empty_cache()
ours = MusicGen.from_pretrained(folder, providers="cuda", verify_hashes=False)
ours.generate(["warm up"], duration=0.2, greedy=True)
t0 = time.perf_counter()
ours.generate(["80s pop track with bassy drums and synth"], duration=seconds, greedy=True)
onnx_s = time.perf_counter() - t0
report.update(arch=arch, seconds=seconds, steps=steps, torch_fp16_steps_per_s=steps / torch_s,
              onnx_fp16_steps_per_s=steps / onnx_s, ratio=torch_s / onnx_s, onnx_rtf=seconds / onnx_s,
              device=torch.cuda.get_device_name(0))
print(json.dumps(report, indent=2))
(out / f"gpu-{arch}.json").write_text(json.dumps(report, indent=2))
EOF
