"""Audio in and out: load any file soundfile reads, resample, normalise like audiocraft, write atomically."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import struct
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from .errors import InvalidInputError
from .loudness import integrated_loudness
from .options import finite_number, shown

log = logging.getLogger(__name__)

WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
STRATEGIES = ("loudness", "peak", "none")

MIN_PROMPT_SECONDS = 0.1
"""Shortest continuation prompt, for ``read_input(min_seconds=...)``. EnCodec's last encoder conv
(kernel 7) reflect-pads 3 frames, which needs at least 4 frames at the 640-sample hop: the bundled
model's ``audio_encoder.onnx`` accepts 1921 samples at 32 kHz and fails on 1920 with a Pad-reflect
error. 0.1 s (3200 samples, 5 frames) is that bound rounded up, with room for resampler rounding."""

_BLOCK_SAMPLES = 1 << 20  # samples (frames x channels) per soundfile read: 4 MiB of float32 at most
_MEASURED_SUBTYPES = ("PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW")
_MEASURED_FORMATS = ("WAV", "WAVEX", "AIFF", "W64", "RF64", "CAF", "AU")
MAX_DECODED_BYTES = 4 << 30
"""Most float32 bytes a file may decode to (an hour of 8-channel 48 kHz audio is 5.5 GB): the header's
rate, channels and frames are checked against it before decoding, and the decoding stops at it when a
compressed file's header understates its length. Callers that need less (a server) pass less."""


def load_audio(path: str | os.PathLike, what: str = "melody", max_seconds: float | None = None,
               max_bytes: int = MAX_DECODED_BYTES) -> tuple[np.ndarray, int]:
    """``(float32 [channels, samples], sample_rate)`` or a one-line :class:`InvalidInputError`.

    Only the first ``max_seconds`` are decoded (all of it when None): a two-hour melody used for
    15 s of music costs memory for what the generation reads, not for the file."""
    import soundfile as sf

    p = _existing_file(path, what)
    name = f"{what} file {str(p)!r}"

    def unreadable(reason: str) -> str:
        formats = ", ".join(sorted(sf.available_formats()))
        return f"{name} cannot be read as audio ({reason}); readable formats: {formats}"

    return _decode(str(p), lambda: open(p, "rb"), p.stat().st_size, name, max_seconds, max_bytes, unreadable)


def decode_audio_bytes(data: bytes, what: str, max_seconds: float | None,
                       max_bytes: int = MAX_DECODED_BYTES) -> tuple[np.ndarray, int]:
    """:func:`load_audio` for the bytes of a file (an upload): the same header checks, limits and
    truncation checks; nothing reaches the filesystem."""
    if not data:
        raise InvalidInputError(f"{what}: the uploaded file is empty")
    return _decode(io.BytesIO(data), lambda: io.BytesIO(data), len(data), f"{what}: the upload", max_seconds,
                   max_bytes, lambda reason: f"{what}: the upload cannot be decoded as audio ({reason})",
                   quiet=False)


def _decode(source, reopen, size: int, name: str, max_seconds, max_bytes: int, unreadable,
            quiet: bool = True) -> tuple[np.ndarray, int]:
    """``quiet``: silence fd 2 while decoding (libmpg123 prints its parser's notes there before soundfile
    raises); not for a server's uploads, where it would drop other threads' log lines meanwhile."""
    check_seconds(max_seconds, "max_seconds")
    with _QuietStderr() if quiet else contextlib.nullcontext():
        try:
            data, sr = _read_prefix(source, reopen, size, name, max_seconds, max_bytes)
        except InvalidInputError:
            raise
        except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError... by format
            raise InvalidInputError(unreadable(_read_error_reason(exc, source))) from None
    return check_samples(data.T, sr, name), int(sr)


