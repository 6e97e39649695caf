"""Audio in and out: load any file soundfile reads, resample, normalise like audiocraft, write atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InvalidInputError
from .loudness import integrated_loudness

WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
STRATEGIES = ("loudness", "peak", "none")


def load_audio(path: str | os.PathLike, what: str = "melody") -> tuple[np.ndarray, int]:
    """``(float32 [channels, samples], sample_rate)`` or a one-line :class:`InvalidInputError`."""
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{what} file {str(p)!r} does not exist")
    if p.is_dir():
        raise InvalidInputError(f"{what} file {str(p)!r} is a directory, not an audio file")
    if p.stat().st_size == 0:
        raise InvalidInputError(f"{what} file {str(p)!r} is empty")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError... by format
        formats = ", ".join(sorted(sf.available_formats()))
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(f"{what} file {str(p)!r} cannot be read as audio ({reason}); "
                                f"readable formats: {formats}") from None
    return check_samples(data.T, sr, f"{what} file {str(p)!r}"), int(sr)


def check_samples(wav, sr, what: str) -> np.ndarray:
    """Validate an in-memory waveform: ``[samples]`` or ``[channels, samples]``, finite, non-empty."""
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or not 1000 <= sr <= 384000:
        raise InvalidInputError(f"{what}: sample rate must be an integer in [1000, 384000] Hz, got {sr!r}")
    arr = np.asarray(wav, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise InvalidInputError(f"{what}: expected [samples] or [channels, samples], got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise InvalidInputError(f"{what}: contains no samples")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{what}: contains NaN or infinite samples")
    return arr


def read_input(item, sample_rate: int | None, what: str, kind: str) -> tuple[np.ndarray, int, str]:
    """A user's audio input (``kind``: "melody", "prompt"), a file path or an array with its sample
    rate, -> ``(float32 [channels, samples], sample_rate, how to name it in errors)``."""
    if isinstance(item, (str, os.PathLike)):
        wav, sr = load_audio(item, what)
        return wav, sr, f"{what} file {str(item)!r}"
    if sample_rate is None:
        raise InvalidInputError(f"{what}: an array {kind} needs {kind}_sample_rate")
    return check_samples(item, sample_rate, what), int(sample_rate), what


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
        rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if wav.size else 0.0
        if rms >= 2e-3:  # audiocraft leaves near-silence untouched
            loudness = integrated_loudness(wav, sample_rate)
            if np.isfinite(loudness):
                wav = wav * np.float32(10 ** ((-loudness_headroom_db - loudness) / 20))
                if loudness_compressor:
                    wav = np.tanh(wav)
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


def check_output_path(path: str | os.PathLike) -> tuple[Path, str, Path]:
    """``(path, soundfile format, folder)`` of a writable output, or a one-line error."""
    p = Path(path)
    if p.is_dir():
        raise InvalidInputError(f"output file {str(p)!r} is a directory")
    fmt = WRITE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"output file {str(p)!r}: unknown format {p.suffix!r}; "
                                f"use one of {', '.join(WRITE_FORMATS)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInputError(f"output file {str(p)!r}: folder {str(parent)!r} does not exist")
    return p, fmt, parent


def _temporary(p: Path, parent: Path) -> tuple[int, str]:
    for stale in parent.glob(f".{p.name}.*.partial"):  # left by a writer that was killed (kill -9)
        stale.unlink(missing_ok=True)
    try:
        return tempfile.mkstemp(prefix=f".{p.name}.", suffix=".partial", dir=parent)
    except OSError as exc:
        raise InvalidInputError(f"output file {str(p)!r} cannot be written ({exc.strerror})") from None


def write_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int) -> Path:
    """Write ``[channels, samples]`` to ``path`` (format from the suffix), whole or not at all."""
    import soundfile as sf

    p, fmt, parent = check_output_path(path)
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
    fd, tmp = _temporary(p, parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            sf.write(handle, np.asarray(wav, dtype=np.float32).T, sample_rate, format=fmt, subtype=subtype)
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
            write_audio(self.path, normalize(data.T, self.sample_rate, strategy), self.sample_rate)
        finally:
            Path(self.tmp).unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        Path(self.tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def audio_write(stem_name: str | os.PathLike, wav, sample_rate: int, format: str = "wav",
                strategy: str = "peak", peak_clip_headroom_db: float = 1.0, loudness_headroom_db: float = 14.0,
                loudness_compressor: bool = False, add_suffix: bool = True) -> Path:
    """audiocraft's ``audio_write``, minus torch: normalise ``wav [channels, samples]`` and write
    ``stem_name.format``. Returns the path written."""
    arr = np.asarray(wav, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise InvalidInputError(f"audio_write: expected [channels, samples], got shape {arr.shape}")
    suffix = "." + format.lower().lstrip(".")
    path = Path(f"{stem_name}{suffix}") if add_suffix else Path(stem_name)
    out = normalize(arr, sample_rate, strategy, peak_clip_headroom_db, loudness_headroom_db, loudness_compressor)
    return write_audio(path, out, sample_rate)
