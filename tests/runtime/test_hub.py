"""Models by name: hub repos through a real Hugging Face cache layout (no network), audiocraft names,
export on demand. Each failure is one line (exit 2 in the CLI)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from musicgen_onnx.runtime import ModelFolderError
from musicgen_onnx.runtime.hub import cache_home, checkpoint_of, resolve_model
from musicgen_onnx.runtime.manifest import MANIFEST_NAME, load_manifest

from helpers import BUNDLED

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_hub_cache(hf_home: Path, repo: str, files: dict[str, Path], commit: str = COMMIT,
                      ref: str = "main") -> Path:
    """``files`` {path in repo: source} into ``HF_HOME/hub`` as huggingface_hub lays a download out:
    content-addressed blobs, a snapshot of relative symlinks per commit, and refs/<branch>."""
    repo_dir = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, source in files.items():
        data = Path(source).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


def _bundled_files(prefix: str = "") -> dict[str, Path]:
    return {f"{prefix}{p.name}": p for p in BUNDLED.iterdir() if p.is_file()}


@pytest.fixture
def hub_env(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "MUSICGEN_ONNX_HOME": str(tmp_path / "home")}
    return env


def _ok(r):
    assert r.returncode == 0, r.stderr


def _one_line(r, needle):
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def test_hub_repo_from_the_offline_cache(tmp_path, hub_env, cli):
    lay_out_hub_cache(tmp_path / "hf", "org/tiny", {**_bundled_files(), **_bundled_files("int8/")})
    out = tmp_path / "a.wav"
    _ok(cli("generate", "x", "--model", "org/tiny", "--duration", "0.2", "-o", out, "--quiet", env=hub_env))
    assert sf.info(str(out)).frames == 6400
    _ok(cli("generate", "x", "--model", "org/tiny", "--precision", "int8", "--revision", "main", "--duration", "0.2",
            "-o", out, "--quiet", env=hub_env))


def test_hub_failures_are_one_line(tmp_path, hub_env, cli):
    args = ["--duration", "0.2", "-o", tmp_path / "a.wav", "--quiet"]
    # no network and nothing cached
    _one_line(cli("generate", "x", "--model", "org/absent", *args, env=hub_env), "not in the local Hugging Face cache")
    snapshot = lay_out_hub_cache(tmp_path / "hf", "org/tiny", _bundled_files())
    # wrong revision
    _one_line(cli("generate", "x", "--model", "org/tiny", "--revision", "v9", *args, env=hub_env), "hub repo 'org/tiny' @ v9")
    # a precision sub-folder the repo does not have
    _one_line(cli("generate", "x", "--model", "org/tiny", "--precision", "int4", *args, env=hub_env), "org/tiny")
    # a corrupt download: the blob behind decoder.onnx changed
    blob = (snapshot / "decoder.onnx").resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    _one_line(cli("generate", "x", "--model", "org/tiny", *args, env=hub_env), "sha256 does not match")
    # a missing file
    (snapshot / "decoder.onnx").unlink()
    _one_line(cli("generate", "x", "--model", "org/tiny", *args, env=hub_env),
              "hub repo 'org/tiny' (offline: HF_HUB_OFFLINE is set) is cached only in part: 'decoder.onnx' is missing")
    assert not (tmp_path / "a.wav").exists()


def test_hub_symlinks_may_only_point_into_their_own_blobs(tmp_path):
    snapshot = lay_out_hub_cache(tmp_path / "hf", "org/tiny", _bundled_files())
    from musicgen_onnx.runtime import MusicGen

    MusicGen.from_pretrained(snapshot, providers="cpu")  # symlinks into ../../blobs: part of the folder
    outside = tmp_path / "elsewhere.json"
    shutil.copy(BUNDLED / "tokenizer.json", outside)
    (snapshot / "tokenizer.json").unlink()
    (snapshot / "tokenizer.json").symlink_to(outside)
    with pytest.raises(ModelFolderError, match="outside the model folder"):
        MusicGen.from_pretrained(snapshot, providers="cpu")


def test_missing_hub_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(ModelFolderError, match=r"needs the 'hub' extra: pip install 'musicgen-onnx\[hub\]'"):
        resolve_model("org/tiny")


def test_names_resolve_to_the_cache_and_never_to_the_bundled_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSICGEN_ONNX_HOME", str(tmp_path / "home"))
    assert cache_home() == tmp_path / "home"
    assert checkpoint_of("melody") == "facebook/musicgen-melody" == checkpoint_of("facebook/musicgen-melody")
    assert checkpoint_of("stereo-melody-large") == "facebook/musicgen-stereo-melody-large"
    with pytest.raises(ModelFolderError, match=r"facebook/musicgen-small \(int8\) is not exported yet; pass "
                                               r"export=True .* run: musicgen-onnx export facebook/musicgen-small"):
        resolve_model("small")
    with pytest.raises(ModelFolderError, match="precision 'int3' is not one of"):
        resolve_model("small", precision="int3")
    with pytest.raises(ModelFolderError, match="model folder 'no-such-thing' does not exist"):
        resolve_model("no-such-thing")
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelFolderError, match="does not exist"):  # a missing folder under one that exists
        resolve_model(str(tmp_path / "models" / "melody-onnx"))
    from musicgen_onnx.runtime import MusicGen

    with pytest.raises(ModelFolderError, match="facebook/musicgen-melody .* is not exported yet"):
        MusicGen.get_pretrained()  # audiocraft's default name, as in audiocraft
    folder = tmp_path / "home" / "facebook--musicgen-small-fp32"
    shutil.copytree(BUNDLED, folder)
    assert resolve_model("small", precision="fp32") == folder


@pytest.mark.export
def test_export_on_demand_then_reuse_and_a_failed_export_leaves_nothing(checkpoint_dir, tmp_path, hub_env, cli):
    ckpt = checkpoint_dir("tiny-text")
    lay_out_hub_cache(tmp_path / "hf", "facebook/musicgen-small", {p.name: p for p in ckpt.iterdir() if p.is_file()})
    fail = ("import sys\nfrom musicgen_onnx.export import folder_manifest\nfrom musicgen_onnx.runtime.errors import ExportError\n"
            "real = folder_manifest.graph_info\n"
            "def graph_info(folder, name, *a):\n"
            "    if name == 'decoder':\n        raise ExportError('injected failure after decoder')\n"
            "    return real(folder, name, *a)\n"
            "folder_manifest.graph_info = graph_info\n"
            "from musicgen_onnx.cli import main\nmain(sys.argv[1:])")
    args = ["generate", "x", "--model", "small", "--precision", "fp32", "--duration", "0.2", "--quiet"]
    r = subprocess.run([sys.executable, "-c", fail, *args, "--export", "-o", str(tmp_path / "f.wav")],
                       capture_output=True, text=True, env=hub_env)
    assert r.returncode == 2 and "injected failure" in r.stderr, r.stderr
    home = tmp_path / "home"
    assert not list(home.glob("*/musicgen_onnx.json")) and not [p for p in home.iterdir() if not p.name.startswith(".")]
    _one_line(cli(*args, "-o", tmp_path / "a.wav", env=hub_env), "is not exported yet")
    _ok(cli(*args, "--export", "-o", tmp_path / "a.wav", env=hub_env))
    assert (home / "facebook--musicgen-small-fp32" / "musicgen_onnx.json").is_file()
    _ok(cli(*args, "-o", tmp_path / "b.wav", env=hub_env))  # reused: no --export needed


def test_a_hub_manifest_linking_out_of_its_blobs_is_refused(tmp_path):
    """Issue 24 item 12: the manifest is read through the same confinement as graphs and tokenizer."""
    snapshot = lay_out_hub_cache(tmp_path / "hf", "org/tiny", _bundled_files())
    outside = tmp_path / "elsewhere.json"
    shutil.copy(BUNDLED / MANIFEST_NAME, outside)
    (snapshot / MANIFEST_NAME).unlink()
    (snapshot / MANIFEST_NAME).symlink_to(outside)
    with pytest.raises(ModelFolderError, match=f"{MANIFEST_NAME}.*outside the model folder"):
        load_manifest(snapshot)


def _invoke(*args, **env):
    """The CLI in-process (click's CliRunner): exit code, stdout and stderr apart."""
    from click.testing import CliRunner

    from musicgen_onnx.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def test_a_missing_folder_that_reads_as_a_hub_id_names_both_readings_fast_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # models/tiny-melody exists in the repo, not here
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    r = _invoke("generate", "x", "--model", "models/tiny-melody", "--quiet")
    assert time.perf_counter() - t0 < 1.0
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert (f"error: model 'models/tiny-melody': no folder 'models/tiny-melody' under the current directory "
            f"({tmp_path}), and hub repo 'models/tiny-melody' is not in the local Hugging Face cache "
            f"(offline: HF_HUB_OFFLINE is set)") in r.stderr


def test_an_unreachable_hub_is_not_waited_for(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE, and a hub that never answers: the probe gives up within PROBE_SECONDS and the
    cache is read alone (a cached repo still loads)."""
    from musicgen_onnx.runtime import hub

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    for var in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    def hang(*args, **kwargs):  # a SYN that nobody answers, until the socket's own timeout
        time.sleep(3)
        raise OSError("timed out")

    monkeypatch.setattr(hub.socket, "create_connection", hang)
    t0 = time.perf_counter()
    with pytest.raises(ModelFolderError, match=r"no folder 'org/absent' under the current directory .* not in the "
                                               r"local Hugging Face cache \(the hub cannot be reached: no answer from "
                                               r"huggingface.co:443 within 0.8 s\)"):
        resolve_model("org/absent")
    assert time.perf_counter() - t0 < 1.5
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    lay_out_hub_cache(tmp_path / "hf", "org/tiny", _bundled_files())
    t0 = time.perf_counter()  # huggingface_hub's own calls, local_files_only or not, would wait for it here
    assert (resolve_model("org/tiny") / "musicgen_onnx.json").is_file()
    assert time.perf_counter() - t0 < 1.5


def test_an_empty_model_name_is_refused_not_read_as_the_current_directory(tmp_path, monkeypatch):
    from musicgen_onnx.runtime import InvalidInputError, MusicGen

    monkeypatch.chdir(tmp_path)
    for name in ("", "  "):
        with pytest.raises(InvalidInputError, match="the model is empty"):
            resolve_model(name)
        with pytest.raises(InvalidInputError, match="the model is empty"):
            MusicGen.from_pretrained(name)
    sf.write(tmp_path / "song.wav", [[0.1, -0.1]] * 4410, 44100)
    for args in (("info", ""), ("generate", "x", "--model", "", "-o", tmp_path / "a.wav"),
                 ("stems", tmp_path / "song.wav", "--model", "", "--out-dir", tmp_path / "s")):
        r = _invoke(*args)
        assert r.exit_code == 2 and "error: the model is empty ('')" in r.output, (args, r.output)


def test_the_bundled_models_have_names(tmp_path, monkeypatch):
    from musicgen_onnx.runtime import MusicGen
    from musicgen_onnx.runtime.hub import BUNDLED_MODELS, BUNDLED_NAME

    monkeypatch.chdir(tmp_path)
    assert BUNDLED_NAME == "tiny-melody" and resolve_model("tiny-melody") == BUNDLED_MODELS["tiny-melody"]
    assert resolve_model("tiny-melody").resolve() == BUNDLED.resolve()
    assert MusicGen.get_pretrained("tiny-melody").name == "tiny-melody"
    (tmp_path / "tiny-melody").mkdir()  # a folder of that name here wins, as any folder does
    assert resolve_model("tiny-melody") == Path("tiny-melody")
    monkeypatch.chdir(tmp_path.parent)
    info = _invoke("info", "--no-hash")  # no argument: the bundled model, like generate and serve
    assert info.exit_code == 0 and f"model folder   {BUNDLED_MODELS['tiny-melody']}" in info.stdout, info.output
    named = _invoke("info", "tiny-melody", "--no-hash")
    assert named.exit_code == 0 and named.stdout == info.stdout
    stems = _invoke("info", "tiny-stems", "--no-hash")
    assert stems.exit_code == 0 and "stems folder" in stems.stdout, stems.output
    out = tmp_path / "a.wav"
    r = _invoke("generate", "x", "--model", "tiny-melody", "--duration", "0.2", "-o", out, "--quiet")
    assert r.exit_code == 0 and sf.info(str(out)).frames == 6400, r.output
    sf.write(tmp_path / "song.wav", [[0.1, -0.1]] * 44100, 44100)
    r = _invoke("stems", tmp_path / "song.wav", "--model", "tiny-stems", "--out-dir", tmp_path / "s", "--quiet")
    assert r.exit_code == 0 and len(list((tmp_path / "s").glob("*.wav"))) == 4, r.output


def test_serve_offers_the_export_it_asks_for(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSICGEN_ONNX_HOME", str(tmp_path / "home"))
    r = _invoke("serve", "--model", "melody")
    assert r.exit_code == 2 and "is not exported yet; pass export=True (CLI: --export" in r.stderr, r.output
    # click wraps the help at any word and after a hyphen: read it unwrapped
    help_text = " ".join(_invoke("serve", "--help").stdout.split()).replace("- ", "-")
    assert "--export" in help_text and "audiocraft name" in help_text and "tiny-melody" in help_text
    assert "--model PATH" not in help_text


def test_a_name_with_a_trailing_newline_is_not_a_hub_repo_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFolderError, match=r"model folder 'org/x\\n' does not exist"):
        resolve_model("org/x\n")
