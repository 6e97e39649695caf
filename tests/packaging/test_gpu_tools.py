"""The tools the GPU run depends on, proven here: the wheel carried in parts (benchmarks/wheel_parts.py)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from musicgen_onnx.benchmarks import wheel_parts


def _wheel(folder, payload: bytes):
    """A minimal pure-Python wheel, ``tinypkg`` 1.0, carrying ``payload`` as package data."""
    files = {"tinypkg/__init__.py": b"VALUE = 42\n", "tinypkg/blob.bin": payload,
             "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
             "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items()) + "tinypkg-1.0.dist-info/RECORD,,\n"
    path = folder / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("tinypkg-1.0.dist-info/RECORD", record)
    return path


def test_split_join_install(tmp_path):
    payload = np.random.default_rng(0).integers(0, 256, 5 << 19, dtype=np.uint8).tobytes()  # 2.5 MiB
    wheel = _wheel(tmp_path, payload)
    index = wheel_parts.split(wheel, tmp_path / "parts", max_mib=1)
    parts = sorted((tmp_path / "parts").glob("*.part[0-9]*"))
    assert len(parts) == 3 and all(p.stat().st_size <= 1 << 20 for p in parts)
    joined = wheel_parts.join(index, tmp_path / "joined")
    assert joined.read_bytes() == wheel.read_bytes()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target",
                    str(target), str(joined)], check=True)
    assert (target / "tinypkg" / "blob.bin").read_bytes() == payload
    out = subprocess.run([sys.executable, "-c", "import tinypkg; print(tinypkg.VALUE)"], capture_output=True,
                         text=True, env={"PYTHONPATH": str(target)}, check=True)
    assert out.stdout.strip() == "42"


def test_a_damaged_part_is_refused_and_nothing_is_written(tmp_path):
    wheel = _wheel(tmp_path, bytes(range(256)) * 8192)
    index = wheel_parts.split(wheel, tmp_path / "parts", max_mib=1)
    part = next((tmp_path / "parts").glob("*.part01"))
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(ValueError, match="part01: size or sha256 differs"):
        wheel_parts.join(index, tmp_path / "joined")
    assert list((tmp_path / "joined").iterdir()) == []
    assert wheel_parts.main(["join", str(index), str(tmp_path / "joined")]) == 2


@pytest.mark.export
def test_gpu_check_dry_run_reports_every_step(tmp_path):
    """The GPU script, end to end on the CPU EP with the tiny folders (exported here when missing)."""
    import json

    from musicgen_onnx.benchmarks import gpu_check

    gpu_check.main(["--dry-run", "--folders", str(tmp_path / "folders"), "--out", str(tmp_path / "out")])
    steps = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["steps"]
    assert not [s for s in steps if "error" in s], steps
    by = {}
    for s in steps:
        by.setdefault(s["step"], []).append(s)
    assert by["capture_gate_new"][0]["bit_equal"] and by["capture_gate_new"][0]["fixed_addresses"]
    assert all(s["identical"] for s in by["fp32_concat_parity"])
    assert by["sampler_parity"][0]["agreement"] == 1.0
    assert {s["mode"] for s in by["speed"]} == set(gpu_check.MODES)
    assert all(s["agreement_with_plain"] == 1.0 for s in by["speed"])
    assert by["transformers"] and steps[-1] == {"step": "done"}


@pytest.mark.export  # onnx
def test_random_weights_fill_a_weightless_graph(tmp_path):
    import onnx
    import onnxruntime as ort

    from helpers import BUNDLED
    from musicgen_onnx.benchmarks.gpu_check import fill_random_weights

    model = onnx.load(str(BUNDLED / "audio_decoder.onnx"))
    onnx.save(model, str(tmp_path / "audio_decoder.onnx"), save_as_external_data=True, location="w.data",
              size_threshold=0)
    size = (tmp_path / "w.data").stat().st_size
    (tmp_path / "w.data").unlink()  # what a weightless export carries: the graph alone
    assert fill_random_weights(tmp_path) > 0.9 * size
    out = ort.InferenceSession(str(tmp_path / "audio_decoder.onnx")).run(
        None, {"audio_codes": np.arange(24, dtype=np.int64).reshape(1, 4, 6) % 2048})[0]
    assert np.isfinite(out).all() and out.std() > 0