def _existing_file(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{what} file {str(p)!r} does not exist")
    if p.is_dir():
        raise InvalidInputError(f"{what} file {str(p)!r} is a directory, not an audio file")
    if p.stat().st_size == 0:
        raise InvalidInputError(f"{what} file {str(p)!r} is empty")
    return p


def check_seconds(seconds, name: str) -> None:
    """``max_seconds`` / ``min_seconds`` come from callers' options: refuse nonsense (0, NaN, a string)
    rather than read nothing, everything, or fail in arithmetic later."""
    if seconds is None:
        return
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.integer, np.floating)) \
            or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInputError(f"{name} must be a positive number of seconds or None, got {seconds!r}")


def _read_error_reason(exc: Exception, source) -> str:
    """libsndfile's first line, minus the file we already name; its "does not exist or is not a
    regular file" for a file that does exist means it recognised no format in the bytes."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(source, str):
        reason = reason.replace(f"Error opening {source!r}: ", "")
    elif reason.startswith("Error opening <"):
        reason = reason.split(">: ", 1)[-1]
    if "does not exist or is not a regular file" in reason:
        return "format not recognised or data corrupt"
    return reason


def _read_prefix(source, reopen, size: int, name: str, max_seconds: float | None,
                 max_bytes: int) -> tuple[np.ndarray, int]:
    """``[frames, channels]`` float32 of at most ``max_seconds``. The header is checked before any
    sample is decoded: its rate, then truncation, then the bytes its frames would decode to."""
    import soundfile as sf

    with sf.SoundFile(source) as f:
        _check_rate(f.samplerate, name)
        _check_complete(reopen, f, name)
        limit = None if max_seconds is None else math.ceil(max_seconds * f.samplerate)
        frames = f.frames if limit is None else min(limit, f.frames)
        _check_decoded_bytes(frames, f.channels, f.samplerate, max_bytes, name)
        most = max_bytes // (4 * f.channels)  # frames the limit allows, whatever the header says
        return _read_frames(f, min(limit, most + 1) if limit is not None else most + 1, size, name,
                            max_bytes), f.samplerate


def _check_decoded_bytes(frames: int, channels: int, rate: int, max_bytes: int, name: str) -> None:
    need = frames * channels * 4
    if need > max_bytes:
        raise InvalidInputError(f"{name}: {frames} frames x {channels} channels at {rate} Hz would decode to "
                                f"{need / 2 ** 20:.0f} MiB, over the {max_bytes / 2 ** 20:.0f} MiB allowed "
                                f"(shorten it or downmix it)")


def _read_frames(f, limit: int, file_size: int, name: str, max_bytes: int) -> np.ndarray:
    """Up to ``limit`` frames, read block by block. Uncompressed containers report a frame count
    libsndfile measured from the bytes present (at least a byte a sample), so one buffer of that size is
    filled in place; any other count is the header's word (a crafted one can claim terabytes, or
    nothing), so blocks are collected until the data or the limit ends, and going past ``max_bytes``
    is refused."""
    measured = f.format in _MEASURED_FORMATS and f.subtype in _MEASURED_SUBTYPES
    step = max(1, _BLOCK_SAMPLES // f.channels)
    if measured and f.frames * f.channels <= file_size:
        out = np.empty((min(limit, f.frames), f.channels), dtype=np.float32)
        got = 0
        while got < out.shape[0]:
            n = f.read(dtype="float32", always_2d=True, out=out[got:got + step]).shape[0]
            if n == 0:
                break
            got += n
        return out[:got]
    blocks, got = [], 0
    while got < limit:
        block = f.read(min(step, limit - got), dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        blocks.append(block)
        got += block.shape[0]
        _check_decoded_bytes(got, f.channels, f.samplerate, max_bytes, name)
    return np.concatenate(blocks) if blocks else np.empty((0, f.channels), dtype=np.float32)


def _check_complete(reopen, f, name: str) -> None:
    """libsndfile quietly shortens a WAV/AIFF whose data ends before its header says (a cut-off
    download or upload) to the samples present; refuse it instead, comparing the header's count with
    the count libsndfile found."""
    if f.subtype not in _MEASURED_SUBTYPES:
        return  # compressed payloads: header units are blocks, not frames
    declared = {"WAV": _wav_declared_frames, "WAVEX": _wav_declared_frames, "AIFF": _aiff_declared_frames}
    reader = declared.get(f.format)
    if reader is None:
        return
    with reopen() as fh:
        frames = reader(fh)
    if frames is not None and frames > f.frames:
        raise InvalidInputError(f"{name} is truncated: header says {frames} samples, file holds {f.frames}")


def _chunks(fh, endian: str, limit: int = 4096):
    """``(id, size)`` of each RIFF/IFF chunk after the 12-byte form header, the file positioned at
    the chunk's body; only headers are read (bodies are skipped by seeking), at most ``limit``."""
    for _ in range(limit):
        head = fh.read(8)
        if len(head) < 8:
            return
        size = struct.unpack(endian + "I", head[4:])[0]
        body = fh.tell()
        yield head[:4], size
        fh.seek(body + size + (size & 1))


