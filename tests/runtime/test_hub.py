"""Models by name: hub repos through a real Hugging Face cache layout (no network), audiocraft names,
export on demand. Each failure is one line (exit 2 in the CLI)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from musicgen_onnx.runtime import ModelFolderError
from musicgen_onnx.runtime.hub import cache_home, checkpoint_of, resolve_model

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
    _one_line(cli("generate", "x", "--model", "org/tiny", *args, env=hub_env), "'decoder.onnx' is missing")
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
    fail = ("import sys; from musicgen_onnx.export import exporter; real = exporter.export; "
            "exporter.export = lambda *a, **k: real(*a, _fail_after='decoder', **k); "
            "from musicgen_onnx.cli import main; main(sys.argv[1:])")
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
