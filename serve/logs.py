"""The server's logging: uvicorn's loggers and the app's own (``musicgen_onnx.*``: batches, dropped
streams, drains) through one handler, as text or one JSON object per line.

Why: with uvicorn's default configuration the app's info lines had no handler and were dropped, and a
log collector wants fields (time, level, logger, request id), not a sentence to parse.
"""

from __future__ import annotations

import json
import logging
import time

from .access import REQUEST_ID

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; an exception becomes its one-line summary (``error``), never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        rid = REQUEST_ID.get()
        if rid is not None:
            out["request_id"] = rid
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["error"] = f"{type(exc).__name__}: {exc}"
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = REQUEST_ID.get()
        return line if rid is None else f"{line} [request {rid}]"


class DroppedStreamFilter(logging.Filter):
    """uvicorn's "returned without completing response" line is what a dropped stream looks like from
    uvicorn's side; serve/streaming.py already logged why, so the event stays one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("uvicorn") and record.msg == "ASGI callable returned without completing "
                                                                         "response.")


def log_config(fmt: str, level: str = "info") -> dict:
    """A ``logging.config.dictConfig`` for uvicorn's ``log_config``: every logger the server writes to."""
    formatter = {"()": JsonFormatter} if fmt == "json" else {"()": TextFormatter}
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr",
               "filters": ["dropped_stream"]}
    loggers = {name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
               for name in ("uvicorn", "uvicorn.access", "musicgen_onnx", "asyncio", "python_multipart")}
    loggers["uvicorn.error"] = {"level": level.upper()}  # propagates to "uvicorn"
    return {"version": 1, "disable_existing_loggers": False, "formatters": {"default": formatter},
            "filters": {"dropped_stream": {"()": DroppedStreamFilter}},
            "handlers": {"default": handler}, "loggers": loggers}
