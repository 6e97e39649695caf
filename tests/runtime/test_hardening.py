"""Faults, crafted inputs and long runs: the software keeps working, loses nothing, says what went wrong."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicgen_onnx.runtime import InvalidInputError, ModelFolderError, MusicGen
from musicgen_onnx.runtime.audio import load_audio
from musicgen_onnx.runtime.manifest import MANIFEST_NAME, Manifest, load_manifest, sha256_file
from musicgen_onnx.runtime.melody import prepare_melodies

from helpers import BUNDLED, CLI


def _wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow  # kill -9
def test_kill_9_during_export_leaves_no_folder(checkpoint_dir, tmp_path, cli):
    out = tmp_path / "model"
    proc = subprocess.Popen([*CLI, "export", str(checkpoint_dir("tiny-melody")), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # wait until the exporter is writing graphs into its temporary sibling, then kill it (a loaded machine
    # running pytest -n auto: the fresh interpreter's torch import alone can pass a minute)
    assert _wait_for(lambda: any((p / "text_encoder.onnx").exists() for p in tmp_path.glob(".model.partial-*")),
                     timeout=600)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    r = cli("info", out)
    assert r.returncode == 2
    # the next export succeeds and clears what the killed one left
    r = cli("export", checkpoint_dir("tiny-melody"), out, "--no-validate")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.slow  # kill -9
@pytest.mark.parametrize("stream", [False, True])
def test_kill_9_during_generate_leaves_no_output(tmp_path, stream, cli):
    out = tmp_path / "song.wav"
    args = [*CLI, "generate", "a very long piece", "--duration", "1200", "-o", str(out), "--quiet"]
    proc = subprocess.Popen(args + (["--stream"] if stream else []), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if stream:  # killed while the partial file is growing
        assert _wait_for(lambda: any(p.stat().st_size > 100_000 for p in tmp_path.glob(".song.wav.*.partial")))
    else:
        time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    r = cli("generate", "short", "--duration", "0.5", "-o", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.wav"]


def _rewrite_manifest_hashes(folder: Path) -> None:
    data = json.loads((folder / MANIFEST_NAME).read_text())
    for graph in data["graphs"].values():
        graph["files"] = {name: sha256_file(folder / name) for name in graph["files"]}
        graph["size_bytes"] = sum((folder / name).stat().st_size for name in graph["files"])
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


@pytest.mark.export  # needs the onnx / transformers packages of the export extra
def test_external_data_outside_the_folder_is_refused(tmp_path):
    """Even with a manifest that agrees, a graph whose weights point outside the folder does not load."""
    import onnx

    folder = shutil.copytree(BUNDLED, tmp_path / "m")
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    model = onnx.load(str(folder / "text_encoder.onnx"))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "64")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    (folder / "text_encoder.onnx").write_bytes(model.SerializeToString())
    _rewrite_manifest_hashes(folder)
    with pytest.raises(ModelFolderError, match="text_encoder.onnx"):
        MusicGen.from_pretrained(folder)


def test_crafted_manifest_numbers_are_bounded_before_allocation(tmp_path):
    folder = shutil.copytree(BUNDLED, tmp_path / "m")
    data = json.loads((folder / MANIFEST_NAME).read_text())
    for field, value in [("num_heads", 1 << 30), ("hidden_size", -1), ("num_codebooks", 10**6),
                         ("delays", [0, 1, 2, 10**9]), ("max_duration", 1e12), ("sample_rate", "32000")]:
        bad = {**data, field: value}
        (folder / MANIFEST_NAME).write_text(json.dumps(bad))
        with pytest.raises(ModelFolderError):
            MusicGen.from_pretrained(folder)


# ---------------------------------------------------------------- property-based fuzzing
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(min_size=0, max_size=4096), st.sampled_from([".wav", ".flac", ".ogg", ".mp3", ".xyz"]))
def test_fuzz_audio_loader(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        wav, sr = load_audio(path)
    except InvalidInputError as exc:
        assert "\n" not in str(exc)
    else:
        assert wav.ndim == 2 and wav.shape[1] > 0 and np.isfinite(wav).all() and sr > 0


@FUZZ
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=3000),
       st.integers(min_value=-10, max_value=400000), st.integers(min_value=1, max_value=3))
def test_fuzz_melody_and_chroma_path(samples, rate, batch):
    params = load_manifest(BUNDLED).chroma
    wav = np.asarray(samples, dtype=np.float32)
    try:
        wavs = prepare_melodies(wav, rate, batch, params)
    except InvalidInputError as exc:
        assert "\n" not in str(exc)
        return
    from musicgen_onnx.runtime.chroma import batch_chroma

    onehot = batch_chroma(wavs, params)
    assert onehot.shape[0] == batch and onehot.shape[2] == 12
    assert (onehot.sum(-1) == 1).all()


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)


@FUZZ
@given(st.dictionaries(st.sampled_from(list(json.loads((BUNDLED / MANIFEST_NAME).read_text()))), _json, max_size=6))
def test_fuzz_manifest_reader(changes):
    data = {**json.loads((BUNDLED / MANIFEST_NAME).read_text()), **changes}
    try:
        Manifest.from_dict(data)
    except ModelFolderError as exc:
        assert "\n" not in str(exc)


# ---------------------------------------------------------------- soak
def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow  # soak
def test_soak_50_generations_and_a_batch_of_16(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    model = MusicGen.from_pretrained(BUNDLED, providers="cpu")
    for _ in range(5):  # warm-up: first-call allocations settle
        model.generate(["warm up"], duration=1.0, seed=0)
    fds = len(os.listdir("/proc/self/fd"))
    # onnxruntime 1.32 writes a `.ses` marker into the temp dir when first imported: taken after warm-up
    temp_files = sorted(tmp_path.iterdir())
    rss = [_rss_mb()]
    for i in range(50):
        model.generate([f"soak {i}"], duration=1.0, seed=i)
        rss.append(_rss_mb())
    batch = model.generate([f"batch prompt {i}" for i in range(16)], duration=1.0, seed=1)
    assert batch.shape == (16, 1, 32000)
    growth = max(rss[-10:]) - rss[0]
    print(f"soak: RSS after warm-up {rss[0]:.1f} MB, after 50 generations {rss[-1]:.1f} MB, "
          f"max {max(rss):.1f} MB, after batch 16 {_rss_mb():.1f} MB")
    assert growth < 10, rss
    assert len(os.listdir("/proc/self/fd")) == fds
    assert sorted(tmp_path.iterdir()) == temp_files
