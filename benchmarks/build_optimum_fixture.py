"""Build optimum exports of this project's random-weight checkpoints: the committed test fixtures
(``tests/fixtures/optimum-tiny-text*``) and the benchmark's full-size folder.

Why two virtual environments: optimum-onnx 0.1.0 pins transformers < 4.58, this project needs >= 5.
The checkpoint is built here (this project's environment, ``random_checkpoints.build_checkpoint``,
deterministic per seed) and exported by optimum in its own environment, given with
``--optimum-python`` (made once with ``python -m venv /tmp/optimum-venv && /tmp/optimum-venv/bin/pip
install torch==2.13.0 optimum-onnx==0.1.0 onnxruntime``). The sha256 of the checkpoint's
``model.safetensors`` is recorded in ``source.json`` so a test can prove that the checkpoint it
rebuilds is the one the folder was exported from.

Two layouts, one per fixture, so both are tested: ``onnx`` (transformers.js: graphs in ``onnx/``,
the decoder merged with optimum's ``merge_decoders``, as ``Xenova/musicgen-small`` ships it) and
``top`` (what ``optimum-cli export onnx --task text-to-audio`` writes: graphs at the top, the decoder
split into ``decoder_model`` and ``decoder_with_past_model``; optimum-onnx 0.1.0 does not merge
MusicGen's decoders itself). Only the files the runtime reads are kept.

optimum-onnx 0.1.0 cannot export stereo MusicGen as released: it sizes ``encodec_decode``'s dummy codes
with the decoder's 8 codebooks where EnCodec decodes 4 per side. The export below patches that one
number (the graph is otherwise optimum's own).

    python -m benchmarks.build_optimum_fixture --optimum-python /tmp/optimum-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
# fixture name -> (architecture, layout)
FIXTURE_SPECS = {"optimum-tiny-text": ("tiny-text", "top"), "optimum-tiny-text-stereo": ("tiny-text-stereo", "onnx")}
SEED = 0

_EXPORT = r"""
import json, sys
from pathlib import Path
ckpt, out, merge = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
from optimum.utils import input_generators
_init = input_generators.DummyEncodecInputGenerator.__init__
def _per_side(self, task, normalized_config, *args, **kwargs):
    # optimum-onnx 0.1.0 sizes encodec_decode's dummy codes with the decoder's codebooks (8 for stereo),
    # but EnCodec decodes one side (4) at a time: stereo export fails with "index 4 is out of range"
    _init(self, task, normalized_config, *args, **kwargs)
    self.num_codebooks //= getattr(normalized_config.decoder, "audio_channels", 1) or 1
input_generators.DummyEncodecInputGenerator.__init__ = _per_side
from optimum.exporters.onnx import main_export
main_export(ckpt, out, task="text-to-audio")
if merge:
    from optimum.onnx import merge_decoders
    merge_decoders(decoder=out / "decoder_model.onnx", decoder_with_past=out / "decoder_with_past_model.onnx",
                   save_path=out / "decoder_model_merged.onnx", strict=False)
import optimum.version, transformers, torch
(out / "versions.json").write_text(json.dumps({"optimum": optimum.version.__version__,
    "transformers": transformers.__version__, "torch": torch.__version__}))
"""


def export_with_optimum(checkpoint: Path, out: Path, optimum_python: str, layout: str) -> dict:
    """Run optimum's exporter in its own environment; return the versions it used."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw = Path(tmp) / "raw"
        subprocess.run([optimum_python, "-c", _EXPORT, str(checkpoint), str(raw), "1" if layout == "onnx" else "0"],
                       check=True)
        out.mkdir(parents=True, exist_ok=True)
        graphs = ["text_encoder", "encodec_decode"]
        graphs += ["decoder_model_merged"] if layout == "onnx" else ["decoder_model", "decoder_with_past_model"]
        graph_dir = out / "onnx" if layout == "onnx" else out
        graph_dir.mkdir(exist_ok=True)
        for name in graphs:
            for f in raw.glob(f"{name}.onnx*"):  # the graph and any external data (name.onnx_data)
                shutil.copy2(f, graph_dir / f.name)
        for name in ("config.json", "generation_config.json"):
            shutil.copy2(raw / name, out / name)
        return json.loads((raw / "versions.json").read_text())


def build(arch: str, out: Path, optimum_python: str, layout: str, seed: int = SEED,
          checkpoint_dir: Path | None = None) -> Path:
    """``arch`` checkpoint (seed) -> optimum folder ``out``; the checkpoint is kept in ``checkpoint_dir``
    when given (the benchmark reuses it), else built in a temporary folder."""
    from musicgen_onnx.export.random_checkpoints import build_checkpoint
    from musicgen_onnx.runtime.manifest import sha256_file

    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint_dir or Path(tmp) / arch
        if not (ckpt / "model.safetensors").exists():
            build_checkpoint(arch, ckpt, seed=seed)
        versions = export_with_optimum(ckpt, out, optimum_python, layout)
        shutil.copy2(ckpt / "tokenizer.json", out / "tokenizer.json")
        shutil.copy2(ckpt / "tokenizer_config.json", out / "tokenizer_config.json")
        source = {"architecture": arch, "seed": seed, "layout": layout,
                  "model_safetensors_sha256": sha256_file(ckpt / "model.safetensors"),
                  "built_by": "benchmarks/build_optimum_fixture.py", **versions}
        (out / "source.json").write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimum-python", required=True, help="python of a venv with optimum-onnx 0.1.0")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    args = parser.parse_args(argv)
    for name, (arch, layout) in FIXTURE_SPECS.items():
        print(f"{name}: {arch}, layout {layout}", flush=True)
        build(arch, args.out / name, args.optimum_python, layout)


if __name__ == "__main__":
    main()
