"""``GET /openapi.json``: the API described by hand (OpenAPI 3.1), kept next to the rules it states."""

from __future__ import annotations

from ..runtime.audio import STRATEGIES
from .params import FORMATS
from .settings import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, ServeSettings


def openapi_spec(settings: ServeSettings) -> dict:
    number = {"type": "number"}
    options = {
        "prompt": {"type": ["string", "null"], "maxLength": 4096, "description": "Text prompt; null: none."},
        "duration": {**number, "exclusiveMinimum": 0, "maximum": settings.max_duration,
                     "description": "Seconds of audio (continue: total length, prompt included)."},
        "seed": {"type": ["integer", "null"], "minimum": 0,
                 "description": "Per-request seed; random when absent and returned in X-Seed. Same seed, same "
                                "audio, whatever the batch the request joins."},
        "top_k": {"type": "integer", "minimum": 1}, "top_p": {**number, "minimum": 0, "maximum": 1},
        "temperature": {**number, "minimum": 0.001, "maximum": 100},
        "guidance": {**number, "minimum": 0, "maximum": 100, "description": "Classifier-free guidance scale."},
        "greedy": {"type": "boolean"},
        "format": {"enum": list(FORMATS), "default": "wav"},
        "normalize": {"enum": list(STRATEGIES), "default": "loudness (none when streaming)"},
        "stream": {"type": "boolean", "description": "16-bit WAV with unknown length, sent while it is generated "
                                                     "(format wav, normalize none)."},
    }
    json_body = {"type": "object", "additionalProperties": False, "properties": options}
    audio_out = {"content": {f"audio/{f}": {"schema": {"type": "string", "format": "binary"}} for f in FORMATS},
                 "headers": {"X-Seed": {"schema": {"type": "integer"}},
                             "X-Batch-Size": {"schema": {"type": "integer"},
                                              "description": "Rows in the generate() call that made it."}}}
    err = {"content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}
    errors = {"400": {"description": "Bad JSON, unknown field, value out of range, corrupt upload.", **err},
              "413": {"description": f"Body over {MAX_JSON_BYTES} bytes (JSON) or {MAX_UPLOAD_BYTES} (multipart).",
                      **err},
              "415": {"description": "Neither JSON nor multipart.", **err},
              "503": {"description": "Queue full or shutting down; see Retry-After.", **err}}

    def multipart(file_field: str, what: str, required: bool) -> dict:
        props = {**options, file_field: {"type": "string", "format": "binary", "description": what}}
        return {"schema": {"type": "object", "properties": props, "required": [file_field] if required else []}}

    def text(desc):
        return {"200": {"description": desc, "content": {"text/plain": {"schema": {"type": "string"}}}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "musicgen-onnx", "version": "1",
                 "description": "MusicGen without PyTorch: text (and melody) to music, batched per request."},
        "paths": {
            "/v1/generate": {"post": {
                "summary": "Generate audio from a prompt (multipart: with a melody file).",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": json_body},
                    "multipart/form-data": multipart("melody", "Melody recording (wav, flac, ogg, mp3...)", False)}},
                "responses": {"200": {"description": "The audio file.", **audio_out}, **errors}}},
            "/v1/continue": {"post": {
                "summary": "Continue an audio prompt; the output includes it.",
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": multipart("audio", "Audio to continue (shorter than the model window)",
                                                     True)}},
                "responses": {"200": {"description": "The audio file.", **audio_out}, **errors}}},
            "/v1/model": {"get": {"summary": "The model's facts and the server's limits.",
                                  "responses": {"200": {"description": "JSON facts."}}}},
            "/health": {"get": {"summary": "Liveness and queue length.", "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus text: requests, queue length, batch sizes, steps/s.",
                                 "responses": text("Prometheus exposition format.")}},
            "/": {"get": {"summary": "The web page.", "responses": {"200": {"description": "HTML."}}}},
        },
    }
