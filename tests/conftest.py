"""Shared fixtures: tiny random-weight checkpoints of each family, exported once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):  # `benchmarks` (checkpoint builder) and the tests' shared helpers
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

FAMILIES = ["tiny-melody", "tiny-melody-stereo", "tiny-text", "tiny-text-stereo"]
BUNDLED = ROOT / "models" / "tiny-melody"


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    """``checkpoint_dir(arch)`` -> a transformers checkpoint folder, built on first use."""
    from benchmarks.checkpoints import build_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    built = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_checkpoint(arch, root / arch, seed=0)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def exported(checkpoint_dir, tmp_path_factory):
    """``exported(arch, kv_cache)`` -> an exported (and validated) model folder, built on first use."""
    from musicgen_onnx.export.exporter import export

    root = tmp_path_factory.mktemp("onnx")
    done = {}

    def get(arch: str, kv_cache: str = "static") -> Path:
        key = (arch, kv_cache)
        if key not in done:
            done[key] = export(str(checkpoint_dir(arch)), root / f"{arch}-{kv_cache}", kv_cache=kv_cache)
        return done[key]

    return get


@pytest.fixture(scope="session")
def reference_model(checkpoint_dir):
    """``reference_model(arch)`` -> (transformers model, tokenizer), cached."""
    from musicgen_onnx.export import reference

    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = reference.load(checkpoint_dir(arch))
        return cache[arch]

    return get
