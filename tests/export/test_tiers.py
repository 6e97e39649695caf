"""Precision tiers and the commands built on them: quantised quality bounds, verify, bench.

The bounds here are for the tiny fixture (hidden 32: one quantisation block per row, so int4 is at
its worst); the README's table gives what the full-size small architecture measures.
"""

from __future__ import annotations


import numpy as np
import pytest

from musicgen_onnx.export.verify import logit_agreement

from helpers import BUNDLED
from musicgen_onnx.runtime import MusicGen

PROMPTS = ["A happy rock track with guitar", "sad jazz with piano"]
TINY_BOUNDS = {"int8": {"top1": 0.95, "kl": 5e-3}, "int4": {"top1": 0.7, "kl": 5e-2}}


@pytest.fixture(scope="module")
def quantized(exported):
    folders = {p: exported("tiny-text", precision=p) for p in ("int8", "int4")}
    folders["int8-kv16"] = exported("tiny-text", precision="int8", kv_dtype="fp16")
    return folders


def test_teacher_forcing_reproduces_greedy_choices(exported):
    model = MusicGen.from_pretrained(exported("tiny-text"), providers="cpu")
    _, codes = model.generate(PROMPTS, duration=0.4, greedy=True, return_codes=True)
    logits = model.teacher_forced_logits(PROMPTS, codes)
    assert logits.shape == (2, codes.shape[2] + 3, 4, 2048)
    # each frame's token is the argmax at the step that produced it (step = frame + delay)
    for k in range(4):
        np.testing.assert_array_equal(logits[:, k:k + codes.shape[2], k].argmax(-1), codes[:, k])


@pytest.mark.parametrize("variant", ["int8", "int4", "int8-kv16"])
def test_quantized_tiers_stay_close_to_fp32(variant, quantized, exported):
    precision = variant.split("-")[0]
    fp32 = MusicGen.from_pretrained(exported("tiny-text"), providers="cpu")
    q = MusicGen.from_pretrained(quantized[variant], providers="cpu")
    assert q.manifest.graphs["decoder"].precision == precision
    kv_inputs = [i.type for i in q.graphs["decoder"].get_inputs() if i.name.startswith("past.")]
    assert set(kv_inputs) == {"tensor(float16)" if variant.endswith("kv16") else "tensor(float)"}
    assert q.manifest.graphs["text_encoder"].precision == "fp32"
    _, codes = fp32.generate(PROMPTS, duration=1.0, greedy=True, return_codes=True)
    agreement = logit_agreement(fp32.teacher_forced_logits(PROMPTS, codes), q.teacher_forced_logits(PROMPTS, codes))
    bounds = TINY_BOUNDS[precision]
    assert agreement["top1"] >= bounds["top1"], agreement
    assert agreement["kl"] <= bounds["kl"], agreement
    assert agreement["max_abs"] > 0  # it really is another graph
    folder_bytes = sum(f.stat().st_size for f in quantized[variant].glob("decoder.onnx*"))
    fp32_bytes = sum(f.stat().st_size for f in exported("tiny-text").glob("decoder.onnx*"))
    assert folder_bytes < fp32_bytes


def test_logit_agreement_metrics():
    a = np.array([[0.0, 1.0, 2.0]])
    assert logit_agreement(a, a) == {"max_abs": 0.0, "kl": 0.0, "top1": 1.0}
    b = np.array([[2.0, 1.0, 0.0]])
    m = logit_agreement(a, b)
    assert m["top1"] == 0.0 and m["max_abs"] == 2.0 and m["kl"] > 0.5


def test_verify_passes_fp32_and_fails_a_broken_folder(exported, checkpoint_dir, tmp_path, cli):
    r = cli("verify", str(exported("tiny-melody")), str(checkpoint_dir("tiny-melody")), "--frames", "10")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "greedy tokens identical" in r.stdout and "FAIL" not in r.stdout
    assert r.stderr == "", r.stderr  # the table alone: no transformers warnings, no loading bar
    # the same folder checked against another checkpoint of the same architecture must fail
    from musicgen_onnx.export.random_checkpoints import build_checkpoint

    other = build_checkpoint("tiny-melody", tmp_path / "other", seed=1)
    r = cli("verify", str(exported("tiny-melody")), str(other), "--frames", "10")
    assert r.returncode == 1 and "FAIL" in r.stdout


def test_bench_reports_its_numbers(cli):
    r = cli("bench", BUNDLED, "--seconds", "0.5")
    assert r.returncode == 0, r.stderr
    for word in ("load", "steps/s", "real-time factor", "peak RSS"):
        assert word in r.stdout


def test_verify_names_both_sides_when_folder_and_checkpoint_differ(exported, checkpoint_dir, cli):
    r = cli("verify", exported("tiny-melody"), checkpoint_dir("tiny-text"), "--frames", "4")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "family melody in the folder, text-only in the checkpoint" in line[0], r.stderr
    r = cli("verify", exported("tiny-melody"), checkpoint_dir("tiny-melody-stereo"), "--frames", "4")
    assert r.returncode == 2 and "codebooks 4 in the folder, 8 in the checkpoint" in r.stderr, r.stderr