def _wav_declared_frames(fh) -> int | None:
    """Frames the ``data`` chunk claims (its size / fmt's block align); None for a streamed WAV
    (size 0 or 0xFFFFFFFF: "until the end of the file") or a layout not understood."""
    form = fh.read(12)
    if form[:4] not in (b"RIFF", b"RIFX") or form[8:12] != b"WAVE":
        return None
    endian = "<" if form[:4] == b"RIFF" else ">"
    block_align = None
    for cid, size in _chunks(fh, endian):
        if cid == b"fmt ":
            body = fh.read(min(size, 16))
            block_align = struct.unpack(endian + "H", body[12:14])[0] if len(body) >= 14 else None
        elif cid == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):
                return None
            return size // block_align
    return None


def _aiff_declared_frames(fh) -> int | None:
    """``numSampleFrames`` of the COMM chunk."""
    form = fh.read(12)
    if form[:4] != b"FORM" or form[8:12] not in (b"AIFF", b"AIFC"):
        return None
    for cid, size in _chunks(fh, ">"):
        if cid == b"COMM":
            body = fh.read(6)
            return struct.unpack(">I", body[2:6])[0] if len(body) == 6 else None
    return None


class _QuietStderr:
    """Points fd 2 at /dev/null while libsndfile opens and decodes: its codecs (libmpg123) write
    diagnostics straight to fd 2, which ``sys.stderr`` redirection cannot catch, so a user would see
    parser notes above our one-line error. Nested and concurrent users share one redirection
    (a count under a lock), so fd 2 is restored exactly once, by the last to leave, even on error."""

    _lock = threading.Lock()
    _depth = 0
    _saved: int | None = None

    def __enter__(self):
        cls = type(self)
        with cls._lock:
            if cls._depth == 0:
                cls._saved = _redirect_fd2()
            cls._depth += 1
        return self

    def __exit__(self, *exc):
        cls = type(self)
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0 and cls._saved is not None:
                os.dup2(cls._saved, 2)
                os.close(cls._saved)
                cls._saved = None
        return False


def _redirect_fd2() -> int | None:
    """A duplicate of the current fd 2 (to restore later) after pointing fd 2 at /dev/null; None
    when there is no fd 2 to silence."""
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:
        return None
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        os.close(saved)
        return None
    try:
        os.dup2(devnull, 2)
    finally:
        os.close(devnull)
    return saved


_NOT_SAMPLES = {"U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers", "b": "booleans",
                "M": "dates", "m": "time spans", "V": "raw records"}


