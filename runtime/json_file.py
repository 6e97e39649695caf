"""The one reader of a model folder's JSON files (manifest, config, tokenizer): they are untrusted, so
a read is bounded in bytes and every failure is one line naming the file."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from .errors import ModelFolderError


def read_json_file(path: str | os.PathLike, max_bytes: int, what: str) -> Any:
    """The parsed JSON of ``path``, read up to ``max_bytes`` (a FIFO or device would block or never end,
    a huge file would be held several times over by ``json``), or ModelFolderError "unreadable ``what``"."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError("not a regular file")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise ValueError(f"larger than {max_bytes >> 20} MiB")
        return json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, 5000-digit numbers
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ModelFolderError(f"{path}: unreadable {what} ({reason})") from None
