"""Past 30 seconds, audio continuation and streaming (audiocraft's extend_stride windows and continuation)."""

from __future__ import annotations


import numpy as np
import pytest
import soundfile as sf

from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.chroma import batch_chroma
from musicgen_onnx.runtime.errors import InvalidInputError
from musicgen_onnx.runtime.longform import plan_windows
from musicgen_onnx.runtime.melody import window_chroma


def test_window_plan_reproduces_audiocrafts_60s_example():
    windows = plan_windows(60, 50, 30, 18)
    assert [(w.offset, w.prompt_frames, w.frames) for w in windows] == [(0, 0, 1500), (900, 600, 1500), (1800, 600, 1200)]
    assert [w.new_frames for w in windows] == [1500, 900, 600]
    assert [w.start_s for w in windows] == [0.0, 18.0, 36.0]


@pytest.mark.parametrize("duration, stride", [(30, 18), (12.5, 18), (30.5, 18), (95.3, 18), (120, 10), (61, 29.9)])
def test_windows_cover_exactly_the_requested_frames(duration, stride):
    windows = plan_windows(duration, 50, 30, stride)
    assert sum(w.new_frames for w in windows) == int(duration * 50)
    assert all(0 < w.frames <= 1500 and w.new_frames > 0 for w in windows)
    for a, b in zip(windows, windows[1:]):  # each window's prompt is the previous window's tail
        assert b.offset + b.prompt_frames == a.offset + a.frames


def test_continuation_plan_counts_the_prompt():
    windows = plan_windows(40, 50, 30, 18, prompt_frames=250)
    assert windows[0].prompt_frames == 250 and windows[0].frames == 1500
    assert 250 + sum(w.new_frames for w in windows) == 2000