def check_samples(wav, sr, what: str, max_seconds: float | None = None) -> np.ndarray:
    """Validate an in-memory waveform: ``[samples]`` or ``[channels, samples]`` of real numbers (ints or
    floats; strings, objects, complex and bools are refused rather than cast, which would raise deep
    in numpy or silently drop an imaginary part), finite, non-empty. Cut to ``max_seconds`` before
    the float32 copy and the finiteness scan, so neither costs memory for unused audio."""
    _check_rate(sr, what)
    wav = as_array(wav, what)
    try:
        arr = np.asarray(wav)
    except (ValueError, TypeError):  # ragged nested lists
        raise InvalidInputError(f"{what}: expected numbers as [samples] or [channels, samples], got a "
                                f"{type(wav).__name__} whose rows differ in length or hold non-numbers") from None
    if arr.dtype.kind not in "iuf":
        kind = _NOT_SAMPLES.get(arr.dtype.kind, f"dtype {arr.dtype}")
        raise InvalidInputError(f"{what}: samples must be real numbers (integer or float), got {kind}")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise InvalidInputError(f"{what}: expected [samples] or [channels, samples], got shape {arr.shape}")
    if max_seconds is not None:
        arr = arr[:, :math.ceil(max_seconds * sr)]
    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape[1] == 0:
        raise InvalidInputError(f"{what}: contains no samples")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{what}: contains NaN or infinite samples")
    return arr


def as_array(x, what: str):
    """``x`` as an ndarray when numpy can read it through ``__array__`` (a CPU torch tensor, what
    ``torchaudio.load`` returns), so audiocraft code passes its tensors without this package importing
    torch; anything else is returned unchanged for the caller's own checks."""
    if isinstance(x, np.ndarray) or not hasattr(x, "__array__"):
        return x
    try:
        return np.asarray(x)
    except (TypeError, RuntimeError, ValueError) as exc:  # a CUDA tensor, one that requires grad
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidInputError(f"{what}: numpy cannot read this {type(x).__name__} ({reason}); pass "
                                f"x.detach().cpu() or a numpy array") from None


def _check_rate(sr, what: str) -> None:
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or not 1000 <= sr <= 384000:
        raise InvalidInputError(f"{what}: sample rate must be an integer in [1000, 384000] Hz, got {sr!r}")


