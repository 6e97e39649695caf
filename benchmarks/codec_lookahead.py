"""Measure a model folder's codec look-ahead and, with ``--write``, record it in its manifest.

    python -m musicgen_onnx.benchmarks.codec_lookahead FOLDER [FOLDER...]           # print each
    python -m musicgen_onnx.benchmarks.codec_lookahead --write FOLDER [FOLDER...]   # and record it

Folders exported before export measured it stream with 8 frames of look-ahead; the graphs need not be
re-exported to get the measured value, since the manifest is not hashed. The measurement is the
exporter's (``runtime/lookahead.py``), on the folder's own ``audio_decoder`` graph; torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..runtime.errors import MusicGenError
from ..runtime.lookahead import folder_lookahead
from ..runtime.manifest import MANIFEST_NAME, MAX_CODEC_LOOKAHEAD, Manifest, load_manifest
from ..runtime.session import SessionSettings


def record(folder: str | os.PathLike, lookahead: int) -> None:
    """Write ``codec_lookahead`` into the folder's manifest, formatted as the exporter writes it, through a
    temporary file renamed into place; what is written must load."""
    path = Path(folder) / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    data["codec_lookahead"] = lookahead
    Manifest.from_dict(data, where=str(path))
    tmp = path.with_name(f".{MANIFEST_NAME}.partial")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--write", action="store_true", help="record the measured value in each manifest")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    settings = SessionSettings(threads=args.threads)
    failed = []
    for folder in args.folders:  # each folder on its own: one that fails is named, the others still done
        try:
            manifest = load_manifest(folder)
            found = folder_lookahead(folder, manifest, settings)
            if found is None:
                raise MusicGenError(f"look-ahead not within {MAX_CODEC_LOOKAHEAD} frames")
            print(f"{folder}: codec_lookahead {found} (manifest: {manifest.codec_lookahead})")
            if args.write:
                record(folder, found)
        except (MusicGenError, OSError, ValueError) as exc:
            print(f"{folder}: error: {exc}")
            failed.append(folder)
    if failed:
        raise SystemExit(f"{len(failed)} of {len(args.folders)} folder(s) failed")


if __name__ == "__main__":
    main()
