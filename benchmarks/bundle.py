"""Rebuild the bundled tiny model ``models/tiny-melody``: random-weight checkpoint -> export.

    python -m benchmarks.bundle            # rewrites models/tiny-melody
    python -m benchmarks.bundle OUT_DIR    # somewhere else (the drift test does this)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from benchmarks.checkpoints import build_checkpoint

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "models" / "tiny-melody"
ARCH = "tiny-melody"
SEED = 0


def build(out_dir: Path = BUNDLED, progress=print) -> Path:
    from musicgen_onnx.export.exporter import export

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(ARCH, Path(tmp) / ARCH, seed=SEED)
        return export(str(ckpt), out_dir, force=True, progress=progress,
                      source_label=f"random-weight {ARCH} (benchmarks/checkpoints.py, seed {SEED})")


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else BUNDLED))
