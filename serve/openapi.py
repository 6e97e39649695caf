"""``GET /openapi.json``: the API described by hand (OpenAPI 3.1), kept next to the rules it states."""

from __future__ import annotations

from ..runtime.audio import STRATEGIES
from .access import OPEN_PATHS
from .params import FORMATS
from .settings import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, ServeSettings


def openapi_spec(settings: ServeSettings) -> dict:
    number = {"type": "number"}
    request_id = {"X-Request-ID": {"schema": {"type": "string"}, "description": "The request's id (the client's "
                                                                              "if it sent one), as in the log."}}
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
        "normalize": {"enum": list(STRATEGIES), "default": "loudness",
                      "description": "Loudness normalisation of the finished clip; a stream must send none."},
        "stream": {"type": "boolean", "description": "16-bit WAV with unknown length, sent while it is generated "
                                                     "(format wav, normalize none)."},
    }
    def multipart(file_field: str, what: str, required: bool) -> dict:
        props = {**options, file_field: {"type": "string", "format": "binary", "description": what}}
        return {"type": "object", "properties": props, "required": [file_field] if required else []}

    schemas = {
        "GenerateOptions": {"type": "object", "additionalProperties": False, "properties": options},
        "GenerateUpload": multipart("melody", "Melody recording (wav, flac, ogg, mp3...)", False),
        "ContinueUpload": multipart("audio", "Audio to continue (shorter than the model window)", True),
        "Error": {"type": "object", "required": ["error"], "additionalProperties": False,
                  "properties": {"error": {"type": "string", "description": "One line saying what to change."}}},
        "ModelInfo": {"type": "object", "properties": {  # runtime.layouts.describe() + this server's facts
            "checkpoint": {"type": ["string", "null"]}, "revision": {"type": ["string", "null"]},
            "source_format": {"type": ["string", "null"]}, "layout": {"type": "string"},
            "variant": {"type": ["string", "null"]}, "family": {"type": "string"}, "melody": {"type": "boolean"},
            "sample_rate": {"type": "integer"}, "channels": {"type": "integer"}, "frame_rate": number,
            "window_s": number, "codebooks": {"type": "integer"}, "codebook_size": {"type": "integer"},
            "precision": {"type": "string"}, "kv_cache": {"type": "string"}, "kv_dtype": {"type": ["string", "null"]},
            "can_continue": {"type": "boolean"},
            "decoder": {"type": "object", "description": "layers, heads, hidden_size, delays"},
            "chroma": {"type": ["object", "null"], "description": "n_fft, hop_length, bins, frames (melody models)"},
            "stems": {"type": ["object", "null"], "description": "the Demucs model melodies are separated with"},
            "melody_stems": {"type": ["string", "null"], "description": "the stems graph melodies go through: "
                             "stems_fast (int8, the fast tier) or stems (exact fp32)"},
            "defaults": {"type": "object", "additionalProperties": {"type": ["number", "boolean"]}},
            "graphs": {"type": "object", "additionalProperties": {"type": "object"}},
            "lacks": {"type": "array", "items": {"type": "string"}},
            "providers": {"type": "array", "items": {"type": "string"}},
            "limits": {"type": "object", "additionalProperties": number}}},
        "Health": {"type": "object", "required": ["status", "draining", "queue", "pid"], "properties": {
            "status": {"enum": ["ok", "live", "ready", "draining"]},
            "draining": {"type": "boolean", "description": "SIGTERM came: queued work finishes, new work gets 503."},
            "queue": {"type": "integer"}, "pid": {"type": "integer"}}},
    }

    def ref(name: str) -> dict:
        return {"$ref": f"#/components/schemas/{name}"}

    audio_out = {"content": {f"audio/{f}": {"schema": {"type": "string", "format": "binary"}} for f in FORMATS},
                 "headers": {"X-Seed": {"schema": {"type": "integer"}},
                             "X-Batch-Size": {"schema": {"type": "integer"},
                                              "description": "Rows in the generate() call that made it."},
                             **request_id}}
    err = {"content": {"application/json": {"schema": ref("Error")}}, "headers": request_id}
    errors = {"400": {"description": "Bad JSON or form, unknown field, value out of range, corrupt upload.", **err},
              "401": {"description": "Missing or wrong API key (when the server has one).", **err},
              "408": {"description": "The request body took too long to arrive.", **err},
              "413": {"description": f"Body over {MAX_JSON_BYTES} bytes (JSON) or {MAX_UPLOAD_BYTES} (multipart).",
                      **err},
              "415": {"description": "Neither JSON nor multipart.", **err},
              "500": {"description": "A server fault (logged); the request may be retried.", **err},
              "503": {"description": "Queue full, too many connections or shutting down; see Retry-After.", **err}}

    def health(summary: str, op: str, not_ready: bool = False) -> dict:
        responses = {"200": {"description": summary, "content": {"application/json": {"schema": ref("Health")}}}}
        if not_ready:
            responses["503"] = {"description": "Draining: send new work elsewhere.",
                                "content": {"application/json": {"schema": ref("Health")}}}
        return {"get": {"summary": summary, "operationId": op, "responses": responses}}

    def text(desc):
        return {"200": {"description": desc, "content": {"text/plain": {"schema": {"type": "string"}}}}}

    spec = {
        "openapi": "3.1.0",
        "info": {"title": "musicgen-onnx", "version": "1",
                 "description": "MusicGen without PyTorch: text (and melody) to music, batched per request."},
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/generate": {"post": {
                "summary": "Generate audio from a prompt (multipart: with a melody file).", "operationId": "generate",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": ref("GenerateOptions")},
                    "multipart/form-data": {"schema": ref("GenerateUpload")}}},
                "responses": {"200": {"description": "The audio file.", **audio_out}, **errors}}},
            "/v1/continue": {"post": {
                "summary": "Continue an audio prompt; the output includes it.", "operationId": "continueAudio",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": ref("ContinueUpload")}}},
                "responses": {"200": {"description": "The audio file.", **audio_out}, **errors}}},
            "/v1/model": {"get": {"summary": "The model's facts and the server's limits.", "operationId": "modelInfo",
                                  "responses": {"200": {"description": "JSON facts.", "content": {
                                      "application/json": {"schema": ref("ModelInfo")}}},
                                      "401": errors["401"]}}},
            "/health": health("Up (200 while the process answers, draining included).", "health"),
            "/health/live": health("Liveness: the process answers.", "healthLive"),
            "/health/ready": health("Readiness: takes new work (503 while draining).", "healthReady", True),
            "/metrics": {"get": {"summary": "Prometheus text: requests, queue length, batch sizes, steps/s.",
                                 "operationId": "metrics", "responses": {**text("Prometheus exposition format."),
                                                                         "401": errors["401"]}}},
            "/v1/results/{result_id}": {"get": {
                "summary": "A streamed request's finished file, normalised as a non-streamed response.",
                "operationId": "keptResult",
                "parameters": [{"name": "result_id", "in": "path", "required": True, "schema": {"type": "string"},
                                "description": "The stream's X-Result-Id header."}],
                "responses": {"200": {"description": "The audio file.",
                                      "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}},
                              "401": errors["401"], "404": {"description": "Unknown or expired id.", **err}}}},
            "/v1/stems": {
                "get": {"summary": "The stems model's sources and limits.", "operationId": "stemsInfo",
                        "responses": {"200": {"description": "Sources and limits.",
                                              "content": {"application/json": {"schema": {"type": "object"}}}},
                                      "401": errors["401"], "404": {"description": "No stems model.", **err}}},
                "post": {"summary": "Separate an uploaded song into its stems (the stems command's separation).",
                         "operationId": "stems",
                         "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                             "type": "object", "required": ["audio"], "properties": {
                                 "audio": {"type": "string", "format": "binary"}, "seed": {"type": "integer"}}}}}},
                         "responses": {"200": {"description": "{sources, sample_rate, seconds, stems: {name: base64 "
                                                              "16-bit WAV}}",
                                               "content": {"application/json": {"schema": {"type": "object"}}}},
                                       **{k: errors[k] for k in ("400", "401", "408", "413", "415", "500")},
                                       "404": {"description": "No stems model.", **err},
                                       "503": {"description": "Separations already running or waiting (4); "
                                                              "see Retry-After.", **err}}}},
            "/v1/chroma": {"post": {
                "summary": "The melody's chroma as the model sees it (winning pitch class per frame).",
                "operationId": "chroma",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["melody"],
                    "properties": {"melody": {"type": "string", "format": "binary"}}}}}},
                "responses": {"200": {"description": "{notes, frame_rate, bins}",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              **{k: errors[k] for k in ("400", "401", "408", "413", "415", "500")},
                              "404": {"description": "A text-only model.", **err}}}},
            "/": {"get": {"summary": "The web page.", "operationId": "page",
                          "responses": {"200": {"description": "HTML."}}}},
        },
    }
    if settings.api_key is not None:  # the open paths (access.OPEN_PATHS) say so with an empty requirement
        spec["security"] = [{"bearer": []}]
        for path in OPEN_PATHS:
            for operation in spec["paths"].get(path, {}).values():
                operation["security"] = []
    return spec
