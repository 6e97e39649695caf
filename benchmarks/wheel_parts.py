"""Split a file (the onnxruntime-gpu wheel, 255.6 MB) into parts that fit what one device run may carry,
and join them back there, checking each part's and the whole file's sha256.

The GPU machine has no network and takes at most 64 MiB per run, so a wheel arrives over several runs:
``split`` here writes ``NAME.partNN`` files of at most ``--max-mib`` (38 by default, leaving room for the
repository itself) and ``NAME.parts.json`` (sizes and hashes); ``join`` there checks and reassembles.

    python -m musicgen_onnx.benchmarks.wheel_parts split WHEEL OUT_DIR
    python -m musicgen_onnx.benchmarks.wheel_parts join OUT_DIR/NAME.parts.json DEST_DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

MAX_MIB = 38
CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def split(path: Path, out_dir: Path, max_mib: int = MAX_MIB) -> Path:
    """Write the parts and their index; returns the index file."""
    if max_mib < 1:
        raise ValueError(f"max_mib must be at least 1, got {max_mib}")
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = max_mib << 20
    parts = []
    with open(path, "rb") as f:
        while block := f.read(limit):
            part = out_dir / f"{path.name}.part{len(parts):02d}"
            part.write_bytes(block)
            parts.append({"file": part.name, "size": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    index = out_dir / f"{path.name}.parts.json"
    index.write_text(json.dumps({"name": path.name, "size": path.stat().st_size, "sha256": _sha256(path),
                                 "parts": parts}, indent=2) + "\n")
    return index


def join(index: Path, dest_dir: Path) -> Path:
    """Check every part, write the whole file atomically, check it; returns its path."""
    meta = json.loads(index.read_text())
    name = Path(meta["name"]).name  # never a path out of dest_dir
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / name
    tmp = dest_dir / f".{name}.partial"
    with open(tmp, "wb") as w:
        for part in meta["parts"]:
            data = (index.parent / Path(part["file"]).name).read_bytes()
            if len(data) != part["size"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
                tmp.unlink()
                raise ValueError(f"{part['file']}: size or sha256 differs from {index.name}; bring it again")
            w.write(data)
    if _sha256(tmp) != meta["sha256"]:
        tmp.unlink()
        raise ValueError(f"{name}: the joined file's sha256 differs from {index.name}")
    os.replace(tmp, out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="FILE OUT_DIR: write the parts and NAME.parts.json")
    s.add_argument("file", type=Path)
    s.add_argument("out_dir", type=Path)
    s.add_argument("--max-mib", type=int, default=MAX_MIB)
    j = sub.add_parser("join", help="INDEX DEST_DIR: check the parts and write the whole file")
    j.add_argument("index", type=Path)
    j.add_argument("dest_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            print(split(args.file, args.out_dir, args.max_mib))
        else:
            print(join(args.index, args.dest_dir))
    except (OSError, ValueError, KeyError) as exc:
        print(f"wheel_parts: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