@pytest.mark.slow  # long-form
def test_120_seconds_of_audio_with_a_melody(model):
    seen = []
    t = np.arange(32000 * 7) / 32000
    melody = (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    audio, codes = model.generate(["a long ambient piece"], melody=melody, melody_sample_rate=32000, duration=120,
                                 top_k=50, seed=0, progress=lambda d, n: seen.append((d, n)), return_codes=True)
    assert audio.shape == (1, 1, 120 * 32000)
    assert codes.shape == (1, 4, 6000) and codes.max() < 2048
    assert seen[-1][0] == seen[-1][1] == len(seen)  # one progress bar over all windows


def test_long_form_windows_chain_like_audiocraft(exported):
    """Greedy, text only: window 1 is a plain 30 s generation, and window 2 is the continuation of
    frames 900..1500 for another 30 s, of which it keeps what comes after the prompt."""
    model = MusicGen.from_pretrained(exported("tiny-text"), providers="cpu")
    kw = dict(greedy=True)
    long = model.generate(["a piece"], duration=50, return_codes=True, **kw)[1]
    first = model.generate(["a piece"], duration=30, return_codes=True, **kw)[1]
    np.testing.assert_array_equal(long[:, :, :1500], first)
    second = model.generate(["a piece"], duration=30, prompt_codes=first[:, :, 900:], return_codes=True, **kw)[1]
    np.testing.assert_array_equal(second[:, :, :600], first[:, :, 900:])  # output includes the prompt
    np.testing.assert_array_equal(long[:, :, 1500:2400], second[:, :, 600:])
    assert long.shape[2] == 2500


def test_melody_windows_come_from_the_periodic_extension(model):
    t = np.arange(32000 * 7) / 32000
    wav = (0.4 * np.sin(2 * np.pi * np.where(t < 3, 261.63, 440.0) * t)).astype(np.float32)
    got = window_chroma([wav], 18.0, 30.0, model.manifest.chroma)
    a = 18 * 32000
    want = batch_chroma([np.concatenate([wav] * 8)[a:a + 30 * 32000]], model.manifest.chroma)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (1, 235, 12)


def test_audio_encoder_codes_equal_transformers(exported, reference_model):
    import torch

    for arch in ("tiny-text", "tiny-text-stereo"):
        model, _ = reference_model(arch)
        ours = MusicGen.from_pretrained(exported(arch), providers="cpu")
        rng = np.random.default_rng(0)
        audio = (0.2 * rng.standard_normal((2, ours.audio_channels, 32000 + 77))).astype(np.float32)
        codes = ours.encode_prompt(audio, 32000)
        with torch.no_grad():
            if ours.audio_channels == 1:
                want = model.audio_encoder.encode(torch.from_numpy(audio)).audio_codes[0].numpy()
            else:
                left = model.audio_encoder.encode(torch.from_numpy(audio[:, :1])).audio_codes[0].numpy()
                right = model.audio_encoder.encode(torch.from_numpy(audio[:, 1:])).audio_codes[0].numpy()
                want = np.empty((2, 8, left.shape[2]), dtype=left.dtype)
                want[:, 0::2], want[:, 1::2] = left, right
        assert codes.shape == want.shape == (2, ours.manifest.num_codebooks, 51)
        np.testing.assert_array_equal(codes, want)


@pytest.mark.parametrize("arch", ["tiny-text", "tiny-text-stereo"])
def test_greedy_continuation_is_token_identical_to_transformers(arch, exported, reference_model):
    import torch

    model, tok = reference_model(arch)
    ours = MusicGen.from_pretrained(exported(arch), providers="cpu")
    rng = np.random.default_rng(1)
    prompts = ["happy rock", "sad jazz with piano"]
    audio = (0.2 * rng.standard_normal((2, ours.audio_channels, 640 * 10))).astype(np.float32)
    total = 24
    enc = tok(prompts, padding=True, return_tensors="pt")
    captured = []
    original = model.audio_encoder.decode

    def capture(codes, *a, **k):
        captured.append(codes[0].clone())
        return original(codes, *a, **k)

    model.audio_encoder.decode = capture
    try:
        with torch.no_grad():
            model.generate(**enc, input_values=torch.from_numpy(audio), do_sample=False, guidance_scale=3.0,
                           max_new_tokens=total - 10 + 3)
    finally:
        del model.audio_encoder.decode
    if ours.audio_channels == 2:
        want = np.empty((2, 8, captured[0].shape[2]), dtype=np.int64)
        want[:, 0::2], want[:, 1::2] = captured[0].numpy(), captured[1].numpy()
    else:
        want = captured[0].numpy()
    _, codes = ours.generate_continuation(audio, 32000, prompts, duration=total / 50, greedy=True, return_tokens=True)
    assert codes.shape == want.shape == (2, ours.manifest.num_codebooks, total)
    np.testing.assert_array_equal(codes, want)
    assert not np.array_equal(want[0, :, 10:], want[1, :, 10:])


def test_streaming_equals_one_shot(model):
    kw = dict(duration=6.0, seed=3, top_k=50)
    one_shot = model.generate(["a streamed piece"], **kw)
    chunks = list(model.generate_stream(["a streamed piece"], chunk_frames=25, **kw))
    assert len(chunks) >= 10 and all(c.shape[:2] == (1, 1) for c in chunks)
    streamed = np.concatenate(chunks, axis=2)
    assert streamed.shape == one_shot.shape
    assert np.max(np.abs(streamed - one_shot)) < 1e-4  # measured ~1e-7 (README, "Streaming")


@pytest.mark.parametrize("first", [1, 10, 60])
def test_the_first_chunk_comes_after_first_chunk_frames(model, first):
    """The first chunk waits for its frames + the folder's codec look-ahead + the delay pattern, not a whole
    chunk; with the measured look-ahead (4, not 8) the stream still equals the one-shot decode."""
    steps = []
    stream = model.generate_stream(["a streamed piece"], duration=3.0, seed=3, chunk_frames=50, first_chunk_frames=first,
                                   progress=lambda done, total: steps.append(done))
    chunk = next(stream)
    hop = model.sample_rate // model.frame_rate
    assert chunk.shape[2] == first * hop
    assert model.manifest.codec_lookahead == 4
    assert steps[-1] == first + model.manifest.codec_lookahead + model.manifest.max_delay
    rest = list(stream)
    assert [c.shape[2] // hop for c in rest[:-1]] == [50] * len(rest[:-1])
    np.testing.assert_allclose(np.concatenate([chunk, *rest], axis=2), model.generate(["a streamed piece"], duration=3.0,
                                                                                     seed=3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_first_chunk_frames_must_be_a_positive_integer(model, bad):
    with pytest.raises(InvalidInputError, match="first_chunk_frames must be a positive integer"):
        next(model.generate_stream(["x"], duration=1.0, first_chunk_frames=bad))


@pytest.mark.slow  # long-form
def test_cli_stream_continue_and_long(tmp_path, cli):
    def run(*args):
        r = cli("generate", *args)
        assert r.returncode == 0, r.stderr
        return r

    r = run("streamed", "--duration", "3", "--stream", "-o", str(tmp_path / "s.wav"), "--seed", "1")
    assert "first audio after" in r.stderr
    assert sf.info(str(tmp_path / "s.wav")).frames == 3 * 32000
    assert not list(tmp_path.glob(".*partial"))
    run("continued", "--continue", str(tmp_path / "s.wav"), "--duration", "5", "-o", str(tmp_path / "c.wav"))
    assert sf.info(str(tmp_path / "c.wav")).frames == 5 * 32000
    run("long", "--duration", "33", "--extend-stride", "20", "-o", str(tmp_path / "l.wav"), "--quiet")
    assert sf.info(str(tmp_path / "l.wav")).frames == 33 * 32000
    r = cli("generate", "x", "--continue", tmp_path / "s.wav", "--duration", "2", "-o", tmp_path / "bad.wav")
    assert r.returncode == 2 and "must be longer than the prompt" in r.stderr and not (tmp_path / "bad.wav").exists()


@pytest.mark.parametrize("arch", ["tiny-melody", "tiny-melody-stereo", "tiny-text", "tiny-text-stereo"])
def test_continuation_works_for_every_family(arch, exported):
    model = MusicGen.from_pretrained(exported(arch), providers="cpu")
    rng = np.random.default_rng(2)
    prompt = (0.2 * rng.standard_normal((1, 640 * 25))).astype(np.float32)  # mono prompt, 0.5 s at 32 kHz
    audio, codes = model.generate_continuation(prompt, 32000, ["go on", "and on"], duration=1.0, top_k=50, seed=0,
                                               return_tokens=True)
    assert audio.shape == (2, model.audio_channels, 32000) and codes.shape == (2, model.manifest.num_codebooks, 50)
    prompt_codes = model.encode_prompt(prompt, 32000)
    np.testing.assert_array_equal(codes[:, :, :25], np.repeat(prompt_codes, 2, axis=0))  # output includes the prompt
