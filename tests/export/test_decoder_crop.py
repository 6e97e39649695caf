"""benchmarks/decoder_crop.py's evidence on a tiny HTDemucs of the released structure (DConv in the
decoder, no layer norms, no frequency collapse): cropping the frequency decoder to a short segment's kept
frames is exact once the decoder's GroupNorms are gone, and not exact with them (the reason the crop is
not built: README, "What bounds the two tiers on this CPU")."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from musicgen_onnx.benchmarks import decoder_crop
from musicgen_onnx.export import random_demucs


@pytest.fixture(scope="module")
def model():
    from demucs.htdemucs import HTDemucs

    # nfft 512: the frequency branch stays frequency (256 -> 64 -> 16 bins, each above the kernel) at depth 3;
    # norm_starts 4: no layer GroupNorm, as in htdemucs; its DConvs (dconv_mode 3) keep theirs
    kwargs = {**random_demucs.TINY_KWARGS, "nfft": 512, "norm_starts": 4, "segment": Fraction(1, 4)}
    torch.manual_seed(0)
    return HTDemucs(**kwargs).eval()


def test_the_decoder_is_local_but_for_its_norms(model):
    assert decoder_crop.time_global(model)  # the DConvs' GroupNorm(1, C): channels x every frame
    cropped = decoder_crop.with_decoder_layer_scale(model, 1.0)  # residual branches at full weight
    got = decoder_crop.measure(cropped, 0.05, lead=0)
    assert got["frames"] < got["of_frames"]  # a short segment: fewer frames computed
    assert got["diff_over_output_peak"] > 1e-3
    control = decoder_crop.measure(decoder_crop.without_decoder_norms(cropped), 0.05, lead=0)
    assert control["frames"] == got["frames"] and control["diff_over_output_peak"] <= 1e-6


def test_the_margin_is_needed(model, monkeypatch):
    """With a margin of 2 frames (half the inverse STFT's window, nothing for the decoder) the control is
    off too: the crop's edge frames are wrong, and the margin keeps them out of the kept samples."""
    control = decoder_crop.without_decoder_norms(decoder_crop.with_decoder_layer_scale(model, 1.0))
    monkeypatch.setattr(decoder_crop, "time_reach", lambda m: -2)
    assert decoder_crop.measure(control, 0.05, lead=0)["diff_over_output_peak"] > 1e-4
