"""The codec's look-ahead: measured per graph (runtime/lookahead.py), recorded in the manifest, used by
StreamDecoder; folders that do not record it keep the 8 frames every earlier release held back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.lookahead import folder_lookahead, measure_lookahead
from musicgen_onnx.runtime.manifest import DEFAULT_CODEC_LOOKAHEAD, MANIFEST_NAME, Manifest, load_manifest

from helpers import BUNDLED, FIXTURES

HOP = 3


def window_decoder(reach: int):
    """A codec whose frame ``j`` mixes the codes of frames ``j .. j + reach`` (those that exist, as a cut
    decode sees them): its look-ahead is ``reach`` by construction."""
    def decode(codes):
        x = np.sin(codes.astype(np.float64) * 0.37).sum(axis=1)  # [B, T]
        t = x.shape[1]
        y = np.stack([x[:, j:j + reach + 1].sum(axis=1) * (1 + 0.1 * (j % 3)) for j in range(t)], axis=1)
        return np.repeat(y, HOP, axis=1)[:, None].astype(np.float32)
    return decode


@pytest.mark.parametrize("reach", [0, 1, 4, 9])
def test_the_measurement_finds_a_known_reach(reach):
    assert measure_lookahead(window_decoder(reach), 4, 2048, cap=12) == reach


def test_a_reach_past_the_cap_is_not_found():
    assert measure_lookahead(window_decoder(9), 4, 2048, cap=8) is None
    assert measure_lookahead(window_decoder(8), 4, 2048, cap=8) == 8


def test_the_bundled_model_carries_its_measured_lookahead():
    m = load_manifest(BUNDLED)
    assert m.codec_lookahead == folder_lookahead(BUNDLED, m) == 4
    assert m.stream_lookahead == 4 < DEFAULT_CODEC_LOOKAHEAD


def test_the_stream_holds_back_the_folders_lookahead(model):
    from musicgen_onnx.runtime.codec import StreamDecoder

    assert model.codec.lookahead == StreamDecoder(model.codec).lookahead == model.manifest.codec_lookahead


def test_folders_without_it_keep_eight():
    data = json.loads((BUNDLED / MANIFEST_NAME).read_text())
    del data["codec_lookahead"]
    m = Manifest.from_dict(data)
    assert m.codec_lookahead is None and m.stream_lookahead == DEFAULT_CODEC_LOOKAHEAD == 8
    assert "codec_lookahead" not in m.to_dict()  # written as before: older releases still read it
    optimum = MusicGen.from_pretrained(FIXTURES / "optimum-tiny-text", providers="cpu")
    assert optimum.manifest.codec_lookahead is None and optimum.codec.lookahead == 8
