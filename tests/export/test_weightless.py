"""A folder carried to the GPU machine without its weights (benchmarks/weightless.py), proven on the
bundled tiny model: strip -> fill -> load with hash checks -> generate, the logits finite."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import BUNDLED
from musicgen_onnx.benchmarks import weightless
from musicgen_onnx.runtime.errors import ModelFolderError
from musicgen_onnx.runtime.layouts import open_layout
from musicgen_onnx.runtime.musicgen import MusicGen

pytestmark = pytest.mark.export


def test_strip_fill_load_generate(tmp_path):
    dest = tmp_path / "weightless"
    listing = weightless.strip(BUNDLED, dest)
    weights = sum(spec["size"] for spec in listing["files"].values())
    carried = weightless.folder_bytes(dest)
    assert carried < weights / 4 and not list(dest.glob("*.data"))  # the graphs travel, the weights do not
    with pytest.raises(ModelFolderError):  # before the fill: the data files are missing, refused clearly
        open_layout(dest, None, True)

    assert weightless.fill(dest) == weights
    open_layout(dest, None, True)  # the manifest's sizes and sha256 hold after the fill
    model = MusicGen.from_pretrained(dest)
    cond = model.conditioner(["a"], None, True)
    stepper = model.new_stepper(2, cond, 8)
    K, special = model.manifest.num_codebooks, model.manifest.special_token_id
    logits = [stepper.run(np.full((2, K, 1), special, dtype=np.int64), cond.prefix_length + 1)]
    for t in range(5):
        logits.append(stepper.run(np.full((2, K, 1), t, dtype=np.int64), 1))
    assert all(np.isfinite(x).all() for x in logits)
    audio, codes = model.generate(["a", "b"], duration=0.5, top_k=250, seed=0, return_codes=True)
    assert np.isfinite(audio).all() and codes.shape[:2] == (2, K)

    # the weights are new (random), every graph is the original one with its tensors moved out
    original = onnx.load(str(BUNDLED / "decoder.onnx"))
    filled = onnx.load(str(dest / "decoder.onnx"))
    assert [n.op_type for n in filled.graph.node] == [n.op_type for n in original.graph.node]
    big = {t.name: onnx.numpy_helper.to_array(t) for t in original.graph.initializer if len(t.raw_data) >= 1024}
    new = {t.name: onnx.numpy_helper.to_array(t) for t in filled.graph.initializer if t.name in big}
    assert new.keys() == big.keys() and all(new[n].shape == big[n].shape and new[n].dtype == big[n].dtype for n in big)
    assert not any(np.array_equal(new[n], big[n]) for n in big if big[n].dtype.kind == "f")


def test_non_float_tensors_keep_their_values(tmp_path):
    """Index tables and masks: random values could make a graph invalid, so their bytes travel."""
    src = tmp_path / "src"
    src.mkdir()
    for path in BUNDLED.iterdir():
        (src / path.name).write_bytes(path.read_bytes())
    model = onnx.load(str(src / "text_encoder.onnx"))
    table = np.arange(512, dtype=np.int64)
    model.graph.initializer.append(onnx.numpy_helper.from_array(table, "an_index_table"))
    onnx.save_model(model, str(src / "text_encoder.onnx"))
    manifest = json.loads((src / "musicgen_onnx.json").read_text())
    manifest["graphs"]["text_encoder"]["files"] = {"text_encoder.onnx": "0" * 64}
    (src / "musicgen_onnx.json").write_text(json.dumps(manifest))

    weightless.strip(src, tmp_path / "w")
    weightless.fill(tmp_path / "w")
    filled = onnx.load(str(tmp_path / "w" / "text_encoder.onnx"))
    got = next(t for t in filled.graph.initializer if t.name == "an_index_table")
    assert np.array_equal(onnx.numpy_helper.to_array(got), table)