def check_min_samples(wav: np.ndarray, sample_rate: int, min_samples: int, rate: int, what: str,
                      needer: str) -> None:
    """Refuse ``wav [channels, samples]`` at ``sample_rate`` if it would hold fewer than ``min_samples``
    once resampled to ``rate``: what consumes it downstream (EnCodec's reflect padding, the chroma
    STFT) fails or means nothing below that, with an error that names neither the input nor the
    minimum. Checked at the input's own rate, rounded up, so resampling cannot fall short."""
    need = -(-min_samples * int(sample_rate) // int(rate))
    have = wav.shape[-1]
    if have >= need:
        return
    at_input = "" if sample_rate == rate else f", {need} at its {sample_rate} Hz"
    raise InvalidInputError(f"{what} is too short: {have} samples ({have / sample_rate:.6g} s at {sample_rate} Hz); "
                            f"{needer} needs at least {min_samples / rate:g} s ({min_samples} samples at "
                            f"{rate} Hz{at_input})")


def read_input(item, sample_rate: int | None, what: str, kind: str, max_seconds: float | None = None,
               min_seconds: float | None = None) -> tuple[np.ndarray, int, str]:
    """A user's audio input (``kind``: "melody", "prompt"), a file path or an array with its sample
    rate, -> ``(float32 [channels, samples], sample_rate, how to name it in errors)``.

    ``max_seconds``: keep (and, for files, decode) only that much. ``min_seconds``: refuse shorter
    inputs, for consumers that fail below a length (continuation: :data:`MIN_PROMPT_SECONDS`)."""
    check_seconds(min_seconds, "min_seconds")
    if isinstance(item, (str, os.PathLike)):
        wav, sr = load_audio(item, what, max_seconds)
        name = f"{what} file {str(item)!r}"
    elif sample_rate is None:
        raise InvalidInputError(f"{what}: an array {kind} needs {kind}_sample_rate")
    else:
        check_seconds(max_seconds, "max_seconds")
        wav, sr, name = check_samples(item, sample_rate, what, max_seconds), int(sample_rate), what
    if min_seconds is not None:
        check_min_samples(wav, sr, math.ceil(round(min_seconds * sr, 6)), sr, name, f"a {kind}")
    return wav, sr, name


def to_mono(wav: np.ndarray) -> np.ndarray:
    return wav.mean(axis=0) if wav.shape[0] > 1 else wav[0]


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling with soxr (HQ); audiocraft uses julius and transformers torchaudio,
    which agree with it to within resampler ripple (see README, "Melody conditioning")."""
    if sr_in == sr_out:
        return wav.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(wav.T, sr_in, sr_out, quality="HQ").T.astype(np.float32)


def normalize(wav: np.ndarray, sample_rate: int, strategy: str = "loudness", peak_clip_headroom_db: float = 1.0,
              loudness_headroom_db: float = 14.0, loudness_compressor: bool = False) -> np.ndarray:
    """audiocraft's ``normalize_audio`` + ``_clip_wav`` (data/audio_utils.py) for one ``[channels, samples]`` clip."""
    if strategy not in STRATEGIES:
        raise InvalidInputError(f"normalization strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    wav = np.asarray(wav, dtype=np.float32)
    if strategy == "peak":
        peak = float(np.max(np.abs(wav))) if wav.size else 0.0
        if peak > 0:
            wav = wav * (10 ** (-peak_clip_headroom_db / 20) / peak)
    elif strategy == "loudness":
        wav = normalize_loudness(wav, sample_rate, loudness_headroom_db, loudness_compressor)
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


def normalize_loudness(wav: np.ndarray, sample_rate: int, loudness_headroom_db: float = 14.0,
                       loudness_compressor: bool = False) -> np.ndarray:
    """audiocraft's ``normalize_loudness``, before any clipping (its callers clip, and may log it)."""
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if wav.size else 0.0
    if rms >= 2e-3:  # audiocraft leaves near-silence untouched
        loudness = integrated_loudness(wav, sample_rate)
        if np.isfinite(loudness):
            wav = wav * np.float32(10 ** ((-loudness_headroom_db - loudness) / 20))
            if loudness_compressor:
                wav = np.tanh(wav)
    return wav


def check_output_path(path: str | os.PathLike, fmt: str | None = None) -> tuple[Path, str, Path]:
    """``(path, soundfile format, folder)`` of a writable output, or a one-line error. ``fmt``: the
    soundfile format when the name carries none (``audio_write(add_suffix=False)``)."""
    p = Path(path)
    if p.is_dir():
        raise InvalidInputError(f"output file {str(p)!r} is a directory")
    fmt = fmt or WRITE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"output file {str(p)!r}: unknown format {p.suffix!r}; "
                                f"use one of {', '.join(WRITE_FORMATS)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInputError(f"output file {str(p)!r}: folder {str(parent)!r} does not exist")
    return p, fmt, parent


def check_outputs_spare_input(outputs, source: str | os.PathLike, what: str) -> None:
    """Each of ``outputs`` is a writable path (:func:`check_output_path`) that is not the file ``source``
    (or a link to it): checked together before any output is written, so a refusal leaves nothing
    behind and a command never replaces the audio it reads."""
    for out in outputs:
        p, _, _ = check_output_path(out)
        try:
            same = p.exists() and Path(source).exists() and os.path.samefile(p, source)
        except OSError:
            same = False
        if same:
            raise InvalidInputError(f"output file {str(p)!r} would replace the {what} file {str(source)!r}; "
                                    f"choose another output folder")


def _temporary(p: Path, parent: Path) -> tuple[int, str]:
    """A new hidden ``.NAME.PID.RANDOM.partial`` beside ``p``, after removing the partials of ``p``
    whose writer is dead (killed with -9). The pid in the name tells a live concurrent writer's
    partial, which must survive (its rename would fail), from a dead one's."""
    _remove_dead_partials(p, parent)
    try:
        return tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}.", suffix=".partial", dir=parent)
    except OSError as exc:
        raise InvalidInputError(f"output file {str(p)!r} cannot be written ({exc.strerror})") from None


def _remove_dead_partials(p: Path, parent: Path) -> None:
    """Exact name match: ``song.wav``'s pattern never matches ``song.wav.2.wav``'s partials (mkstemp's
    random part has no dots). Best effort: a partial that cannot be removed is left."""
    pattern = re.compile(rf"\.{re.escape(p.name)}\.(\d+)\.[a-z0-9_]+\.partial")
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and not _pid_alive(int(match.group(1))):
            try:
                (parent / name).unlink()
            except OSError:
                pass


def _pid_alive(pid: int) -> bool:
    """False only when the process surely does not exist; any doubt keeps the partial."""
    if os.name == "nt" or pid <= 0:  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: alive, another user's
        return True
    return True


_SUBTYPES = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}


