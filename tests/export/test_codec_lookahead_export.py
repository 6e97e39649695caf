"""Export records the audio decoder's look-ahead (``codec_lookahead``); a stream decoded with it equals
the one-shot decode and one decoded with one frame less does not. A codec whose look-ahead is unbounded
cannot be streamed and is an export error naming the graph."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from musicgen_onnx.export.folder_manifest import with_codec_lookahead
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.codec import StreamDecoder
from musicgen_onnx.runtime.errors import ExportError
from musicgen_onnx.runtime.manifest import MAX_CODEC_LOOKAHEAD, load_manifest

from helpers import BUNDLED

pytestmark = pytest.mark.export


def streamed(codec, codes: np.ndarray, lookahead: int) -> np.ndarray:
    """``codes`` pushed one frame at a time, each span emitted as soon as ``lookahead`` allows."""
    stream = StreamDecoder(codec, lookahead=lookahead)
    chunks = []
    for t in range(codes.shape[2]):
        stream.push(codes[:, :, t:t + 1])
        chunks.append(stream.ready())
    chunks.append(stream.flush())
    return np.concatenate(chunks, axis=2)


@pytest.mark.parametrize("arch", ["tiny-melody", "tiny-text-stereo"])
def test_export_records_the_lookahead_a_stream_needs(arch, exported):
    folder = exported(arch)
    m = load_manifest(folder)
    lookahead = m.codec_lookahead
    assert isinstance(lookahead, int) and 1 <= lookahead < 8
    codec = MusicGen.from_pretrained(folder, providers="cpu").codec
    rng = np.random.default_rng(7)
    codes = rng.integers(0, m.codebook_size, (2, m.num_codebooks, 90))  # past the 50 frames of left context
    one_shot = codec.decode(codes)
    peak = float(np.max(np.abs(one_shot)))
    assert np.max(np.abs(streamed(codec, codes, lookahead) - one_shot)) < 1e-4 * peak
    assert np.max(np.abs(streamed(codec, codes, lookahead - 1) - one_shot)) > 1e-2 * peak


def everything_ahead_graph(path, num_codebooks: int) -> None:
    """codes [B, K, T] -> audio [B, 1, T]: every sample is the sum of all codes, so no look-ahead suffices."""
    nodes = [helper.make_node("Cast", ["audio_codes"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["x", "k"], ["per_frame"], keepdims=1),
             helper.make_node("ReduceSum", ["per_frame", "t"], ["total"], keepdims=1),
             helper.make_node("Mul", ["per_frame", "zero"], ["zeros"]),
             helper.make_node("Add", ["zeros", "total"], ["audio_values"])]
    graph = helper.make_graph(
        nodes, "everything_ahead",
        [helper.make_tensor_value_info("audio_codes", TensorProto.INT64, ["batch", num_codebooks, "frames"])],
        [helper.make_tensor_value_info("audio_values", TensorProto.FLOAT, ["batch", 1, "frames"])],
        [helper.make_tensor("k", TensorProto.INT64, [1], [1]), helper.make_tensor("t", TensorProto.INT64, [1], [2]),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_codec_that_looks_ahead_without_bound_is_an_export_error(tmp_path):
    folder = shutil.copytree(BUNDLED, tmp_path / "m")
    m = load_manifest(folder)
    everything_ahead_graph(folder / "audio_decoder.onnx", m.num_codebooks)
    with pytest.raises(ExportError, match=f"^graph audio_decoder: its look-ahead is not within "
                                          f"{MAX_CODEC_LOOKAHEAD} frames[^\n]*$"):
        with_codec_lookahead(folder, m)
