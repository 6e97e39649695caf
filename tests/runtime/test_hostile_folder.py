"""A model folder is untrusted input: every crafted manifest, swapped file and absurd option ends in one
line (ModelFolderError / InvalidInputError; exit 2 in the CLI), never a traceback, hang or huge allocation."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicgen_onnx.runtime import InvalidInputError, ModelFolderError, MusicGen
from musicgen_onnx.runtime.manifest import MANIFEST_NAME, Manifest, load_manifest, sha256_file

from helpers import BUNDLED

ORIGINAL = json.loads((BUNDLED / MANIFEST_NAME).read_text())


def _copy(tmp_path: Path, name: str = "m") -> Path:
    return Path(shutil.copytree(BUNDLED, tmp_path / name))


def _write(folder: Path, data) -> None:
    text = data if isinstance(data, str) else json.dumps(data)
    (folder / MANIFEST_NAME).write_text(text)


def _rehash(folder: Path, data: dict) -> dict:
    for graph in data["graphs"].values():
        graph["files"] = {n: sha256_file(folder / n) for n in graph["files"]}
        graph["size_bytes"] = sum((folder / n).stat().st_size for n in graph["files"])
    data["tokenizer_sha256"] = sha256_file(folder / data["tokenizer"]) if (folder / data["tokenizer"]).is_file() \
        else data["tokenizer_sha256"]
    return data


def _one_line(r, *needles: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if not line.startswith("using the bundled")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _edited(**changes) -> dict:
    data = json.loads(json.dumps(ORIGINAL))
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return data


MANIFEST_CASES = {
    "source": (_edited(source="x"), "source must be a JSON object"),
    "tokenizer-int": (_edited(tokenizer=5), "tokenizer must be a plain name of a file"),
    "tokenizer-abs": (_edited(tokenizer="/etc/passwd"), "tokenizer must be a plain name of a file"),
    "tokenizer-parent": (_edited(tokenizer="../../tokenizer.json"), "tokenizer must be a plain name of a file"),
    "graph-file-int": (_edited(graphs__decoder__file=5), "graphs.decoder.file must be a plain name of a file"),
    "duration-str": (_edited(defaults__duration="15"), "defaults.duration must be a finite number"),
    "top-k-str": (_edited(defaults__top_k="250"), "defaults.top_k must be an integer"),
    "top-k-zero": (_edited(defaults__top_k=0), "defaults: top_k must be an integer in [1, 2048]"),
    "format-bool": (_edited(format_version=True), "format version True is not supported"),
    "delays-float": (_edited(delays=[0, 1.9, 2, 3]), "delays[] must be an integer"),
    "delays-str": (_edited(delays=["0", "1", "2", "3"]), "delays[] must be an integer"),
    "max-duration-bool": (_edited(max_duration=True), "max_duration must be a finite number"),
    "hop-1": (_edited(hop_length=1), "sample_rate / hop_length must be between 1 and 200"),
    "terabytes": (_edited(hidden_size=16384, num_heads=1, hop_length=1, sample_rate=384000), "must be between 1 and 200"),
    "special-65536": (_edited(special_token_id=65536), "special_token_id must equal codebook_size"),
    "unknown-field": (_edited(surprise=1), "unknown field(s) 'surprise'"),
    "lookahead-65": (_edited(codec_lookahead=65), "codec_lookahead must be an integer in [0, 64], got 65"),
    "lookahead-negative": (_edited(codec_lookahead=-1), "codec_lookahead must be an integer in [0, 64], got -1"),
    "lookahead-float": (_edited(codec_lookahead=4.0), "codec_lookahead must be an integer, got 4.0"),
    "lookahead-bool": (_edited(codec_lookahead=True), "codec_lookahead must be an integer, got True"),
    "num-heads-4": (_edited(num_heads=4), "has size 2 on axis 1, the manifest implies 4"),
    # found by the fuzz test below: a role key with a newline was echoed raw into the error
    "role-key-newline": (_edited(graphs__audio_decoder__roles={**ORIGINAL["graphs"]["audio_decoder"]["roles"], "a\nb": 5}),
                         "graphs.audio_decoder.roles['a\\nb'] must be"),
}


GRAPH_CHECKED = {"num-heads-4"}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_crafted_manifest_fields_are_one_line_errors(case, tmp_path, cli):
    data, message = MANIFEST_CASES[case]
    folder = _copy(tmp_path)
    _write(folder, data)
    with pytest.raises(ModelFolderError, match="^[^\n]*$") as err:
        MusicGen.from_pretrained(folder, providers="cpu")
    assert message in str(err.value)
    if case not in GRAPH_CHECKED:  # `info` reads the manifest and hashes; graphs are checked when opened
        _one_line(cli("info", folder), message)
    _one_line(cli("generate", "x", "--model", folder, "--duration", "0.2", "-o", tmp_path / "o.wav", "--quiet"))
    assert not (tmp_path / "o.wav").exists()


def test_huge_numbers_and_deep_nesting_in_the_manifest_file(tmp_path, cli):
    folder = _copy(tmp_path)
    text = json.dumps(ORIGINAL)
    for bad in (text.replace('"hidden_size": 32', '"hidden_size": ' + "9" * 5000), "[" * 100000):
        _write(folder, bad)
        with pytest.raises(ModelFolderError, match="unreadable manifest"):
            load_manifest(folder)
        _one_line(cli("info", folder), "unreadable manifest")


def test_a_swapped_graph_with_a_matching_hash_is_refused(tmp_path):
    folder = _copy(tmp_path)
    shutil.copy(folder / "audio_decoder.onnx", folder / "decoder.onnx")
    _write(folder, _rehash(folder, json.loads((folder / MANIFEST_NAME).read_text())))
    with pytest.raises(ModelFolderError, match="graph decoder .* declares inputs"):
        MusicGen.from_pretrained(folder, providers="cpu")


def test_an_unreadable_file_is_a_folder_error(tmp_path, monkeypatch):
    from musicgen_onnx.runtime import manifest as manifest_mod

    def refuse(path, chunk=0):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(manifest_mod, "sha256_file", refuse)
    with pytest.raises(ModelFolderError, match="cannot be read .Permission denied"):
        MusicGen.from_pretrained(_copy(tmp_path), providers="cpu")


def test_the_tokenizer_is_hashed_and_confined(tmp_path):
    folder = _copy(tmp_path)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Sequence", "normalizers": [
        tok["normalizer"], {"type": "Replace", "pattern": {"String": "piano"}, "content": "heavy metal"}]}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ModelFolderError, match="tokenizer.json: sha256 does not match"):
        MusicGen.from_pretrained(folder, providers="cpu")
    # a symlink to a file outside the folder is refused even when its hash matches
    outside = tmp_path / "outside.json"
    shutil.copy(BUNDLED / "tokenizer.json", outside)
    (folder / "tokenizer.json").unlink()
    os.symlink(outside, folder / "tokenizer.json")
    with pytest.raises(ModelFolderError, match="outside the model folder"):
        MusicGen.from_pretrained(folder, providers="cpu")


@pytest.mark.export  # needs the onnx / transformers packages of the export extra
def test_a_graph_reading_an_unlisted_file_is_refused(tmp_path):
    import onnx

    folder = _copy(tmp_path)
    model = onnx.load(str(folder / "text_encoder.onnx"))
    onnx.save_model(model, str(folder / "text_encoder.onnx"), save_as_external_data=True,
                    location="swap.bin", size_threshold=0)
    data = _rehash(folder, json.loads((folder / MANIFEST_NAME).read_text()))
    _write(folder, data)
    with pytest.raises(ModelFolderError, match="reads external data 'swap.bin', which the manifest does not list"):
        MusicGen.from_pretrained(folder, providers="cpu")
    data["graphs"]["text_encoder"]["files"]["swap.bin"] = sha256_file(folder / "swap.bin")
    data = _rehash(folder, data)
    _write(folder, data)
    model = MusicGen.from_pretrained(folder, providers="cpu")  # listed and hashed: fine
    assert model.generate(["x"], duration=0.2).shape == (1, 1, 6400)


def test_a_version_1_folder_still_loads_and_gives_the_same_codes(tmp_path):
    folder = _copy(tmp_path)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    for graph in data["graphs"].values():
        graph.pop("roles")
    for key in ("tokenizer_sha256", "text_vocab_size"):
        data.pop(key)
    data["format_version"] = 1
    _write(folder, data)
    kw = dict(duration=0.3, seed=4, return_codes=True)
    _, old = MusicGen.from_pretrained(folder, providers="cpu").generate(["x"], **kw)
    _, new = MusicGen.from_pretrained(BUNDLED, providers="cpu").generate(["x"], **kw)
    np.testing.assert_array_equal(old, new)
    data = {k: v for k, v in ORIGINAL.items() if k != "tokenizer_sha256"}  # version 2 must hash its tokenizer
    _write(folder, data)
    with pytest.raises(ModelFolderError, match="tokenizer_sha256 is missing"):
        load_manifest(folder)


def test_a_call_never_changes_the_shared_model(model):
    before = model.options
    model.generate(["x"], duration=0.2, top_k=3, temperature=0.5, seed=1)
    assert model.options is before


@pytest.mark.parametrize("options, message", [
    (dict(guidance_scale=1e39), "guidance_scale must be >= 0 and at most 100"),
    (dict(temperature=1e-320), "temperature must be > 0 when sampling (between 0.001 and 100"),
])
def test_options_that_would_overflow_the_logits_are_refused(model, options, message):
    with pytest.raises(InvalidInputError) as err:
        model.generate(["x"], duration=0.2, **options)
    assert message in str(err.value)


def test_bad_prompt_codes_and_too_many_prompts(model):
    with pytest.raises(InvalidInputError, match=r"prompt codes must be \[1, 4, frames\], got list"):
        model.generate(["x"], duration=1, prompt_codes=[[[1, 2]] * 4])
    with pytest.raises(InvalidInputError, match=r"prompt codes must be integers in \[0, 2047\]"):
        model.generate(["x"], duration=1, prompt_codes=np.full((1, 4, 5), 4096))
    with pytest.raises(InvalidInputError, match="at most 64 allowed"):
        model.generate(["x"] * 1000, duration=0.2)
    long_prompt = np.zeros((1, 4, 2000), dtype=np.int64)  # 40 s: longer than the 30 s window
    with pytest.raises(InvalidInputError, match="a prompt must be shorter than the model's 30 s window"):
        model.generate(["x"], duration=45, prompt_codes=long_prompt)


def test_cli_usage_errors_are_one_line(cli, tmp_path):
    _one_line(cli("generate", "x", "--bogus"), "No such option")
    _one_line(cli("generate", "x", "--top-k", "abc"), "'abc' is not a valid integer")
    _one_line(cli("generate", "x", "--guidance", "1e39", "-o", tmp_path / "a.wav"), "guidance_scale")
    _one_line(cli("generate", "x", "--temperature", "1e-320", "-o", tmp_path / "a.wav"), "temperature")


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=10)


def _paths(data, prefix=()):
    """Every (path) into the manifest's nested objects, so the fuzzer can replace any value."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


