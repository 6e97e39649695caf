"""Melody stems on ONNX against the references: ``demucs.apply.apply_model`` for the stems, audiocraft's
``ChromaStemConditioner`` recipe (torch + demucs) for the chroma, transformers for greedy tokens.

One tiny random HTDemucs (``export/random_demucs.py`` TINY_KWARGS: the released architecture's structure, small)
is saved in the Hugging Face hub layout and exported with the tiny melody checkpoint
(``export --stems``); the same weights, loaded by demucs from the same folder, are the reference.
The random shift of ``apply_model(shifts=1)`` is the one the runtime draws from the seed, fed to demucs
by patching ``random.randint``.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from musicgen_onnx.export import reference
from musicgen_onnx.export import random_demucs
from musicgen_onnx.export import stems as export_stems
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.chroma import batch_chroma
from musicgen_onnx.runtime.errors import ExportError
from musicgen_onnx.runtime.generation import GenerationInputs, GenerationTask
from musicgen_onnx.runtime.melody import prepare_melodies, window_cut
from musicgen_onnx.runtime.resample_frac import resample_frac
from musicgen_onnx.runtime.stems import StemSeparator

STEMS_TOL = 1e-4  # max |ONNX stems - apply_model| / input peak (the bound)
FRAMES = 12


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """demucs's apply_model on the tiny model is dominated by per-segment overhead, which torch's thread
    pool multiplies on a busy 2-core machine (10 s of audio: 64 s with the default threads, ~6 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demucs_folder(tmp_path_factory):
    return random_demucs.save_hub_folder(random_demucs.random_htdemucs("tiny", seed=1),
                                        tmp_path_factory.mktemp("demucs") / "tiny-htdemucs")


@pytest.fixture(scope="module")
def demucs_bag(demucs_folder):
    """What audiocraft holds: demucs's own model, as ``get_model`` returns it (a bag of one)."""
    from demucs.apply import BagOfModels

    model, _ = export_stems.load_demucs(str(demucs_folder))
    return BagOfModels([model])


@pytest.fixture(scope="module")
def melody_folder(checkpoint_dir, demucs_folder, tmp_path_factory):
    from musicgen_onnx.export.exporter import export

    return export(str(checkpoint_dir("tiny-melody")), tmp_path_factory.mktemp("onnx") / "tiny-melody-stems",
                  stems=str(demucs_folder))


@pytest.fixture(scope="module")
def model(melody_folder):
    """The exact tier for melodies too: parity is the exact graph's (the fast one: test_stems_fast.py)."""
    return MusicGen.from_pretrained(melody_folder, providers="cpu", exact_stems=True)


def apply_model(bag, wav: torch.Tensor, shift: int, monkeypatch) -> torch.Tensor:
    """``demucs.apply.apply_model`` with audiocraft's arguments, its ``random.randint`` answering ``shift``."""
    from demucs.apply import apply_model as reference_apply

    with monkeypatch.context() as patch:
        patch.setattr(random, "randint", lambda a, b: shift)
        with torch.no_grad():
            return reference_apply(bag, wav, device="cpu")


def audiocraft_stemmed(bag, wavs, shift, monkeypatch) -> np.ndarray:
    """audiocraft ``ChromaStemConditioner._get_stemmed_wav`` on collated melodies (spec 2.2 step 3):
    ``convert_audio`` to 44.1 kHz stereo, ``apply_model``, stems [vocals, other] summed, channel mean,
    ``convert_audio`` back to 32 kHz mono."""
    from demucs.audio import convert_audio

    longest = max(len(w) for w in wavs)
    wav = torch.stack([torch.nn.functional.pad(torch.from_numpy(w), (0, longest - len(w))) for w in wavs])[:, None]
    wav = convert_audio(wav, 32000, bag.samplerate, bag.audio_channels)
    stems = apply_model(bag, wav, shift, monkeypatch)
    idx = [bag.sources.index("vocals"), bag.sources.index("other")]
    mix = stems[:, idx].sum(1).mean(1, keepdim=True)
    return convert_audio(mix, bag.samplerate, 32000, 1)[:, 0].numpy()


def music(seconds: float, sr: int, channels: int, seed: int) -> np.ndarray:
    """Tones, a beat and a little noise: something for every stem to take."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    notes = rng.choice([220.0, 261.63, 329.63, 392.0, 440.0], size=(channels, 6))
    step = np.minimum((t / seconds * 6).astype(int), 5)
    tone = 0.4 * np.sin(2 * np.pi * notes[:, step] * t)
    beat = 0.3 * np.exp(-30 * (t % 0.25)) * np.sin(2 * np.pi * 60 * t)
    return (tone + beat + 0.02 * rng.standard_normal((channels, t.shape[0]))).astype(np.float32)


# ---------------------------------------------------------------- stems
@pytest.mark.parametrize("rates", [(32000, 44100), (44100, 32000), (48000, 32000), (22050, 44100), (16000, 32000)])
def test_resample_frac_is_julius(rates):
    import julius

    x = np.random.default_rng(0).standard_normal((2, 20011)).astype(np.float32)
    want = julius.resample_frac(torch.from_numpy(x), *rates).numpy()
    got = resample_frac(x, *rates)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6 * np.abs(x).max()


@pytest.mark.parametrize("rates", [(32000, 44100), (44100, 32000), (1009, 1543), (1543, 1009), (44100, 4999),
                                   (997, 44100)])
def test_resample_frac_per_output_path_is_julius(rates, monkeypatch):
    """The path taken for rates whose julius kernel table would not fit (44099 Hz and the like),
    forced on rates where julius is practical: the accuracy resample_frac's docstring states."""
    import julius

    from musicgen_onnx.runtime import resample_frac as module

    monkeypatch.setattr(module, "_DENSE_ELEMENTS", 0)
    x = np.random.default_rng(0).standard_normal((2, 20011)).astype(np.float32)
    want = julius.resample_frac(torch.from_numpy(x), *rates).numpy()
    got = resample_frac(x, *rates)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6 * np.abs(x).max()


@pytest.mark.parametrize("case", ["stereo-44k", "mono-32k", "batch-short"])
def test_stems_match_apply_model(case, model, demucs_bag, monkeypatch):
    from demucs.audio import convert_audio

    separator = model.stems
    if case == "stereo-44k":
        wav, sr, shift = music(1.6, 44100, 2, 0)[None], 44100, 1234
    elif case == "mono-32k":
        wav, sr, shift = music(1.1, 32000, 1, 1)[None], 32000, 22050  # the largest shift
    else:  # several tracks in one call, shorter than one segment, shift 0
        wav, sr, shift = np.stack([music(0.2, 44100, 2, s) for s in (2, 3, 4)]), 44100, 0
    mix = np.stack([separator.prepare_mix(w, sr, "test input") for w in wav])
    want_mix = convert_audio(torch.from_numpy(wav), sr, 44100, 2)
    np.testing.assert_allclose(mix, want_mix.numpy(), atol=1e-5 * np.abs(wav).max())
    want = apply_model(demucs_bag, want_mix, shift, monkeypatch).numpy()
    got = separator.separate(mix, shift)
    assert got.shape == want.shape
    diff = np.abs(got - want).max()
    assert diff <= STEMS_TOL * np.abs(wav).max(), f"max |ONNX - apply_model| = {diff / np.abs(wav).max():.3g} x input peak"
    # random weights (demucs's rescaled init) make quiet stems: hold them to their own scale too
    assert diff <= STEMS_TOL * np.abs(want).max() and np.abs(want).max() > 1e-3 * np.abs(wav).max()
    for a in range(4):  # and each stem is its own
        for b in range(a + 1, 4):
            assert np.abs(want[:, a] - want[:, b]).max() > 1e-3


def test_stems_folder_and_melody_folder_agree(model, demucs_folder, tmp_path, cli):
    """``export-stems`` (in-process: the command is a thin wrapper, and its own refusals are checked
    below) makes a stems-only folder with the same graph behaviour as ``export --stems``."""
    out = export_stems.export_stems_folder(str(demucs_folder), tmp_path / "stems-only", validate_graphs=False)
    alone = StemSeparator.from_folder(out)
    mix = np.stack([music(0.7, 44100, 2, 5)])
    np.testing.assert_allclose(alone.separate(mix, 99), model.stems.separate(mix, 99), atol=1e-6)
    assert json.loads((out / "musicgen_onnx_stems.json").read_text())["stems"]["sources"] == list(alone.sources)
    info = cli("info", model.folder)
    assert info.returncode == 0 and "melody = vocals + other" in info.stdout and "stems.onnx" in info.stdout


def test_attention_is_exported_as_one_fused_op(model):
    """The cross-transformer's attention is onnxruntime's MultiHeadAttention (flash attention on CPU, no
    tokens x tokens matrix), not MatMul -> Softmax -> MatMul; parity with apply_model is checked above."""
    import onnx

    graph = onnx.load(str(model.folder / "stems.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    # the tiny model's time branch ends merged into the frequency branch (depth 3), so its own attention
    # output is unused and pruned: one fused op remains (htdemucs: ten)
    assert ops.count("MultiHeadAttention") == 1 and "Softmax" not in ops


def test_shift_comes_from_the_seed(model):
    wav = [music(0.6, 32000, 1, 6)[0]]
    a = model.separate_melodies(wav, [np.random.default_rng(5)])
    b = model.separate_melodies(wav, [np.random.default_rng(5)])
    c = model.separate_melodies(wav, [np.random.default_rng(6)])
    np.testing.assert_array_equal(a[0], b[0])
    assert np.abs(a[0] - c[0]).max() > 1e-4  # another seed, another shift, other stems


# ---------------------------------------------------------------- chroma after stems
@pytest.mark.parametrize("case", ["mono-32k", "stereo-44k"])
def test_chroma_after_stems_is_audiocrafts(case, model, demucs_bag, monkeypatch):
    """Runtime: prepare (julius to 32 kHz mono) -> separate -> chroma; reference: audiocraft's
    ``convert_audio`` to 32 kHz mono, then ``_get_stemmed_wav`` with torch + demucs, then the chroma."""
    from demucs.audio import convert_audio

    wav, sr = (music(3.0, 32000, 1, 7), 32000) if case == "mono-32k" else (music(3.0, 44100, 2, 8), 44100)
    m = model.manifest
    ours = prepare_melodies(wav, sr, 1, m.chroma, stems=m.stems)
    seed = 11
    stemmed = model.separate_melodies(ours, [np.random.default_rng(seed)])
    shift = model.stems.draw_shift(np.random.default_rng(seed))
    melody32 = convert_audio(torch.from_numpy(wav), sr, 32000, 1)[0].numpy()  # audiocraft's convert_audio
    want = audiocraft_stemmed(demucs_bag, [melody32], shift, monkeypatch)
    assert np.abs(stemmed[0] - want[0]).max() <= STEMS_TOL * np.abs(wav).max()
    got_chroma = batch_chroma(stemmed, m.chroma)
    want_chroma = reference.chroma_features(want)
    np.testing.assert_array_equal(got_chroma, want_chroma)
    full_mix = batch_chroma(prepare_melodies(wav, sr, 1, m.chroma), m.chroma)
    assert not np.array_equal(got_chroma, full_mix)  # the stems change the conditioning


def test_long_form_windows_separate_each_cut(model, monkeypatch):
    """Past 30 s each window's melody cut is separated (audiocraft runs the conditioner per window), with
    the shifts drawn in order from the seed. Separation itself is checked against demucs above; here it
    is recorded, not run (two 30 s cuts would cost minutes of the tiny model's segments)."""
    wav = music(5.0, 32000, 1, 9)[0]
    calls = []

    def record(wavs, rngs):
        calls.append(([w.copy() for w in wavs], [model.stems.draw_shift(r) for r in rngs]))
        return wavs

    monkeypatch.setattr(model, "separate_melodies", record)
    inputs = GenerationInputs.check(model.parts(), ["x"], wav, 32000, model.options.updated(duration=40.0, seed=4))
    assert inputs.stems
    task = GenerationTask(model.parts(), inputs)
    assert len(task.windows) == 2
    for window in task.windows:
        task.window_chroma(window)
    rng = np.random.default_rng(4)
    for window, (cut, shifts) in zip(task.windows, calls, strict=True):
        want = window_cut(inputs.melodies, window.start_s, model.max_duration, model.manifest.chroma)
        np.testing.assert_array_equal(cut[0], want[0])
        assert shifts == [model.stems.draw_shift(rng)]
    assert calls[0][1] != calls[1][1]


def test_a_dropped_row_takes_its_shift_generator_with_it(model, monkeypatch):
    """Per-row seeds give each row its own shift generator; when a row leaves between long-form windows
    (serve: its client hung up), the survivors keep drawing their own shifts, as without the drop."""
    wav = music(5.0, 32000, 1, 9)[0]
    calls = []

    def record(wavs, rngs):
        calls.append([model.stems.draw_shift(r) for r in rngs])
        return wavs

    monkeypatch.setattr(model, "separate_melodies", record)
    inputs = GenerationInputs.check(model.parts(), ["x", "y"], wav, 32000,
                                    model.options.updated(duration=40.0, seed=[4, 5]))
    task = GenerationTask(model.parts(), inputs)
    task.window_chroma(task.windows[0])

    class Loop:  # the window's loop has ended; only the task's own per-row state is cut here
        def keep_rows(self, index):
            pass

    task._drop(Loop(), np.array([1]))
    task.window_chroma(task.windows[1])
    row0, row1 = np.random.default_rng(4), np.random.default_rng(5)
    first = [model.stems.draw_shift(row0), model.stems.draw_shift(row1)]
    assert calls == [first, [model.stems.draw_shift(row1)]]


# ---------------------------------------------------------------- generation
def test_greedy_generation_with_stems_matches_transformers(model, reference_model, demucs_bag, monkeypatch):
    """transformers fed the chroma of the Demucs stems (what it expects from a caller: spec 2.3 step 1)
    generates our greedy tokens; without stems ours are the full mix's, and differ."""
    hf, tok = reference_model("tiny-melody")
    prompts = ["A happy rock track with guitar", "sad jazz"]
    melodies = [music(2.5, 32000, 1, 10)[0], music(1.5, 32000, 1, 11)[0]]
    seed = 21
    shift = model.stems.draw_shift(np.random.default_rng(seed))
    features = reference.chroma_features(audiocraft_stemmed(demucs_bag, melodies, shift, monkeypatch))
    ref_codes, _ = reference.generate(hf, tok, prompts, FRAMES, input_features=features)
    kw = dict(melody=melodies, melody_sample_rate=32000, duration=FRAMES / 50, greedy=True, seed=seed,
              return_codes=True)
    _, codes = model.generate(prompts, **kw)
    np.testing.assert_array_equal(codes, ref_codes)
    _, full_mix = model.generate(prompts, stems=False, **kw)
    ref_full, _ = reference.generate(hf, tok, prompts, FRAMES, input_features=reference.chroma_features(melodies))
    np.testing.assert_array_equal(full_mix, ref_full)
    assert not np.array_equal(codes, full_mix)


def test_stems_true_needs_a_stems_graph(exported):
    from musicgen_onnx.runtime.errors import InvalidInputError

    plain = MusicGen.from_pretrained(exported("tiny-melody"), providers="cpu")
    assert plain.stems is None
    with pytest.raises(InvalidInputError, match="no stems graph"):
        plain.generate(["x"], melody=music(1.0, 32000, 1, 0)[0], melody_sample_rate=32000, duration=0.1, stems=True)


# ---------------------------------------------------------------- export refusals
def test_export_stems_command_errors_are_one_line(tmp_path, cli):
    result = cli("export-stems", tmp_path / "nowhere" / "htdemucs.th", tmp_path / "out")
    last = result.stderr.strip().splitlines()[-1]  # after the progress line naming the step
    assert result.returncode == 2 and result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert last.startswith("error: ") and "no such file or folder" in last
    assert not (tmp_path / "out").exists()


def test_export_refuses_what_it_cannot_export(demucs_folder, tmp_path):
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "htdemucs_ft.yaml").write_text("models: ['a', 'b', 'c', 'd']\n")
    with pytest.raises(ExportError, match="a bag of 4 models"):
        export_stems.load_demucs(str(bag))
    pickle = tmp_path / "model.th"
    pickle.write_bytes(b"not really")
    with pytest.raises(ExportError, match="--allow-pickle"):
        export_stems.load_demucs(str(pickle))
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.yaml").write_text("models: ['sig']\n")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(other / "sig.safetensors"), metadata={"klass": "os.system", "args": "[]",
                                                                               "kwargs": "{}"})
    with pytest.raises(ExportError, match="'os.system' is not supported"):
        export_stems.load_demucs(str(other))
    with pytest.raises(ExportError, match="no such file or folder"):
        export_stems.load_demucs(str(tmp_path / "missing" / "htdemucs.yaml"))
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_stems.export_stems_folder(str(demucs_folder), tmp_path)


def test_generate_command_separates_unless_told_not_to(model, tmp_path, cli):
    import soundfile as sf

    melody = tmp_path / "melody.wav"
    sf.write(str(melody), music(2.0, 44100, 2, 12).T, 44100)
    runs = {}
    for flag in ([], ["--no-stems"]):
        out = tmp_path / f"out{len(flag)}.wav"
        result = cli("generate", "a calm piano", "--model", model.folder, "--melody", melody, "--duration", "0.3",
                     "--greedy", "--seed", "2", "--normalize", "none", "--quiet", "--exact-stems", "-o", out, *flag)
        assert result.returncode == 0, result.stderr
        runs[bool(flag)] = sf.read(str(out))[0]
    _, codes = model.generate(["a calm piano"], melody=str(melody), duration=0.3, greedy=True, seed=2,
                              return_codes=True)
    audio = model.decode(codes)[0].T
    np.testing.assert_allclose(runs[False], audio.reshape(runs[False].shape), atol=1e-4)  # 16-bit WAV
    assert not np.allclose(runs[False], runs[True])