def _encode_into(handle, wav, sample_rate: int, fmt: str, what: str, **encoder) -> None:
    """The one place that decides how each format is encoded (16-bit PCM for the lossless ones),
    for files and for bytes alike. Encoder refusals (a rate MP3 lacks, a bad shape) become one line;
    OSError (disk full) is left to the caller, who knows the file. ``encoder``: soundfile's
    ``compression_level`` / ``bitrate_mode`` (``audio_write``'s ``mp3_rate``)."""
    import soundfile as sf

    _check_rate(sample_rate, what)
    arr = np.asarray(wav, dtype=np.float32)
    if arr.ndim not in (1, 2):
        raise InvalidInputError(f"{what}: expected [channels, samples], got shape {arr.shape}")
    try:
        sf.write(handle, arr.T, sample_rate, format=fmt, subtype=_SUBTYPES[fmt], **encoder)
    except (RuntimeError, ValueError, TypeError) as exc:  # LibsndfileError is a RuntimeError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(f"{what}: audio cannot be encoded as {fmt} ({reason})") from None


def encode_audio(wav, sample_rate: int, format: str = "wav") -> bytes:
    """``wav [channels, samples]`` (already normalised: see :func:`normalize`) as the bytes of a
    ``format`` file ("wav", "flac", "ogg", "mp3"), encoded exactly as :func:`write_audio` writes it,
    for callers that send audio rather than save it (a server)."""
    fmt = WRITE_FORMATS.get("." + str(format).lower().lstrip("."))
    if fmt is None:
        raise InvalidInputError(f"audio format {format!r} is unknown; use one of "
                                f"{', '.join(s.lstrip('.') for s in WRITE_FORMATS)}")
    buffer = io.BytesIO()
    _encode_into(buffer, wav, sample_rate, fmt, f"{fmt} audio")
    return buffer.getvalue()


def write_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int, fmt: str | None = None,
                **encoder) -> Path:
    """Write ``[channels, samples]`` to ``path`` (format from the suffix, or ``fmt``: a soundfile format
    name, for ``audio_write(add_suffix=False)``), whole or not at all. The encoder writes straight into
    the hidden partial file (no second copy of the audio in memory)."""
    p, fmt, parent = check_output_path(path, fmt)
    fd, tmp = _temporary(p, parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _encode_into(handle, wav, sample_rate, fmt, f"output file {str(p)!r}", **encoder)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InvalidInputError(f"output file {str(p)!r} could not be written ({exc.strerror or exc})") from None
        raise
    return p


def save_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int, strategy: str = "loudness", *,
               peak_clip_headroom_db: float = 1.0, loudness_headroom_db: float = 14.0,
               loudness_compressor: bool = False) -> Path:
    """Normalise ``wav [channels, samples]`` with ``strategy`` and write it atomically: what every
    writer of finished audio does (CLI, streaming commit, ``audio_write``), in one place."""
    out = normalize(wav, sample_rate, strategy, peak_clip_headroom_db, loudness_headroom_db, loudness_compressor)
    return write_audio(path, out, sample_rate)


