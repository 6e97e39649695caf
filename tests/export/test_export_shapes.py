"""Architectures audiocraft trains that the released models do not have (issue 25): fewer codes per
codebook than audiocraft's default top_k 250, and a head size GroupQueryAttention cannot run (12)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.errors import ExportError
from musicgen_onnx.runtime.manifest import MANIFEST_NAME

pytestmark = pytest.mark.export


def test_a_model_with_fewer_codes_than_top_k_250_exports_and_loads(checkpoint_dir, tmp_path):
    from musicgen_onnx.export.exporter import export

    out = export(str(checkpoint_dir("tiny-text-stereo-64")), tmp_path / "m", validate_graphs=False)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["codebook_size"] == 64 and manifest["defaults"]["top_k"] == 64
    model = MusicGen.from_pretrained(out, providers="cpu")
    for kw in ({"greedy": True}, {}):  # audiocraft's defaults (sampling) and greedy
        audio = model.generate(["a stereo test"], duration=0.2, **kw)
        assert audio.shape[:2] == (1, 2) and np.isfinite(audio).all()
    # a folder exported before the clamp (top_k 250 written) still loads, with top-k over all its codes
    manifest["defaults"]["top_k"] = 250
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    old = MusicGen.from_pretrained(out, providers="cpu")
    assert old.manifest.defaults.top_k == 64
    assert old.generate(["a stereo test"], duration=0.2, greedy=True).shape[:2] == (1, 2)


def test_head_size_12_gets_the_concat_cache_or_a_one_line_refusal(checkpoint_dir, tmp_path, caplog, cli):
    from musicgen_onnx.export.exporter import export

    ckpt = str(checkpoint_dir("tiny-melody-hd12"))
    with pytest.raises(ExportError, match=r"head size that is a multiple of 8 .* 12: use --kv-cache concat") as err:
        export(ckpt, tmp_path / "static", kv_cache="static")
    assert "\n" not in str(err.value) and not (tmp_path / "static").exists()
    r = cli("export", ckpt, tmp_path / "static-cli", "--kv-cache", "static")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--kv-cache concat" in r.stderr, r.stderr
    with caplog.at_level(logging.WARNING, logger="musicgen_onnx.export.exporter"):
        out = export(ckpt, tmp_path / "auto")  # validated: the static cache failed here with a traceback
    assert "exporting the concat KV cache" in caplog.text
    assert json.loads((out / MANIFEST_NAME).read_text())["kv_cache"] == "concat"
    info = cli("info", out)
    assert info.returncode == 0 and "concat KV cache" in info.stdout, info.stderr
    audio = MusicGen.from_pretrained(out, providers="cpu").generate(["a melody test"], duration=0.2, greedy=True)
    assert audio.shape[:2] == (1, 1) and np.isfinite(audio).all()