PATHS = list(_paths(ORIGINAL))


@settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(PATHS), _json), min_size=1, max_size=3),
       st.sampled_from([None, "audio_decoder.onnx", "tokenizer.json", "truncate"]))
def test_fuzz_hostile_folder(tmp_path_factory, edits, swap):
    """Type-confused and out-of-range values anywhere in the manifest, and swapped or truncated files:
    the folder loads and generates, or it is refused in one line. Deadline: 5 s per example."""
    folder = Path(shutil.copytree(BUNDLED, tmp_path_factory.mktemp("fuzz") / "m"))
    data = json.loads(json.dumps(ORIGINAL))
    for path, value in edits:
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass
    if swap == "truncate":
        blob = (folder / "decoder.onnx").read_bytes()
        (folder / "decoder.onnx").write_bytes(blob[: len(blob) // 2])
    elif swap is not None:
        shutil.copy(folder / swap, folder / "decoder.onnx")
    _write(folder, data)
    try:
        model = MusicGen.from_pretrained(folder, providers="cpu")
        model.generate(["x"], duration=0.2, seed=0)
    except (ModelFolderError, InvalidInputError) as exc:
        assert "\n" not in str(exc)


def test_a_failed_run_leaves_no_out_dir_and_a_long_prompt_is_refused(cli, tmp_path):
    import soundfile as sf

    _one_line(cli("generate", "x", "--out-dir", tmp_path / "new" / "deeper", "--guidance", "1e39"), "guidance_scale")
    assert not (tmp_path / "new").exists()
    sf.write(tmp_path / "long.wav", 0.1 * np.sin(np.arange(32000 * 40) * 0.05), 32000)
    _one_line(cli("generate", "x", "--continue", tmp_path / "long.wav", "--duration", "45", "-o", tmp_path / "c.wav"),
              "shorter than the model's 30 s window")
    assert not (tmp_path / "c.wav").exists()


def test_a_manifest_linking_out_of_the_folder_is_refused(tmp_path):
    """Issue 24 item 12: a local folder's manifest, like its graphs, must not be a link to elsewhere."""
    folder = _copy(tmp_path)
    outside = tmp_path / "outside.json"
    shutil.copy(folder / MANIFEST_NAME, outside)
    (folder / MANIFEST_NAME).unlink()
    os.symlink(outside, folder / MANIFEST_NAME)
    with pytest.raises(ModelFolderError, match="outside the model folder"):
        load_manifest(folder)


def test_a_grown_graph_is_refused_by_size_before_hashing(tmp_path, monkeypatch):
    """Issue 24 item 13: a decoder grown to 20 GB (sparse) is refused by its size at once, not hashed."""
    from musicgen_onnx.runtime import manifest as manifest_mod

    folder = _copy(tmp_path)
    with open(folder / "decoder.onnx", "r+b") as fh:
        fh.truncate(20 << 30)  # sparse: no disk used
    hashed = []
    real = manifest_mod._file_digest
    monkeypatch.setattr(manifest_mod, "_file_digest", lambda path: hashed.append(path) or real(path))
    t0 = time.perf_counter()
    with pytest.raises(ModelFolderError, match=r"graph decoder files \(decoder.onnx\) total 21474836480 bytes"):
        MusicGen.from_pretrained(folder, providers="cpu")
    assert time.perf_counter() - t0 < 5
    assert not any(Path(p).name == "decoder.onnx" for p in hashed), hashed
