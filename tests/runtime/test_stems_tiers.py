"""The two stems tiers without torch: which graph the melody path, the ``stems`` command and ``/v1/stems``
take, and the manifest rules for the optional fast graph. Its making and its chroma agreement are in
tests/export/test_stems_fast.py (quantisation needs the export extra).

The folders here hold the bundled tiny stems graph twice, once declared as the int8 ``stems_fast``: the
choice of graph is what is tested, so which graph ran is read from the sessions that were opened."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.errors import InvalidInputError, ModelFolderError
from musicgen_onnx.runtime.layouts import describe
from musicgen_onnx.runtime.manifest import (
    MANIFEST_NAME, STEMS_MANIFEST_NAME, load_manifest, load_stems_manifest,
)
from musicgen_onnx.runtime.native_layout import melody_stems_graph
from musicgen_onnx.runtime.stems import StemSeparator

from helpers import BUNDLED, fast_stems_entry, melody_folder_with_stems_tiers
from helpers import BUNDLED_STEMS as STEMS


@pytest.fixture(scope="module")
def stems_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stems") / "s"
    shutil.copytree(STEMS, folder)
    data = json.loads((folder / STEMS_MANIFEST_NAME).read_text())
    data["graphs"]["stems_fast"] = fast_stems_entry(folder, data["graphs"]["stems"])
    (folder / STEMS_MANIFEST_NAME).write_text(json.dumps(data))
    return folder


@pytest.fixture(scope="module")
def melody_folder(tmp_path_factory):
    return melody_folder_with_stems_tiers(tmp_path_factory.mktemp("melody") / "m")


def melody(seconds: float = 0.6) -> np.ndarray:
    t = np.arange(int(seconds * 32000)) / 32000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _generate(model):
    model.generate(["x"], melody=melody(), melody_sample_rate=32000, duration=0.1, seed=1)
    return {name for name in ("stems", "stems_fast") if model.graphs.is_open(name)}


# ---------------------------------------------------------------- which graph
def test_the_melody_path_takes_the_fast_graph_by_default(melody_folder):
    model = MusicGen.from_pretrained(melody_folder, providers="cpu")
    assert _generate(model) == {"stems_fast"}
    assert describe(model.adapter)["melody_stems"] == "stems_fast"


def test_exact_stems_makes_the_melody_path_take_the_exact_graph(melody_folder):
    model = MusicGen.from_pretrained(melody_folder, providers="cpu", exact_stems=True)
    assert _generate(model) == {"stems"}
    assert describe(model.adapter, exact_stems=True)["melody_stems"] == "stems"


def test_the_stems_of_a_model_are_always_the_exact_graph(melody_folder):
    """What the ``stems`` command and ``/v1/stems`` (``model.stems``) separate with."""
    model = MusicGen.from_pretrained(melody_folder, providers="cpu")
    assert model.stems.graph is model.graphs["stems"]
    assert model.melody_stems.graph is model.graphs["stems_fast"]
    assert StemSeparator.from_folder(melody_folder).graph.where.endswith("graph stems")


def test_the_fast_graph_is_for_cpu_and_folders_that_have_it(melody_folder):
    m = load_manifest(melody_folder)
    assert melody_stems_graph(m, "cpu") == "stems_fast"
    assert melody_stems_graph(m, "cuda") == "stems"  # int8 CPU kernels: the exact graph is the fast one there
    assert melody_stems_graph(m, "cpu", exact=True) == "stems"
    assert melody_stems_graph(load_manifest(BUNDLED), "cpu") is None


def test_exact_stems_must_be_a_bool(melody_folder):
    with pytest.raises(InvalidInputError, match="exact_stems must be True or False"):
        MusicGen.from_pretrained(melody_folder, providers="cpu", exact_stems="yes")


def test_info_says_which_tier_the_melody_path_uses(melody_folder, cli):
    out = cli("info", melody_folder)
    assert out.returncode == 0 and "fast tier (stems_fast, int8" in out.stdout, out.stdout + out.stderr


# ---------------------------------------------------------------- folders
def test_folders_without_the_fast_graph_load_as_before():
    s = load_stems_manifest(STEMS)
    assert set(s.graphs) == {"stems"}
    with pytest.raises(ModelFolderError, match="has no stems_fast graph"):
        StemSeparator.from_folder(STEMS, graph="stems_fast")


def test_a_stems_folder_may_carry_the_fast_graph(stems_folder):
    fast = StemSeparator.from_folder(stems_folder, graph="stems_fast")
    exact = StemSeparator.from_folder(stems_folder)
    mix = np.random.default_rng(0).standard_normal((1, 2, 20000)).astype(np.float32) * 0.1
    np.testing.assert_allclose(fast.separate(mix, 7), exact.separate(mix, 7), atol=1e-6)  # the same graph here


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["graphs"]["stems_fast"].update(precision="fp32"), "graph stems_fast: precision must be 'int8'"),
    (lambda d: d["graphs"].pop("stems"), "graph 'stems' (and optionally 'stems_fast')"),
    (lambda d: d["graphs"]["stems_fast"]["roles"].pop("spectrogram"), "graph stems_fast: role 'spectrogram'"),
    (lambda d: d["graphs"]["stems_fast"].update(file="../stems.onnx"), "plain name"),
    (lambda d: d["graphs"].update(stems_slow=d["graphs"]["stems"]), "graph 'stems_slow' is unknown"),
])
def test_a_stems_folders_fast_graph_is_read_as_untrusted(stems_folder, tmp_path, edit, message):
    _refused(load_stems_manifest, _edited(stems_folder, STEMS_MANIFEST_NAME, tmp_path, edit), message)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["graphs"]["stems_fast"].update(precision="int4"), "graph stems_fast: precision must be 'int8'"),
    (lambda d: (d["graphs"].pop("stems"), d.pop("stems")), "graph 'stems_fast' needs graph 'stems'"),
])
def test_a_melody_folders_fast_graph_is_read_as_untrusted(melody_folder, tmp_path, edit, message):
    _refused(load_manifest, _edited(melody_folder, MANIFEST_NAME, tmp_path, edit), message)


def _edited(source, manifest_name: str, tmp_path, edit):
    folder = tmp_path / "copy"
    shutil.copytree(source, folder)
    data = json.loads((folder / manifest_name).read_text())
    edit(data)
    (folder / manifest_name).write_text(json.dumps(data))
    return folder


def _refused(load, folder, message: str) -> None:
    with pytest.raises(ModelFolderError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load(folder)
    assert "\n" not in str(info.value)


def test_a_fast_graph_file_that_was_replaced_is_refused(melody_folder, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(melody_folder, folder)
    with open(folder / "stems_fast.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelFolderError, match="graph stems_fast files"):
        MusicGen.from_pretrained(folder, providers="cpu")
