"""``MusicGen``: a model folder in, music out, with numpy + onnxruntime only.

Follow one call from top to bottom: ``generate`` checks the inputs (``GenerationInputs`` in
``generation.py``: options, prompts, melodies), a ``GenerationTask`` plans the windows (one, or
audiocraft's extend_stride windows past 30 s, ``longform.py``) and runs each window's ``StepLoop``:
the ``Conditioner`` runs the text encoder once for the conditional and the CFG null rows, a stepper
(``stepper.py``) makes one decoder call per step, the sampler picks the tokens; ``AudioCodec.decode``
turns the codes into audio (``StreamDecoder`` does it span by span). This class loads the folder and
keeps audiocraft's API; everything a call changes lives on its task.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from . import audio as audio_io
from .codec import FIRST_CHUNK_FRAMES, StreamDecoder
from .delay import DelayPattern
from .errors import InvalidInputError
from .hub import DEFAULT_NAME, local_folder, resolve_model
from .generation import (
    GenerationInputs, GenerationTask, ModelParts, ProgressFn, StepLoop, check_descriptions, prompt_audio,
)
from .layouts import FolderLayout, layout_class
from .options import GenerationOptions
from .rows import LiveRows
from .session import GraphSessions, SessionSettings, release_freed_memory
from .stepper import Conditioning
from .prompt_ids import TextTokenizer
from .torchlike import TorchLikeArray

log = logging.getLogger(__name__)


class MusicGen:
    def __init__(self, adapter: FolderLayout, settings: SessionSettings, low_memory: bool = False,
                 exact_stems: bool = False):
        """``adapter``: the opened folder (``layouts.open_layout``), which supplies the manifest and the
        conditioner, codec and stepper its graphs need. ``exact_stems``: see ``from_pretrained``."""
        if not isinstance(exact_stems, bool):
            raise InvalidInputError(f"exact_stems must be True or False, got {exact_stems!r}")
        self.exact_stems = exact_stems
        self.folder = adapter.folder
        self.name = str(adapter.folder)  # audiocraft's ``model.name``: what from_pretrained was given
        self._progress_callback: ProgressFn | None = None
        self.manifest = m = adapter.manifest
        self.settings = settings
        self.adapter = adapter
        self.graphs = GraphSessions(adapter.graph_dir, m, settings)
        # The decoder first: a graph with inline weights (folders exported before weights went to
        # NAME.onnx.data) is held twice while it loads, and that peak is lowest with nothing else resident.
        self.graphs["decoder"]
        if not low_memory:  # low_memory: the text encoder is opened per call (GraphSessions.run_transient)
            self.graphs["text_encoder"]
        tokenizer = TextTokenizer(adapter.tokenizer_path, max_id=m.text_vocab_size)
        self.pattern = DelayPattern(m.delays, m.special_token_id)
        self.options = m.defaults
        self.conditioner = adapter.conditioner(tokenizer, self.graphs)
        self.codec = adapter.codec(self.graphs)
        release_freed_memory()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, providers=None, verify_hashes: bool = True,
                        threads: int | None = None, low_memory: bool = False, *, revision: str | None = None,
                        precision: str | None = None, export: bool = False, exact_stems: bool = False) -> "MusicGen":
        """Load an exported folder, a hub repo ``org/name`` (``revision``, ``precision`` sub-folder; the
        ``hub`` extra) or an audiocraft name ('melody', 'small', ... exported into the project's cache,
        on demand with ``export=True``; ``precision`` defaults to fp16 on CUDA, int8 on CPU): see
        ``runtime/hub.py``. ``providers``: "auto" (default), "cpu", "cuda" or an onnxruntime list.
        Files are checked against the manifest (sizes always, sha256 unless ``verify_hashes=False``).

        ``low_memory=True`` keeps the text encoder (T5, fp32 in every tier: 0.44 GB for melody) out of
        memory between calls: it is loaded for each generation (or long-form window) and released
        before the decoder's KV cache is allocated, at about a second per call.

        A folder written by optimum or transformers.js (``config.json`` and its graphs, no
        ``musicgen_onnx.json``) is read through ``optimum_layout.py`` (``folder_kind.py`` tells the kinds
        apart); ``precision`` picks among its variants ("fp32", "fp16", "int8"/"quantized", "int4"/"q4";
        default: fp32 when present).

        ``exact_stems=True``: separate melodies with the exact fp32 stems graph even where the folder has
        the int8 fast one (``stems_fast``, the default for the melody path on CPU: same chroma on >= 99%
        of frames, 1.3-1.6x faster per segment; see ``melody_stems_graph``)."""
        settings = SessionSettings.resolve(providers, threads)
        name = str(folder)
        local = local_folder(folder) is not None
        folder = resolve_model(folder, revision, precision, export, settings.providers)
        layout = layout_class(folder)
        if local and precision is not None and not layout.has_variants:
            raise InvalidInputError("precision= chooses among the variants of an optimum / transformers.js folder "
                                    f"(or a hub repo's sub-folder); {folder} is a musicgen-onnx export of one precision")
        return cls(layout.open(folder, precision, verify_hashes), settings, low_memory, exact_stems)._named(name)

    def _named(self, name: str) -> "MusicGen":
        self.name = name
        return self

    @classmethod
    def get_pretrained(cls, name: str = DEFAULT_NAME, device: str | None = None, **kwargs) -> "MusicGen":
        """audiocraft's ``MusicGen.get_pretrained(name, device)``: ``device`` "cpu" or "cuda" picks the
        provider; the other keywords are ``from_pretrained``'s (``export=True`` exports on demand).
        ``get_pretrained("tiny-melody")`` is the bundled tiny model (random weights), offline."""
        return cls.from_pretrained(name, providers=kwargs.pop("providers", device), **kwargs)

    # ------------------------------------------------------------------ facts
    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.manifest.frame_rate

    @property
    def audio_channels(self) -> int:
        return self.manifest.audio_channels

    @property
    def max_duration(self) -> float:
        return self.manifest.max_duration

    @property
    def providers(self) -> list[str]:
        return list(self.settings.providers)

    @property
    def device(self) -> str:
        """audiocraft's ``model.device``, as the string its code compares: "cuda" when onnxruntime's
        CUDA provider runs the graphs, else "cpu" (``providers`` has the full list)."""
        return self.settings.device

    @property
    def duration(self) -> float:
        """audiocraft's ``model.duration``: seconds a call generates (``set_generation_params``)."""
        return self.options.duration

    @property
    def extend_stride(self) -> float:
        return self.options.extend_stride

    @property
    def generation_params(self) -> dict:
        """audiocraft's ``generation_params`` dict (what its ``lm.generate`` receives), read-only."""
        o = self.options
        return {"use_sampling": not o.greedy, "temp": o.temperature, "top_k": o.top_k, "top_p": o.top_p,
                "cfg_coef": o.guidance_scale, "two_step_cfg": False}

    # ------------------------------------------------------------------ audiocraft API
    def set_generation_params(self, use_sampling: bool = True, top_k: int = 250, top_p: float = 0.0,
                              temperature: float = 1.0, duration: float = 30.0, cfg_coef: float = 3.0,
                              two_step_cfg: bool = False, extend_stride: float = 18, *,
                              cfg_coef_beta: float | None = None) -> None:
        """audiocraft's ``set_generation_params``; its defaults are audiocraft's too. ``cfg_coef_beta``
        (later audiocraft, MusicGen-Style's double CFG) is accepted as None only."""
        if cfg_coef_beta is not None:
            raise InvalidInputError("cfg_coef_beta is MusicGen-Style's double CFG; these models take cfg_coef only")
        if two_step_cfg:
            raise InvalidInputError("two_step_cfg=True is not supported (only batched CFG, audiocraft's default)")
        m = self.manifest
        self.options = GenerationOptions(
            duration=duration, top_k=top_k, top_p=top_p, temperature=temperature, guidance_scale=cfg_coef,
            greedy=not use_sampling, extend_stride=extend_stride).check(m.max_duration, m.frame_rate, m.codebook_size)

    def set_custom_progress_callback(self, progress_callback: ProgressFn | None = None) -> None:
        """audiocraft's: calls with a truthy ``progress`` report ``progress_callback(generated, to_generate)``
        (decoder steps, all windows counted) instead of the stderr line or the callable given as
        ``progress``; None restores those."""
        if progress_callback is not None and not callable(progress_callback):
            raise InvalidInputError(f"progress_callback must be callable or None, got {type(progress_callback).__name__}")
        self._progress_callback = progress_callback

    def generate_audio(self, gen_tokens) -> np.ndarray:
        """audiocraft's ``generate_audio``: tokens ``[B, K, T]`` (from ``return_tokens=True``) -> audio."""
        tokens = audio_io.as_array(gen_tokens, "gen_tokens")
        m = self.manifest
        if not isinstance(tokens, np.ndarray) or tokens.ndim != 3 or tokens.shape[1] != m.num_codebooks \
                or not np.issubdtype(tokens.dtype, np.integer):
            got = list(tokens.shape) if isinstance(tokens, np.ndarray) else type(tokens).__name__
            raise InvalidInputError(f"gen_tokens: expected integer codes [B, {m.num_codebooks}, T], got {got}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= m.codebook_size):
            raise InvalidInputError(f"gen_tokens: codes must lie in [0, {m.codebook_size - 1}]")
        return TorchLikeArray.of(self.decode(tokens))

    def generate_with_chroma(self, descriptions, melody_wavs, melody_sample_rate, progress: bool = False,
                             return_tokens: bool = False):
        return self.generate(descriptions, melody=melody_wavs, melody_sample_rate=melody_sample_rate,
                             progress=progress, return_codes=return_tokens)

    def generate_unconditional(self, num_samples: int, progress: bool = False, return_tokens: bool = False):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise InvalidInputError(f"num_samples must be a positive integer, got {num_samples!r}")
        return self.generate([None] * num_samples, progress=progress, return_codes=return_tokens)

    def generate_continuation(self, prompt, prompt_sample_rate: int | None = None, descriptions=None,
                              progress: bool | ProgressFn = False, return_tokens: bool = False, **options):
        """Continue ``prompt`` audio (a path, ``[C, T]`` or ``[B, C, T]`` array with its sample rate).
        The output *includes* the prompt and ``duration`` is the total length (audiocraft semantics);
        melody models continue with the null melody, as audiocraft does."""
        codes = self.encode_prompt(prompt, prompt_sample_rate)
        if descriptions is None:
            descriptions = [None] * codes.shape[0]
        descriptions = check_descriptions(descriptions)
        if codes.shape[0] == 1 and len(descriptions) > 1:
            codes = np.repeat(codes, len(descriptions), axis=0)
        if codes.shape[0] != len(descriptions):
            raise InvalidInputError(f"prompt: got {codes.shape[0]} prompts for {len(descriptions)} descriptions")
        return self.generate(descriptions, prompt_codes=codes, progress=progress, return_codes=return_tokens,
                             **options)

    def encode_prompt(self, prompt, prompt_sample_rate: int | None = None) -> np.ndarray:
        """Audio -> EnCodec codes ``[B, K, ceil(samples / hop)]`` through ``audio_encoder.onnx``."""
        if not self.codec.can_encode:
            raise InvalidInputError(f"{self.folder}: this export has no audio_encoder.onnx, needed for continuation")
        prompt = audio_io.as_array(prompt, "prompt")  # a torch tensor, as audiocraft takes
        items = list(prompt) if isinstance(prompt, np.ndarray) and prompt.ndim == 3 else [prompt]
        return self.codec.encode(np.stack([prompt_audio(item, prompt_sample_rate, self.manifest) for item in items]))

    # ------------------------------------------------------------------ main entry
    def generate(self, descriptions, melody=None, melody_sample_rate: int | None = None, *,
                 duration: float | None = None, seed: int | Sequence[int | None] | None = None, top_k: int | None = None,
                 top_p: float | None = None, temperature: float | None = None,
                 guidance_scale: float | None = None, greedy: bool | None = None,
                 extend_stride: float | None = None, prompt_codes: np.ndarray | None = None,
                 stems: bool | None = None, progress: bool | ProgressFn = False, return_codes: bool = False,
                 rows: LiveRows | None = None, options: GenerationOptions | None = None, return_tokens: bool = False):
        """Text prompts (and optionally melodies) -> float32 audio ``[B, channels, samples]``.

        ``melody``: one melody for all prompts or one per prompt, each a file path or an array
        (``[samples]`` or ``[channels, samples]``, with ``melody_sample_rate``), or a ``[B, C, T]`` array.
        Durations past the model's 30 s are generated in audiocraft's ``extend_stride`` windows.
        ``prompt_codes [B, K, T]`` continues from known codes (see ``generate_continuation``).
        Unset options take the values of ``options`` (a :class:`GenerationOptions`, as a caller that
        already holds one passes it), else of ``set_generation_params`` (audiocraft's defaults).
        With ``return_codes`` (or audiocraft's ``return_tokens``) the EnCodec codes ``[B, K, T]`` are
        returned too: ``(audio, codes)``. audiocraft's positional ``generate(descriptions, progress,
        return_tokens)`` works as well (booleans where the melody would be). The audio answers
        ``.cpu()``, ``.numpy()`` like a tensor (:class:`TorchLikeArray`).
        ``stems``: separate each melody with Demucs first and take the chroma of its vocals + other, as
        audiocraft does (the default when the folder was exported with ``--stems``); False takes the
        full mix (transformers' behaviour). The shift Demucs draws comes from ``seed``.
        ``seed``: an int for the call, or one int (or None) per prompt; a row given seed ``s`` draws what
        its prompt alone with seed ``s`` draws (its codes are its batch mates' only if every prompt has
        the same token length and melody length: text is padded to the longest, and padded positions are
        attended to).
        ``rows``: a :class:`LiveRows` over the prompts, to cancel rows while the call runs (from another
        thread); the result then holds the rows still in ``rows.live``, which keep the codes they would
        have had without the drop.
        """
        if isinstance(melody, bool):  # audiocraft's generate(descriptions, progress, return_tokens)
            melody, progress = None, melody
            if isinstance(melody_sample_rate, bool):
                melody_sample_rate, return_tokens = None, melody_sample_rate
        return_codes = return_codes or return_tokens
        inputs = self._inputs(descriptions, melody, melody_sample_rate, dict(
            duration=duration, seed=seed, top_k=top_k, top_p=top_p, temperature=temperature,
            guidance_scale=guidance_scale, greedy=greedy, extend_stride=extend_stride, stems=stems), prompt_codes,
            options)
        task = GenerationTask(self.parts(), inputs, self._reporter(progress), rows)
        parts, seen = [], task.rows.live

        def cut(keep):
            parts[:] = [p[keep] for p in parts]

        for new in task.codes():
            seen = task.rows.follow(seen, cut)
            parts.append(new)
        task.rows.follow(seen, cut)
        if not task.rows.live:  # every row was cancelled
            codes = np.zeros((0, self.manifest.num_codebooks, 0), dtype=np.int64)
            audio = np.zeros((0, self.audio_channels, 0), dtype=np.float32)
            return (audio, codes) if return_codes else audio
        codes = np.concatenate(parts, axis=2)
        audio = TorchLikeArray.of(self.codec.decode(codes))
        return (audio, codes) if return_codes else audio

    def generate_stream(self, descriptions, melody=None, melody_sample_rate: int | None = None, *,
                        chunk_frames: int = 50, first_chunk_frames: int = FIRST_CHUNK_FRAMES,
                        progress: bool | ProgressFn = False, rows: LiveRows | None = None,
                        options: GenerationOptions | None = None, **changes):
        """Like ``generate``, but yields audio chunks ``[B, channels, samples]`` while the loop runs:
        the first as soon as ``first_chunk_frames`` frames can be decoded, then every ``chunk_frames``
        frames (50 = 1 s). A small first chunk is what a listener waits for: on a CPU a 1.5B model
        makes ~16 frames a second, so a 50-frame first chunk cost 3 s more than a 10-frame one. Each
        span is decoded with codec context on both sides (``StreamDecoder``); the concatenation
        equals the one-shot decode within the tolerance the README states. With ``rows`` (see
        ``generate``), each chunk holds the rows in ``rows.live`` when it is yielded; once every row
        is cancelled the stream ends."""
        for name, value in (("chunk_frames", chunk_frames), ("first_chunk_frames", first_chunk_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        prompt_codes = changes.pop("prompt_codes", None)
        inputs = self._inputs(descriptions, melody, melody_sample_rate, changes, prompt_codes, options)
        decoder = StreamDecoder(self.codec)
        pending = 0
        wanted = first_chunk_frames + decoder.lookahead  # frames pushed before the first chunk can be decoded
        task = GenerationTask(self.parts(), inputs, self._reporter(progress), rows)
        seen = task.rows.live
        for new in task.codes():
            seen = task.rows.follow(seen, decoder.keep_rows)
            decoder.push(new)
            pending += new.shape[2]
            if pending >= wanted:
                pending, wanted = 0, chunk_frames
                chunk = decoder.ready()
                if chunk.shape[2]:
                    yield chunk
        task.rows.follow(seen, decoder.keep_rows)
        if task.rows.live:  # else every row was cancelled: nothing more to send
            yield decoder.flush()

    def _reporter(self, progress: bool | ProgressFn) -> bool | ProgressFn:
        """audiocraft's rule: a truthy ``progress`` reports to the custom callback when one is set."""
        return self._progress_callback if progress and self._progress_callback is not None else progress

    def _inputs(self, descriptions, melody, melody_sample_rate, changes: dict, prompt_codes,
                options: GenerationOptions | None = None) -> GenerationInputs:
        changes = dict(changes)
        stems = changes.pop("stems", None)
        return GenerationInputs.check(self.parts(), descriptions, melody, melody_sample_rate,
                                      (options or self.options).updated(**changes), prompt_codes, stems)

    def parts(self) -> ModelParts:
        """What a generation call reads from this model (the loop never holds the model itself)."""
        return ModelParts(self.folder, self.manifest, self.pattern, self.conditioner, self.new_stepper,
                          self.separate_melodies, self.settings)

    # ------------------------------------------------------------------ stems
    @property
    def stems(self):
        """The folder's exact :class:`~.stems.StemSeparator` (``stems.onnx`` opened on first use), or None:
        what the ``stems`` command and ``/v1/stems`` separate with."""
        return self.adapter.stems(self.graphs)

    @property
    def melody_stems(self):
        """The separator melodies go through: the fast int8 graph where the folder has one (on CPU),
        unless ``exact_stems`` (``native_layout.melody_stems_graph``), or None."""
        return self.adapter.stems(self.graphs, melody=True, exact=self.exact_stems)

    def separate_melodies(self, wavs: list[np.ndarray], rngs: list[np.random.Generator]) -> list[np.ndarray]:
        """audiocraft's ``ChromaStemConditioner._get_stemmed_wav`` on collated melodies (mono, chroma rate):
        padded to the longest, separated with one shift per call (drawn from ``rngs[0]``; one per row
        when each row has its own seed), the melody stems summed and mixed down. Silent rows (the null
        melody) stay silent without a Demucs call: HTDemucs maps silence to exact zeros."""
        longest = max(w.shape[0] for w in wavs)
        if longest == 1:  # audiocraft skips Demucs for the 1-sample null wav
            return wavs
        rate = self.manifest.chroma.sample_rate
        padded = np.stack([np.pad(w, (0, longest - w.shape[0])) for w in wavs]).astype(np.float32)
        live = [i for i in range(len(wavs)) if np.any(padded[i])]
        separator = self.melody_stems
        shifts = [separator.draw_shift(rng) for rng in rngs]
        log.info("separating %d melod%s of %.1f s into stems (shift %s)", len(live), "y" if len(live) == 1 else "ies",
                 longest / rate, shifts)
        row_shift = shifts * len(wavs) if len(shifts) == 1 else shifts
        out: list = [None] * len(wavs)
        for shift in dict.fromkeys(row_shift[i] for i in live):
            rows = [i for i in live if row_shift[i] == shift]
            for i, stem in zip(rows, separator.melody(padded[rows], rate, shift)):
                out[i] = stem
        size = next((o.shape[0] for o in out if o is not None), longest)
        return [o if o is not None else np.zeros(size, dtype=np.float32) for o in out]

    def teacher_forced_logits(self, descriptions: Sequence[str | None], codes: np.ndarray,
                              chroma: np.ndarray | None = None, guidance_scale: float = 3.0) -> np.ndarray:
        """Feed ``codes [B, K, T]`` through the loop instead of sampling; return the CFG-combined logits
        the model gave at each step, ``[B, T + max_delay, K, V]``. This is how precision tiers are
        compared on one token stream (``verify``, benchmarks)."""
        forced = self.pattern.delay(np.asarray(codes, dtype=np.int64))
        seen = []

        def choose(s, logits):
            seen.append(logits)
            return forced[:, :, s]

        for _ in StepLoop(self.parts(), list(descriptions), chroma, codes.shape[2], guidance_scale, choose):
            pass
        return np.stack(seen, axis=1)

    def new_stepper(self, rows: int, conditioning: Conditioning, steps: int):
        """A decoder stepper for one window of ``steps`` sequence steps over ``rows`` rows."""
        return self.adapter.new_stepper(self.graphs, rows, conditioning, steps)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """EnCodec codes ``[B, K, T]`` -> float32 audio ``[B, channels, T * hop]``."""
        return self.codec.decode(np.asarray(codes, dtype=np.int64))
