"""The folder adapters' one interface, the one place that tells folder kinds apart, and the one
description ``info`` prints and ``/v1/model`` serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from musicgen_onnx.runtime.folder_kind import NATIVE, OPTIMUM, STEMS, folder_kind
from musicgen_onnx.runtime.generation import GenerationInputs, GenerationTask, ModelParts
from musicgen_onnx.runtime.layouts import describe, open_layout
from musicgen_onnx.runtime.musicgen import MusicGen
from musicgen_onnx.runtime.native_layout import NativeFolder
from musicgen_onnx.runtime.optimum_layout import OptimumFolder

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "models" / "tiny-melody"
STEMS_FOLDER = ROOT / "models" / "tiny-stems"
OPTIMUM_FOLDER = ROOT / "tests" / "fixtures" / "optimum-tiny-text"


def test_folder_kind(tmp_path):
    assert folder_kind(BUNDLED) == NATIVE
    assert folder_kind(STEMS_FOLDER) == STEMS
    assert folder_kind(OPTIMUM_FOLDER) == OPTIMUM
    assert folder_kind(tmp_path / "missing") == NATIVE  # whose reader names what is missing
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "musicgen_onnx.json").write_text("{}")
    assert folder_kind(tmp_path) == NATIVE  # the manifest wins over a stray config.json


def test_a_stems_folder_given_for_generation_is_named_as_one(cli, tmp_path):
    from musicgen_onnx.runtime.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match="is a stems-only folder .* holds no MusicGen"):
        MusicGen.from_pretrained(STEMS_FOLDER, providers="cpu")
    with pytest.raises(ModelFolderError, match="is a stems-only folder"):
        open_layout(STEMS_FOLDER)
    r = cli("generate", "x", "--model", "tiny-stems", "--duration", "0.2", "-o", tmp_path / "o.wav")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith("holds no MusicGen to generate with")


@pytest.mark.parametrize("folder, adapter", [(BUNDLED, NativeFolder), (OPTIMUM_FOLDER, OptimumFolder)])
def test_both_adapters_answer_the_same_questions(folder, adapter):
    layout = open_layout(folder)
    assert type(layout) is adapter
    facts = describe(layout)
    json.dumps(facts)  # JSON values only: /v1/model sends them as they are
    m = layout.manifest
    assert facts["sample_rate"] == m.sample_rate and facts["codebooks"] == m.num_codebooks
    assert facts["can_continue"] == ("audio_encoder" in m.graphs)
    assert set(facts["graphs"]) == set(m.graphs)
    assert (facts["variant"] is not None) == adapter.has_variants
    assert layout.tokenizer_path.is_file()


def test_v1_model_serves_the_description_info_prints(cli):
    """``info`` and ``/v1/model`` read one describe(): the numbers ``info`` prints are the served ones."""
    from starlette.testclient import TestClient

    from musicgen_onnx.serve import ServeSettings, create_app

    model = MusicGen.from_pretrained(BUNDLED, providers="cpu")
    with TestClient(create_app(model, ServeSettings())) as client:
        served = client.get("/v1/model").json()
    assert {k: v for k, v in served.items() if k not in ("providers", "limits")} == describe(model.adapter)
    printed = cli("info", str(BUNDLED)).stdout
    d = served["decoder"]
    assert f"{d['layers']} layers, {d['heads']} heads, hidden {d['hidden_size']}" in printed
    assert f"{served['sample_rate']} Hz, {served['channels']} channel(s)" in printed


def test_the_task_runs_on_parts_alone():
    """A generation task reads a ModelParts, never the model: swapping a part changes the run."""
    model = MusicGen.from_pretrained(BUNDLED, providers="cpu")
    made = []

    def new_stepper(rows, conditioning, steps):
        made.append(rows)
        return model.new_stepper(rows, conditioning, steps)

    parts = ModelParts(model.folder, model.manifest, model.pattern, model.conditioner, new_stepper,
                       model.separate_melodies, model.settings)
    inputs = GenerationInputs.check(parts, ["x"], None, None, model.options.updated(duration=0.2, seed=3))
    got = np.concatenate(list(GenerationTask(parts, inputs).codes()), axis=2)
    assert made == [2]  # the conditional row and its CFG null row
    _, want = model.generate(["x"], duration=0.2, seed=3, return_codes=True)
    np.testing.assert_array_equal(got, want)
