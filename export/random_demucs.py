"""Random-weight HTDemucs models with the released architecture (or a tiny one of the same structure),
saved as demucs publishes them: the stems fixtures of the tests, the benchmarks and the bundled
``models/tiny-stems`` (Demucs weights cannot be downloaded on the project's machines).

    python -m musicgen_onnx.export.random_demucs [OUT_DIR]   # rebuild models/tiny-stems

The Demucs counterpart of :mod:`.random_checkpoints`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ..runtime.manifest import STEMS_MANIFEST_NAME, StemsManifest
from .stems import export_stems_folder


def save_hub_folder(model, folder: Path, name: str = "htdemucs", signature: str = "955717e8") -> Path:
    """Save ``model`` as demucs 4.1 publishes on the Hugging Face hub (``tools/export_hf.py``): the bag
    yaml and ``SIG.safetensors`` with class, args and kwargs (fractions encoded) in its metadata."""
    from fractions import Fraction

    from safetensors.torch import save_file

    def encode(value):
        if isinstance(value, Fraction):
            return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
        if isinstance(value, dict):
            return {k: encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        return value

    args, kwargs = model._init_args_kwargs
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(f"models: ['{signature}']\n")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / f"{signature}.safetensors"),
              metadata={"klass": f"{type(model).__module__}.{type(model).__name__}",
                        "args": json.dumps(encode(list(args))), "kwargs": json.dumps(encode(kwargs))})
    return folder


# The released htdemucs (signature 955717e8, demucs/remote/htdemucs.yaml): its init kwargs as stored with
# its weights. Weights cannot be downloaded here; benchmarks build this architecture with random weights.
HTDEMUCS_KWARGS = dict(
    sources=["drums", "bass", "other", "vocals"], audio_channels=2, samplerate=44100, segment=(39, 5),
    channels=48, channels_time=None, growth=2, nfft=4096, wiener_iters=0, end_iters=0, wiener_residual=False,
    cac=True, depth=4, rewrite=True, multi_freqs=[], multi_freqs_depth=3, freq_emb=0.2, emb_scale=10,
    emb_smooth=True, kernel_size=8, stride=4, time_stride=2, context=1, context_enc=0, norm_starts=4,
    norm_groups=4, dconv_mode=3, dconv_depth=2, dconv_comp=8, dconv_init=0.001, bottom_channels=512, t_layers=5,
    t_hidden_scale=4.0, t_heads=8, t_dropout=0.02, t_layer_scale=True, t_gelu=True, t_emb="sin",
    t_max_positions=10000, t_max_period=10000.0, t_weight_pos_embed=1.0, t_cape_mean_normalize=True,
    t_cape_augment=True, t_cape_glob_loc_scale=[5000.0, 1.0, 1.4], t_sin_random_shift=0, t_norm_in=True,
    t_norm_in_group=False, t_group_norm=False, t_norm_first=True, t_norm_out=True, t_weight_decay=0.0, t_lr=None,
    t_sparse_self_attn=False, t_sparse_cross_attn=False, t_mask_type="diag", t_mask_random_seed=42,
    t_sparse_attn_window=400, t_global_window=100, t_sparsity=0.95, t_auto_sparsity=False, t_cross_first=False,
    rescale=0.1)
# A tiny HTDemucs of the same structure for tests and the bundled stems model: nfft 256 (hop 64 = 4**3,
# so depth 3 brings the frequency branch to one bin), bottom channels, a one-layer cross-transformer, 0.25 s segments.
TINY_KWARGS = {**HTDEMUCS_KWARGS, "channels": 4, "depth": 3, "nfft": 256, "dconv_comp": 2, "norm_starts": 2,
               "bottom_channels": 8, "t_layers": 1, "t_heads": 2, "t_hidden_scale": 1.0, "segment": (1, 4)}
ARCHITECTURES = {"htdemucs": HTDEMUCS_KWARGS, "tiny": TINY_KWARGS}


def random_htdemucs(arch: str = "htdemucs", seed: int = 0):
    """An HTDemucs of a known architecture with random weights (demucs's own init), in eval mode."""
    from fractions import Fraction

    from demucs.htdemucs import HTDemucs

    kwargs = dict(ARCHITECTURES[arch])
    kwargs["segment"] = Fraction(*kwargs["segment"])
    torch.manual_seed(seed)
    return HTDemucs(**kwargs).eval()


BUNDLED = Path(__file__).resolve().parent.parent / "models" / "tiny-stems"


def build_bundled(out_dir: str | os.PathLike = BUNDLED, seed: int = 0, progress=print) -> Path:
    """The committed tiny stems folder (``musicgen-onnx stems`` without --model): :data:`TINY_KWARGS`,
    random weights (seed 0), saved in the hub layout and exported from it, as a user's htdemucs would be."""
    with tempfile.TemporaryDirectory() as tmp:
        hub = save_hub_folder(random_htdemucs("tiny", seed), Path(tmp) / "tiny-htdemucs", name="tiny-htdemucs")
        out = export_stems_folder(str(hub), out_dir, force=True, progress=progress)
    manifest = json.loads((out / STEMS_MANIFEST_NAME).read_text())
    manifest["source"]["demucs"] = f"random-weight tiny HTDemucs (musicgen_onnx/export/random_demucs.py TINY_KWARGS, seed {seed})"
    (out / STEMS_MANIFEST_NAME).write_text(StemsManifest.from_dict(manifest).to_json(), encoding="utf-8")
    return out


if __name__ == "__main__":
    import sys

    print(build_bundled(Path(sys.argv[1]) if len(sys.argv) > 1 else BUNDLED))
