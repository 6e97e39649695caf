"""Carry full-size folders to the GPU machine without their weights, and give them random ones there.

    python -m musicgen_onnx.benchmarks.weightless strip FOLDER DEST   # here: graphs + a list of the tensors
    python -m musicgen_onnx.benchmarks.weightless fill DEST           # there: random weights, manifest rehashed

The GPU machine takes at most 64 MiB per run and has no time to export (melody fp16 took 254 s of a
~15-minute budget), but a graph without its weights is small. ``strip`` copies a model folder with
every initializer of at least onnx's external-data threshold moved out of its graph, and no data file:
in their place ``weightless.json`` lists each data file's tensors (name, dtype, shape, offset, length),
and ``weightless.kept`` holds the bytes of the small non-float tensors (index tables, masks), whose
values a graph may rely on. Inline graphs (the tiny ones) are rewritten to external data the same
way, so one test proves the round trip. ``fill`` needs only numpy (not ``onnx``): it writes each data
file with random values of each tensor's shape and dtype, of variance 1/fan-in so the logits stay
finite, puts the kept bytes back, and rewrites the manifest's sizes and sha256 of the graphs it
touched, so the filled folder loads with its hash checks on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ..runtime.manifest import MANIFEST_NAME, sha256_file

LIST = "weightless.json"
KEPT = "weightless.kept"
KEEP_MAX = 1 << 20  # non-float tensors up to this size keep their real bytes (larger ones: quantised weights)
FLOAT_KINDS = "f"


def strip(folder: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Write ``dest``: ``folder`` without weights (see the module docstring); returns the tensor list."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    from ..export.external_data import SIZE_THRESHOLD, file_regions, tensors

    folder, dest = Path(folder), Path(dest)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    data_files = {rel for info in manifest["graphs"].values() for rel in info["files"] if rel != info["file"]}
    dest.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.is_file() and path.name not in data_files and path.suffix != ".onnx":
            shutil.copyfile(path, dest / path.name)
    listing: dict = {"files": {}}
    kept = bytearray()
    for name, info in manifest["graphs"].items():
        model = onnx.load(str(folder / info["file"]), load_external_data=False)
        regions = file_regions(model, folder)
        data_name = info["file"] + ".data"
        entries, offset = [], 0
        for t in tensors(model.graph):
            external = uses_external_data(t)
            if not external and (not t.HasField("raw_data") or len(t.raw_data) < SIZE_THRESHOLD):
                continue
            raw = regions[t.name].read() if external else t.raw_data
            if external and ExternalDataInfo(t).location != data_name:
                raise SystemExit(f"{folder / info['file']}: tensor {t.name} is in "
                                 f"{ExternalDataInfo(t).location!r}, not {data_name!r}")
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
            entry = dict(name=t.name, dtype=np.dtype(dtype).name, shape=list(t.dims), offset=offset, length=len(raw))
            if np.dtype(dtype).kind not in FLOAT_KINDS and len(raw) <= KEEP_MAX:
                entry["kept"] = len(kept)
                kept += raw
            entries.append(entry)
            t.ClearField("raw_data")
            del t.external_data[:]
            for key, value in (("location", data_name), ("offset", offset), ("length", len(raw))):
                t.external_data.add(key=key, value=str(value))
            t.data_location = onnx.TensorProto.EXTERNAL
            offset += len(raw)
        onnx.save_model(model, str(dest / info["file"]))
        info["files"] = {info["file"]: sha256_file(dest / info["file"])}
        info["size_bytes"] = (dest / info["file"]).stat().st_size
        if entries:
            listing["files"][data_name] = dict(graph=name, size=offset, tensors=entries)
            info["files"][data_name] = "0" * 64  # until fill writes the file
            info["size_bytes"] += offset
    (dest / KEPT).write_bytes(bytes(kept))
    _write_json(dest / LIST, listing)
    _write_json(dest / MANIFEST_NAME, manifest)
    return listing


def fill(folder: str | os.PathLike, seed: int = 0) -> int:
    """Write the data files ``strip`` listed, with random weights, and rehash them in the manifest;
    returns the bytes written."""
    folder = Path(folder)
    listing = json.loads((folder / LIST).read_text())
    kept = (folder / KEPT).read_bytes()
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    rng = np.random.default_rng(seed)
    written = 0
    for data_name, spec in listing["files"].items():
        tmp = folder / f".{data_name}.writing"
        with open(tmp, "wb") as f:
            for t in spec["tensors"]:
                f.seek(t["offset"])
                if "kept" in t:
                    f.write(kept[t["kept"]:t["kept"] + t["length"]])
                else:
                    f.write(_random(rng, np.dtype(t["dtype"]), tuple(t["shape"])).tobytes())
            f.truncate(spec["size"])
        os.replace(tmp, folder / data_name)
        written += spec["size"]
        manifest["graphs"][spec["graph"]]["files"][data_name] = sha256_file(folder / data_name)
    _write_json(folder / MANIFEST_NAME, manifest)
    return written


def _random(rng, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if dtype.kind in FLOAT_KINDS:  # uniform, variance 1/fan-in: 0.6x the time of a normal draw
        half = np.float32(np.sqrt(3.0 / max(shape[0] if len(shape) >= 2 else 1, 1)))
        values = rng.random(shape, dtype=np.float32)
        values *= 2 * half
        values -= half
        return values.astype(dtype, copy=False)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(-8, 8, shape).astype(dtype)  # quantised weights; small ints fit every integer type


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.writing")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def folder_bytes(folder: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("strip", help="copy FOLDER to DEST without weights")
    s.add_argument("folder")
    s.add_argument("dest")
    f = sub.add_parser("fill", help="give a stripped folder random weights")
    f.add_argument("folder")
    f.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.command == "strip":
        listing = strip(args.folder, args.dest)
        n = sum(len(spec["tensors"]) for spec in listing["files"].values())
        print(f"{args.dest}: {folder_bytes(args.dest)} bytes, {n} tensors to fill "
              f"({sum(spec['size'] for spec in listing['files'].values())} bytes)")
    else:
        print(f"{args.folder}: {fill(args.folder, args.seed)} bytes of random weights written")


if __name__ == "__main__":
    sys.exit(main())