class StreamingWriter:
    """Streams chunks into a hidden float WAV beside ``path`` (playable while it grows); ``commit``
    normalises the whole and writes ``path`` atomically, ``abort`` leaves nothing behind."""

    def __init__(self, path: str | os.PathLike, sample_rate: int, channels: int):
        import soundfile as sf

        self.path, _, parent = check_output_path(path)
        self.sample_rate = sample_rate
        fd, self.tmp = _temporary(self.path, parent)
        os.close(fd)
        self._file = sf.SoundFile(self.tmp, "w", sample_rate, channels, format="WAV", subtype="FLOAT")

    def write(self, chunk: np.ndarray) -> None:
        """``chunk [channels, samples]``."""
        self._file.write(np.asarray(chunk, dtype=np.float32).T)
        self._file.flush()

    def commit(self, strategy: str = "loudness") -> Path:
        import soundfile as sf

        try:
            self._file.close()
            data, _ = sf.read(self.tmp, dtype="float32", always_2d=True)
            save_audio(self.path, data.T, self.sample_rate, strategy)
        finally:
            Path(self.tmp).unlink(missing_ok=True)
        return self.path

    def commit_as_written(self) -> Path:
        """Rename the float WAV into place as it is, no normalisation and no second copy in memory (stems
        of an hour-long track). ``path`` must be a ``.wav``."""
        if self.path.suffix.lower() != ".wav":
            raise InvalidInputError(f"output file {str(self.path)!r}: only .wav can be kept as written (float WAV)")
        try:
            self._file.close()
            os.chmod(self.tmp, 0o666 & ~_umask())
            os.replace(self.tmp, self.path)
        except OSError as exc:
            Path(self.tmp).unlink(missing_ok=True)
            raise InvalidInputError(f"output file {str(self.path)!r} could not be written ({exc.strerror or exc})") from None
        return self.path

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        Path(self.tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


AUDIO_WRITE_FORMATS = ("wav", "mp3", "ogg", "flac")  # audiocraft's, all written by libsndfile here
AUDIO_WRITE_STRATEGIES = ("peak", "clip", "rms", "loudness", "none", "")  # audiocraft's normalize_audio
# libsndfile's CBR MP3 bitrate is  top - compression_level * (top - bottom) kbps, by sample rate band
_MP3_KBPS = ((32000, 32, 320), (16000, 8, 160), (0, 8, 64))


def audio_write(stem_name: str | os.PathLike, wav, sample_rate: int, format: str = "wav", mp3_rate: int = 320,
                ogg_rate: int | None = None, normalize: bool = True, strategy: str = "peak",
                peak_clip_headroom_db: float = 1, rms_headroom_db: float = 18, loudness_headroom_db: float = 14,
                loudness_compressor: bool = False, log_clipping: bool = True, make_parent_dir: bool = True,
                add_suffix: bool = True) -> Path:
    """audiocraft's ``audio_write`` (audiocraft/data/audio.py), argument for argument, minus torch and
    ffmpeg: ``wav [channels, samples]`` (or ``[samples]``; an array or a CPU tensor) normalised as its
    ``normalize_audio`` does, written atomically to ``stem_name.format``. Returns the path written.

    audiocraft pipes to ffmpeg; libsndfile writes the same four formats here, so ``ogg_rate`` (a Vorbis
    bitrate, which libsndfile sets only as a quality) must stay None."""
    name = f"audio_write({str(stem_name)!r})"
    fmt = str(format).lower()
    if fmt not in AUDIO_WRITE_FORMATS:
        raise InvalidInputError(f"{name}: format {format!r} is not one of {', '.join(AUDIO_WRITE_FORMATS)}")
    if strategy not in AUDIO_WRITE_STRATEGIES:
        raise InvalidInputError(f"{name}: strategy {strategy!r} is not one of "
                                f"{', '.join(repr(s) for s in AUDIO_WRITE_STRATEGIES)}")
    if ogg_rate is not None:
        raise InvalidInputError(f"{name}: ogg_rate needs audiocraft's ffmpeg encoder; libsndfile writes Vorbis at "
                                f"its default quality here, so leave ogg_rate=None (or use format 'flac' or 'wav')")
    arr = np.asarray(as_array(wav, name), dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise InvalidInputError(f"{name}: expected [channels, samples], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name}: contains NaN or infinite samples")
    for what, db in (("peak_clip_headroom_db", peak_clip_headroom_db), ("rms_headroom_db", rms_headroom_db),
                     ("loudness_headroom_db", loudness_headroom_db)):
        if not finite_number(db):  # NaN scaled every sample to NaN, written as full-scale noise
            raise InvalidInputError(f"{name}: {what} must be a finite number of dB, got {shown(db)}")
    encoder = _mp3_encoder(mp3_rate, sample_rate, name) if fmt == "mp3" else {}
    arr = _normalize_audio(arr, sample_rate, normalize, strategy, peak_clip_headroom_db, rms_headroom_db,
                           loudness_headroom_db, loudness_compressor, log_clipping, str(stem_name))
    path = Path(f"{stem_name}.{fmt}") if add_suffix else Path(stem_name)
    if make_parent_dir:
        _make_parents(path.parent)
    return write_audio(path, arr, sample_rate, WRITE_FORMATS["." + fmt], **encoder)


def _mp3_encoder(kbps, sample_rate: int, name: str) -> dict:
    bottom, top = next((lo, hi) for floor, lo, hi in _MP3_KBPS if sample_rate >= floor)
    if isinstance(kbps, bool) or not isinstance(kbps, (int, float)) or not bottom < kbps <= top:
        raise InvalidInputError(f"{name}: mp3_rate must be a bitrate in ({bottom}, {top}] kbps at {sample_rate} Hz, "
                                f"got {kbps!r}")
    return {"compression_level": (top - kbps) / (top - bottom), "bitrate_mode": "CONSTANT"}


def _make_parents(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"audio_write: folder {str(folder)!r} cannot be created ({exc.strerror or exc})") from None


def _normalize_audio(wav: np.ndarray, sample_rate: int, normalize: bool, strategy: str, peak_clip_headroom_db: float,
                     rms_headroom_db: float, loudness_headroom_db: float, loudness_compressor: bool,
                     log_clipping: bool, stem_name: str) -> np.ndarray:
    """audiocraft's ``normalize_audio``: with ``normalize=False``, 'peak' and 'rms' only scale down
    audio that would clip. 'loudness' and 'none' are :func:`normalize`'s (one home for the loudness
    rule); 'rms' and 'loudness' report clipping that remains, as audiocraft's ``_clip_wav`` does."""
    scale_peak = 10 ** (-peak_clip_headroom_db / 20)
    if strategy == "peak":
        peak = float(np.max(np.abs(wav))) if wav.size else 0.0
        rescaling = scale_peak / peak if peak > 0 else 1.0
        return wav * np.float32(rescaling) if normalize or rescaling < 1 else wav
    if strategy == "clip":
        return np.clip(wav, -scale_peak, scale_peak)
    if strategy == "rms":
        rms = float(np.sqrt(np.mean(wav.mean(axis=0).astype(np.float64) ** 2))) if wav.size else 0.0
        rescaling = 10 ** (-rms_headroom_db / 20) / rms if rms > 0 else 1.0
        if normalize or rescaling < 1:
            wav = wav * np.float32(rescaling)
    elif strategy == "loudness":
        wav = normalize_loudness(wav, sample_rate, loudness_headroom_db, loudness_compressor)
    if log_clipping and strategy in ("rms", "loudness") and wav.size and float(np.max(np.abs(wav))) > 1:
        log.warning("CLIPPING %s happening with proba (a bit of clipping is okay): %.4g maximum scale: %.4g",
                    stem_name, float(np.mean(np.abs(wav) > 1)), float(np.max(np.abs(wav))))
    return np.clip(wav, -1.0, 1.0).astype(np.float32)
