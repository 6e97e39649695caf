"""The fast stems tier's graph (export/stems_fast.py) on a tiny random HTDemucs: made at export, loadable,
int8 where it should be, and giving the melody path the exact graph's chroma. Which graph the runtime
picks is in tests/runtime/test_stems_tiers.py; the full-size speed is a benchmark (README)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musicgen_onnx.export import random_demucs
from musicgen_onnx.export import stems as export_stems
from musicgen_onnx.export import stems_fast
from musicgen_onnx.runtime.errors import ExportError
from musicgen_onnx.runtime.manifest import STEMS_MANIFEST_NAME, load_stems_manifest
from musicgen_onnx.runtime.stems import StemSeparator


@pytest.fixture(scope="module")
def demucs_folder(tmp_path_factory):
    return random_demucs.save_hub_folder(random_demucs.random_htdemucs("tiny", seed=3),
                                        tmp_path_factory.mktemp("demucs") / "tiny-htdemucs")


@pytest.fixture(scope="module")
def folder(demucs_folder, tmp_path_factory):
    return export_stems.export_stems_folder(str(demucs_folder), tmp_path_factory.mktemp("onnx") / "stems")


@pytest.fixture(scope="module")
def tiers(folder):
    return StemSeparator.from_folder(folder), StemSeparator.from_folder(folder, graph="stems_fast")


def test_export_stems_writes_the_fast_graph_by_default(folder):
    m = load_stems_manifest(folder)
    assert set(m.graphs) == {"stems", "stems_fast"}
    fast = m.graphs["stems_fast"]
    assert fast.precision == "int8" and fast.file == "stems_fast.onnx"
    assert set(fast.files) <= {"stems_fast.onnx", "stems_fast.onnx.data"}
    assert m.source["stems_fast"] == stems_fast.describe()  # the recipe and its calibration, recorded
    assert sorted(p.name for p in folder.iterdir()) == sorted([STEMS_MANIFEST_NAME, *m.graphs["stems"].files,
                                                               *fast.files])  # no temporary file left


def test_the_fast_graph_runs_int8_convolutions_and_matmuls(folder):
    """int8 everywhere but the outermost U-Net layers (whose convs stay fp32) and the attention."""
    import onnx

    nodes = onnx.load(str(folder / "stems_fast.onnx"), load_external_data=False).graph.node
    ops = [n.op_type for n in nodes]
    fp32_convs = {n.name for n in nodes if n.op_type == "Conv"}
    assert fp32_convs == set(stems_fast.outer_layer_convs(folder / "stems.onnx"))
    assert any(name.startswith("/encoder.0/") for name in fp32_convs) and ops.count("QLinearConv") > 10
    assert "MatMul" not in ops and "MatMulInteger" in ops
    assert "MultiHeadAttention" in ops


def test_fast_melody_stems_are_close_to_the_exact_ones(tiers):
    """Several percent of the peak apart (int8), and the same chroma on held melodies of every kind."""
    exact, fast = tiers
    wavs = stems_fast.held_melodies(exact.params, seed=77)
    for wav in wavs:
        a, b = (s.melody(wav[None], 32000, 123)[0] for s in tiers)
        assert np.abs(a - b).max() <= 0.1 * np.abs(a).max()
        assert np.abs(a - b).max() > 1e-6  # it is not the exact graph
    assert stems_fast.chroma_agreement(exact, fast, wavs, shift=123) >= stems_fast.MIN_CHROMA_AGREEMENT


def test_calibration_is_deterministic_and_varied(tiers):
    p = tiers[0].params
    a, b = stems_fast.calibration_mixes(p), stems_fast.calibration_mixes(p)
    assert len(a) == stems_fast.CALIBRATION_SEGMENTS and all(x.shape == (1, p.audio_channels, p.segment_length) for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(stems_fast.calibration_mixes(p, seed=1)[0], a[0])
    assert len({round(float(np.abs(x).max()), 4) for x in a}) == len(a)  # levels vary too


def test_a_fast_graph_whose_chroma_disagrees_is_refused(folder):
    m = load_stems_manifest(folder)
    with pytest.raises(ExportError, match=r"agrees with the exact graph's on .*% of frames .*--no-stems-fast") as info:
        stems_fast.validate_fast(folder, m.graphs["stems"], m.graphs["stems_fast"], m.stems, minimum=1.01)
    assert "\n" not in str(info.value)


def test_an_export_whose_fast_graph_disagrees_goes_on_without_it(folder, tmp_path):
    """The fast graph is an accelerator: the export keeps the exact graph and leaves no fast files behind."""
    import shutil

    m = load_stems_manifest(folder)
    work = tmp_path / "w"
    work.mkdir()
    for name in m.graphs["stems"].files:
        shutil.copy(folder / name, work / name)
    assert stems_fast.export_stems_fast(work, m.graphs["stems"], m.stems, minimum=1.01) is None
    assert sorted(p.name for p in work.iterdir()) == sorted(m.graphs["stems"].files)


def test_no_stems_fast_exports_the_exact_graph_only(demucs_folder, tmp_path):
    out = export_stems.export_stems_folder(str(demucs_folder), tmp_path / "s", validate_graphs=False, stems_fast=False)
    data = json.loads((out / STEMS_MANIFEST_NAME).read_text())
    assert set(data["graphs"]) == {"stems"} and "stems_fast" not in data["source"]
    assert not list(out.glob("stems_fast*"))


def test_the_cli_option_reaches_the_exporter(demucs_folder, tmp_path, cli):
    out = cli("export-stems", demucs_folder, tmp_path / "s", "--no-validate", "--no-stems-fast")
    assert out.returncode == 0, out.stderr
    assert set(load_stems_manifest(tmp_path / "s").graphs) == {"stems"}


def test_stems_fast_must_be_a_bool():
    from musicgen_onnx.export.options import ExportOptions

    with pytest.raises(ExportError, match="stems_fast must be True or False"):
        ExportOptions(stems_fast="no")
