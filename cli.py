"""The ``musicgen-onnx`` command: export, generate, serve, info, verify, bench.

User errors (:class:`MusicGenError`) print one line and exit with code 2; ``generate`` and ``info``
never import torch.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click
import numpy as np

from .runtime.audio import STRATEGIES
from .runtime.errors import MusicGenError
from .runtime.hub import BUNDLED_MODELS, BUNDLED_NAME, BUNDLED_STEMS_NAME
from .runtime.manifest import KV_CACHES, KV_DTYPES
from .runtime.options import MAX_BATCH, duration_frames
from .serve.settings import ServeSettings  # the service's limits and defaults; needs no web stack

BUNDLED_MODEL = BUNDLED_MODELS[BUNDLED_NAME]
BUNDLED_STEMS = BUNDLED_MODELS[BUNDLED_STEMS_NAME]


class _Command(click.Command):
    """Turns every :class:`MusicGenError` into ``error: <one line>`` and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MusicGenError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


class _Group(click.Group):
    """Usage errors (unknown option, bad value, missing argument) as one line, like every other error."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.UsageError as exc:
            click.echo(f"error: {exc.format_message()} (see --help)", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group)
@click.version_option(package_name="musicgen-onnx")
@click.option("-v", "--verbose", is_flag=True, help="Log what the library does (to stderr).")
def main(verbose: bool) -> None:
    """Export MusicGen checkpoints to ONNX and generate music without PyTorch."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")


_LOW_MEMORY = click.option(
    "--low-memory", is_flag=True,
    help="Load the text encoder per call instead of keeping it resident (saves its size, ~1 s a call).")
_EXACT_STEMS = click.option(
    "--exact-stems", is_flag=True,
    help="Separate melodies with the exact fp32 stems graph even if the model has the int8 stems_fast one.")
_NO_STEMS_FAST = click.option(
    "--no-stems-fast", is_flag=True,
    help="Export the exact stems graph only, without the int8 stems_fast.onnx the melody path separates with.")
_MODEL = click.option(
    "--model", "model_dir", default=None,
    help=f"Exported model folder, hub repo org/name, audiocraft name such as 'melody', or '{BUNDLED_NAME}' "
         f"(the bundled tiny model, random weights: the default).")


def _model_source(command):
    """Where --model comes from, the same options for every command that loads a MusicGen by name."""
    for option in reversed([
        click.option("--revision", default=None, help="Hub revision (branch, tag or commit) for --model org/name."),
        click.option("--precision", default=None,
                     help="fp32/fp16/int8/int4: a hub repo's sub-folder, the tier to export a name in, or the "
                          "variant of an optimum / transformers.js folder (also quantized, q4)."),
        click.option("--export", "export_missing", is_flag=True,
                     help="Export an audiocraft name that is not in the cache yet (needs the export extra)."),
    ]):
        command = option(command)
    return command


def _bundled_notice() -> None:
    click.echo(f"using the bundled tiny model '{BUNDLED_NAME}' ({BUNDLED_MODEL}): random weights, so expect noise, "
               f"not music", err=True)


@main.command(cls=_Command)
@click.argument("checkpoint")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--precision", default="fp32", show_default=True,
              help="fp32 (reference), fp16 (CUDA), int8 or int4 (CPU, weight-only).")
@click.option("--opset", default=17, show_default=True, type=int)
@click.option("--no-validate", is_flag=True, help="Skip checking each graph against its torch module.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle (*.bin) weights; they can run code when loaded.")
@click.option("--text-encoder", default=None, type=click.Path(exists=True, file_okay=False),
              help="audiocraft checkpoints: the T5 folder (e.g. t5-base) or a transformers MusicGen folder to take it from.")
@click.option("--codec", default=None, type=click.Path(exists=True, file_okay=False),
              help="audiocraft checkpoints whose compression_state_dict.bin only names the codec: a transformers "
                   "EnCodec (or MusicGen) folder.")
@click.option("--reference", type=click.Choice(["audiocraft", "transformers"]), default=None,
              help="Whose behaviour to reproduce where they differ (batched text-only prompts of unequal length); "
                   "default: the checkpoint's format.")
@click.option("--kv-cache", type=click.Choice(KV_CACHES), default=None,
              help="static: in-place cache buffers (GroupQueryAttention; CPU fp32, CUDA fp16; head sizes that are multiples "
                   "of 8); concat: portable graph. Default: static where the head size allows it, else concat.")
@click.option("--kv-dtype", type=click.Choice(KV_DTYPES), default=None,
              help="KV cache precision for int8/int4 (default fp32): fp16 halves the cache, ~10% slower on CPU.")
@click.option("--atol", type=float, default=None,
              help="Validation: absolute tolerance for every graph (default per graph and precision).")
@click.option("--rtol", type=float, default=None,
              help="Validation: tolerance relative to each output's max |value| (default per graph and precision).")
@click.option("--stems", "stems", default=None, metavar="DEMUCS",
              help="Add Demucs stem separation (stems.onnx) for melodies, as audiocraft: a demucs hub folder "
                   "(bag .yaml + .safetensors), a .th file (with --allow-pickle) or a name such as htdemucs (online).")
@click.option("--block-size", type=int, default=None,
              help="int8/int4: weights per quantisation scale, 16/32/64/128/256 (default 32); coarser is faster on CPU "
                   "and less precise (melody int4, 128: prefill ~1.35x, steps ~1.25x).")
@_NO_STEMS_FAST
def export(checkpoint, out_dir, precision, opset, no_validate, force, allow_pickle, text_encoder, codec, reference,
           kv_cache, kv_dtype, atol, rtol, stems, block_size, no_stems_fast):
    """Export CHECKPOINT (a transformers folder, a hub id in the Hugging Face cache, or an audiocraft folder /
    solver checkpoint.th) to OUT_DIR."""
    try:
        from .export.exporter import export as run_export
    except ImportError as exc:
        raise MusicGenError(f"export needs the 'export' extra (pip install 'musicgen-onnx[export]'): {exc}") from None
    run_export(checkpoint, out_dir, precision=precision, opset=opset, validate_graphs=not no_validate,
               force=force, allow_pickle=allow_pickle, kv_cache=kv_cache, kv_dtype=kv_dtype, atol=atol, rtol=rtol,
               text_encoder=text_encoder, codec=codec, reference=reference,
               stems=stems, stems_fast=not no_stems_fast, block_size=block_size,
               progress=lambda msg: click.echo(msg, err=True))


@main.command("export-stems", cls=_Command)
@click.argument("demucs")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--opset", default=17, show_default=True, type=int)
@click.option("--no-validate", is_flag=True, help="Skip checking the graph against the torch model.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--allow-pickle", is_flag=True, help="Accept a pickled .th model; it can run code when loaded.")
@_NO_STEMS_FAST
def export_stems(demucs, out_dir, opset, no_validate, force, allow_pickle, no_stems_fast):
    """Export the Demucs model DEMUCS (hub folder, .th, or a name demucs resolves) to a stems-only OUT_DIR."""
    try:
        from .export.stems import export_stems_folder
    except ImportError as exc:
        raise MusicGenError(f"export-stems needs the 'export' extra (pip install 'musicgen-onnx[export]'): {exc}") from None
    export_stems_folder(demucs, out_dir, opset=opset, validate_graphs=not no_validate, force=force,
                        allow_pickle=allow_pickle, stems_fast=not no_stems_fast,
                        progress=lambda msg: click.echo(msg, err=True))


@main.command(cls=_Command)
@click.argument("prompts", nargs=-1, required=True)
@_MODEL
@_model_source
@click.option("--melody", multiple=True, type=click.Path(), help="Melody file: one for all prompts or one per prompt.")
@click.option("--duration", type=float, default=None, help="Seconds of audio (model default: 15).")
@click.option("--seed", type=int, default=None)
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--temperature", type=float, default=None)
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale (default 3).")
@click.option("--greedy", is_flag=True, help="Argmax decoding (deterministic, what parity tests use).")
@click.option("--normalize", type=click.Choice(STRATEGIES), default="loudness", show_default=True)
@click.option("-o", "--output", type=click.Path(), default=None, help="Output file (one prompt); format from suffix.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None, help="Folder for one file per prompt.")
@click.option("--provider", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--extend-stride", type=float, default=None,
              help="Past 30 s: seconds each new window advances (audiocraft's extend_stride, default 18).")
@click.option("--continue", "continue_from", type=click.Path(), default=None,
              help="Audio file to continue; the output includes it and --duration is the total length.")
@click.option("--stream", is_flag=True, help="Write audio while generating (1 s chunks); normalised at the end.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--no-stems", is_flag=True,
              help="Take the melody's chroma from the full mix even if the model has stems (transformers' way).")
@_EXACT_STEMS
@_LOW_MEMORY
def generate(prompts, model_dir, revision, precision, export_missing, melody, duration, seed, top_k, top_p,
             temperature, guidance, greedy, normalize, output, out_dir, provider, extend_stride, continue_from, stream,
             quiet, no_stems, exact_stems, low_memory):
    """Generate music for each PROMPT and write audio files."""
    from .runtime.audio import check_output_path, save_audio
    from .runtime.errors import InvalidInputError
    from .runtime.musicgen import MusicGen

    if output and out_dir:
        raise InvalidInputError("give either --output or --out-dir, not both")
    if output and len(prompts) > 1:
        raise InvalidInputError(f"--output names one file but {len(prompts)} prompts were given; use --out-dir")
    if continue_from and melody:
        raise InvalidInputError("--continue and --melody cannot be combined (audiocraft continues with the null melody)")
    created = _make_folder(Path(out_dir)) if out_dir else []
    targets = _targets(prompts, output, out_dir)
    try:
        for target in targets:  # refuse before spending minutes on generation
            check_output_path(target)
        if model_dir is None:
            model_dir = BUNDLED_MODEL
            _bundled_notice()
        t0 = time.perf_counter()
        model = MusicGen.from_pretrained(model_dir, providers=provider, low_memory=low_memory, revision=revision,
                                         precision=precision, export=export_missing, exact_stems=exact_stems)
        load_s = time.perf_counter() - t0
        options = dict(options=model.options.updated(
            duration=duration, seed=seed, top_k=top_k, top_p=top_p, temperature=temperature, guidance_scale=guidance,
            greedy=greedy or None, extend_stride=extend_stride), stems=False if no_stems else None)
        if continue_from:
            prompt_codes = model.encode_prompt(continue_from)
            options["prompt_codes"] = np.repeat(prompt_codes, len(prompts), axis=0)
        t_gen = time.perf_counter()
        if stream:
            samples = _stream(model, list(prompts), list(melody) or None, options, targets, normalize, quiet, t_gen)
        else:
            audio = model.generate(list(prompts), melody=list(melody) or None, progress=not quiet, **options)
            for wav, target in zip(audio, targets):
                save_audio(target, wav, model.sample_rate, normalize)
            samples = audio.shape[-1]
        for target in targets:
            click.echo(str(target))
        if not quiet:
            total = time.perf_counter() - t0
            click.echo(f"{len(targets)} x {samples / model.sample_rate:.2f} s of audio in {total:.2f} s "
                       f"(model load {load_s:.2f} s)", err=True)
    except BaseException:
        for folder in reversed(created):  # a failed run leaves no folder it made behind
            try:
                folder.rmdir()
            except OSError:  # not empty: something else wrote there
                break
        raise


def _stream(model, prompts, melody, options, targets, normalize, quiet, t_gen) -> int:
    """Write each chunk as it comes; report the time to first audio. Returns samples per file."""
    from .runtime.audio import StreamingWriter

    writers = [StreamingWriter(t, model.sample_rate, model.audio_channels) for t in targets]
    samples = 0
    try:
        for chunk in model.generate_stream(prompts, melody=melody, progress=not quiet, **options):
            if samples == 0 and chunk.shape[2] and not quiet:
                lead = "\n" if sys.stderr.isatty() else ""  # end the terminal's progress line
                click.echo(f"{lead}first audio after {time.perf_counter() - t_gen:.2f} s", err=True)
            for writer, wav in zip(writers, chunk):
                writer.write(wav)
            samples += chunk.shape[2]
        for writer in writers:
            writer.commit(normalize)
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    return samples


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones this call created, outermost first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from .runtime.errors import InvalidInputError

        raise InvalidInputError(f"--out-dir {str(folder)!r} cannot be created ({exc.strerror or exc})") from None
    return missing


def _targets(prompts, output, out_dir) -> list[Path]:
    if output:
        return [Path(output)]
    folder = Path(out_dir) if out_dir else Path(".")
    names = []
    for i, prompt in enumerate(prompts):
        slug = "".join(c if c.isalnum() else "_" for c in prompt.lower())[:40].strip("_") or "prompt"
        names.append(folder / f"{i:02d}_{slug}.wav")
    return names


@main.command(cls=_Command)
@click.argument("file", type=click.Path())
@click.option("--model", "model_dir", type=click.Path(), default=None,
              help=f"A stems folder (export-stems), a melody folder exported with --stems, or '{BUNDLED_STEMS_NAME}' "
                   f"(the bundled tiny stems model, random weights: the default).")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Folder for SOURCE.wav per stem (default: FILE's name + '_stems' here).")
@click.option("--seed", type=int, default=None, help="Seed of the random shift (apply_model's shifts=1).")
@click.option("--provider", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--quiet", is_flag=True, help="No progress.")
def stems(file, model_dir, out_dir, seed, provider, quiet):
    """Separate FILE into drums, bass, other and vocals (float WAV at 44.1 kHz stereo for htdemucs)."""
    from .runtime.generation import StderrProgress
    from .runtime.hub import local_folder
    from .runtime.stems import StemSeparator

    if model_dir is None:
        model_dir = BUNDLED_STEMS
        click.echo(f"using the bundled tiny stems model '{BUNDLED_STEMS_NAME}' ({model_dir}): random weights, so "
                   f"expect noise, not stems", err=True)
    else:
        model_dir = local_folder(model_dir) or model_dir  # 'tiny-stems' names the bundled folder
    folder = Path(out_dir) if out_dir else Path(f"{Path(file).stem or 'audio'}_stems")
    separator = StemSeparator.from_folder(model_dir, providers=provider)
    report = StderrProgress("separating", "segments")
    created = _make_folder(folder)
    try:
        written = separator.separate_file(file, folder, seed=seed, progress=None if quiet else report)
    except BaseException:
        for made in reversed(created):
            try:
                made.rmdir()
            except OSError:
                break
        raise
    for path in written:
        click.echo(str(path))


@main.command(cls=_Command)
@_MODEL
@_model_source
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-batch", default=ServeSettings.max_batch, show_default=True, type=int,
              help=f"Most requests run as one generate() call (1 to {MAX_BATCH}).")
@click.option("--max-wait-ms", default=ServeSettings.max_wait_ms, show_default=True, type=float,
              help="Longest a request waits for batch mates.")
@click.option("--max-queue", default=ServeSettings.max_queue, show_default=True, type=int,
              help="Waiting requests before new ones get 503 + Retry-After.")
@click.option("--max-duration", default=ServeSettings.max_duration, show_default=True, type=float,
              help="Longest clip a request may ask for, in seconds.")
@click.option("--provider", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--stems", "stems_dir", type=click.Path(), default=None,
              help=f"Stems folder (or '{BUNDLED_STEMS_NAME}') for POST /v1/stems and the page's stems panel "
                   "(default: the model's own if it was exported with --stems; with the bundled model, the "
                   "bundled tiny stems model).")
@click.option("--ray", "use_ray", is_flag=True, help="Run as a Ray Serve deployment on a local Ray instance "
                                                    "(extra 'ray'); each replica batches its own requests.")
@click.option("--replicas", default=2, show_default=True, type=click.IntRange(1, 64), help="Ray Serve replicas.")
@click.option("--replica-cpus", type=click.FloatRange(0, 1024, min_open=True), default=None,
              help="CPUs Ray reserves per replica (fractions allowed; default: the cluster's CPUs shared, at most "
                   "1 each). More than the cluster has is refused.")
@click.option("--ray-address", default=None, help="Join this Ray cluster (e.g. 'auto' or host:6379) instead of "
                                                  "starting a private one; RAY_ADDRESS alone is not followed.")
@click.option("--api-key", envvar="MUSICGEN_API_KEY", default=None, show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on /v1/* and /metrics (16+ characters).")
@click.option("--cors-origin", "cors_origins", multiple=True, help="Browser origin allowed to call the API "
                                                                   "(repeatable; '*': any).")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS certificate (PEM).")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS private key (PEM).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one object per line (time, level, logger, message, request_id).")
@click.option("--graceful-timeout", default=10.0, show_default=True, type=click.FloatRange(0, 3600, min_open=True),
              help="On SIGTERM, after the queue is drained: seconds open connections get before they are closed.")
@click.option("--max-connections", default=1000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Open connections before new requests get a quick 503 (lowered to fit the open-file limit).")
@click.option("--body-timeout", default=30.0, show_default=True, type=click.FloatRange(0, 3600, min_open=True),
              help="Seconds a request body may take to arrive (408 after); request headers get --header-timeout.")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0, 3600, min_open=True))
@click.option("--stream-stall-timeout", default=30.0, show_default=True,
              type=click.FloatRange(0, 3600, min_open=True),
              help="A streaming client that accepts no bytes this long is dropped (its row freed).")
@_EXACT_STEMS
@_LOW_MEMORY
def serve(model_dir, revision, precision, export_missing, host, port, max_batch, max_wait_ms, max_queue, max_duration,
          provider, stems_dir, use_ray, replicas, replica_cpus, ray_address, api_key, cors_origins, ssl_certfile,
          ssl_keyfile, log_format, graceful_timeout, max_connections, body_timeout, header_timeout,
          stream_stall_timeout, exact_stems, low_memory):
    """Serve the model over HTTP: POST /v1/generate, /v1/continue, /v1/stems, /v1/chroma; GET / (the page),
    /v1/model, /v1/stems, /v1/results/ID, /health (/live, /ready), /metrics, /openapi.json."""
    try:
        import uvicorn  # noqa: F401

        from .serve import create_app
        import starlette  # noqa: F401  (checked here so a missing extra is one line, before the model loads)
    except ImportError as exc:
        raise MusicGenError(f"serve needs the 'serve' extra (pip install 'musicgen-onnx[serve]'): {exc}") from None
    from .runtime.musicgen import MusicGen

    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             max_duration=max_duration, body_timeout_s=body_timeout,
                             stream_stall_s=stream_stall_timeout, api_key=api_key,
                             cors_origins=tuple(cors_origins)).check()
    from .serve.server import ServerOptions, run

    options = ServerOptions(max_connections=max_connections, header_timeout_s=header_timeout,
                            graceful_timeout_s=graceful_timeout, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                            log_format=log_format).check()
    if model_dir is None:
        model_dir = BUNDLED_MODEL
        _bundled_notice()
        stems_dir = BUNDLED_STEMS if stems_dir is None else stems_dir
    if stems_dir is not None:
        from .runtime.hub import local_folder

        stems_dir = local_folder(stems_dir) or stems_dir  # 'tiny-stems' names the bundled folder, as for `stems`
    given = {name for name in ("replica_cpus", "ray_address")
             if click.get_current_context().get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    if use_ray:
        from .runtime.hub import resolve_model
        from .runtime.session import resolve_providers

        # each replica loads a folder: resolve (and export) a name here, once
        model_dir = resolve_model(model_dir, revision, precision, export_missing, resolve_providers(provider))
        _serve_ray(model_dir, host, port, settings, options, replicas, replica_cpus, ray_address, provider,
                   low_memory, stems_dir, exact_stems)
        return
    if given & {"replica_cpus", "ray_address"}:
        raise MusicGenError("--replica-cpus and --ray-address work with --ray only")
    model = MusicGen.from_pretrained(model_dir, providers=provider, low_memory=low_memory, revision=revision,
                                     precision=precision, export=export_missing, exact_stems=exact_stems)
    separator = None
    if stems_dir is not None:
        from .runtime.stems import StemSeparator

        separator = StemSeparator.from_folder(stems_dir, providers=provider)
    app = create_app(model, settings, separator)
    scheme = "https" if ssl_certfile else "http"
    click.echo(f"serving {model_dir} on {scheme}://{host}:{port}/ (Ctrl-C or SIGTERM: finish queued requests, then "
               f"{graceful_timeout:g} s for open connections, stop)", err=True)
    run(app, host, port, options)


def _serve_ray(model_dir, host, port, settings, server_options, replicas, replica_cpus, ray_address, provider,
               low_memory, stems_dir=None, exact_stems=False):
    """``serve --ray``: the plain server's socket and options (cap, deadlines, TLS, logs, grace) in front of
    Ray Serve's proxy on loopback (serve/ray_front.py)."""
    import os

    from .serve.ray_app import RayOptions, fit_replica_cpus, run as run_ray

    if ray_address is None:  # a private cluster gets this machine's CPUs: refused before Ray is even imported
        fit_replica_cpus(replicas, replica_cpus, os.cpu_count() or 1)
    try:
        from ray import serve as _  # noqa: F401
    except ImportError as exc:
        raise MusicGenError(f"--ray needs the 'ray' extra (pip install 'musicgen-onnx[ray]'): {exc}") from None

    options = RayOptions(replicas=replicas, replica_cpus=replica_cpus, address=ray_address,
                         graceful_timeout_s=server_options.graceful_timeout_s, log_format=server_options.log_format,
                         stems_dir=None if stems_dir is None else str(stems_dir))
    threads = max(1, (os.cpu_count() or 1) // replicas)  # replicas share the machine's cores
    where = f"the Ray cluster at {ray_address}" if ray_address else "a private Ray cluster"
    click.echo(f"starting {replicas} Ray Serve replicas of {model_dir} on {where} (SIGTERM or Ctrl-C: stop)",
               err=True)

    def ready(cpus):
        scheme = "https" if server_options.ssl_certfile else "http"
        click.echo(f"ready: {replicas} replicas x {cpus:g} CPU x {threads} thread(s) on {scheme}://{host}:{port}/ "
                   f"(SIGTERM or Ctrl-C: drain, then stop)", err=True)

    run_ray(str(model_dir), host, port, settings, options, server_options, provider, threads, low_memory,
            ready=ready, exact_stems=exact_stems)


@main.command(cls=_Command)
@click.argument("folder", type=click.Path())
@click.argument("checkpoint")
@click.option("--frames", default=50, show_default=True, type=click.IntRange(4, 1500), help="Greedy frames to compare.")
def verify(folder, checkpoint, frames):
    """Check an exported FOLDER (any precision) against its source CHECKPOINT; exit 1 on a missed bound."""
    try:
        from .export.verify import verify as run_verify
    except ImportError as exc:
        raise MusicGenError(f"verify needs the 'export' extra (pip install 'musicgen-onnx[export]'): {exc}") from None
    precision, checks = run_verify(folder, checkpoint, frames)
    click.echo(f"{folder} ({precision}) vs {checkpoint}, {frames} greedy frames, CFG 3")
    click.echo(f"{'check':40}{'value':>12}{'bound':>12}  result")
    for c in checks:
        sign = ">=" if c.higher_is_better else "<="
        click.echo(f"{c.name:40}{c.value:>12.4g}{sign:>4}{c.bound:>8.3g}  {'ok' if c.ok else 'FAIL'}")
    if not all(c.ok for c in checks):
        raise SystemExit(1)


@main.command(cls=_Command)
@click.argument("folder", type=click.Path())
@click.option("--seconds", default=5.0, show_default=True, type=float, help="Audio to generate per run.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, MAX_BATCH))
@click.option("--provider", default="auto", show_default=True)
@click.option("--threads", default=None, type=int, help="onnxruntime intra-op threads (default: all cores).")
@_LOW_MEMORY
def bench(folder, seconds, batch, provider, threads, low_memory):
    """Time generation with FOLDER on this machine: load time, steps/s, real-time factor, peak RSS."""
    from .runtime.musicgen import MusicGen

    t0 = time.perf_counter()
    model = MusicGen.from_pretrained(folder, providers=provider, verify_hashes=False, threads=threads,
                                     low_memory=low_memory)
    load = time.perf_counter() - t0
    model.generate(["warm-up"], duration=min(seconds, 0.5))
    t0 = time.perf_counter()
    audio = model.generate([f"benchmark prompt {i}" for i in range(batch)], duration=seconds, seed=0)
    total = time.perf_counter() - t0
    steps = duration_frames(seconds, model.frame_rate) + model.manifest.max_delay
    audio_s = audio.shape[-1] / model.sample_rate
    click.echo(f"model          {folder} ({model.manifest.graphs['decoder'].precision}, {model.manifest.kv_cache} "
               f"KV cache) on {model.providers[0]}")
    click.echo(f"load           {load:.2f} s")
    click.echo(f"generate       {batch} x {audio_s:.2f} s of audio in {total:.2f} s: {steps / total:.1f} steps/s, "
               f"real-time factor {batch * audio_s / total:.3f}")
    click.echo(f"peak RSS       {_peak_rss_mb():.0f} MB")


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
    return (peak if sys.platform == "darwin" else peak * 1024) / 1e6


@main.command(cls=_Command)
@click.argument("folder", required=False, default=None)
@click.option("--no-hash", is_flag=True, help="Check that files exist with their sizes, skip sha256 (fast on big models).")
@click.option("--precision", default=None,
              help="optimum / transformers.js folders: the variant to describe; names and hub repos: the tier.")
def info(folder, no_hash, precision):
    """Describe a model (FOLDER, a name such as 'tiny-melody' or 'melody', or a hub repo org/name; default:
    the bundled tiny model, as generate and serve) and verify its files."""
    from .runtime.folder_kind import STEMS, folder_kind
    from .runtime.hub import resolve_model
    from .runtime.layouts import describe, describe_stems, open_layout
    from .runtime.manifest import load_stems_manifest, verify_graph_files

    folder = resolve_model(BUNDLED_NAME if folder is None else folder, precision=precision)

    if folder_kind(folder) == STEMS:
        s = load_stems_manifest(folder)
        verify_graph_files(folder, s.graphs, hash_files=not no_hash)
        click.echo("\n".join([
            f"model folder   {folder}", f"layout         musicgen-onnx stems folder (format version {s.format_version})",
            f"source         {s.source.get('demucs', '?')}", _stems_line(describe_stems(s.stems)),
            *(f"graph          {name:<17} {g.precision:<5} {g.size_bytes / 1e6:9.2f} MB  {', '.join(g.files)}"
              for name, g in s.graphs.items()),
            "files          " + ("sizes verified" if no_hash else "sizes and sha256 verified")]))
        return
    layout = open_layout(folder, precision, verify_hashes=not no_hash)
    f = describe(layout)
    d, dec, c = f["defaults"], f["decoder"], f["chroma"]
    lines = [
        f"model folder   {folder}",
        f"layout         {f['layout']}",
        f"variant        {f['variant']}" if f["variant"] else None,
        f"source         {f['checkpoint'] or '?'}" + (f" @ {f['revision']}" if f["revision"] else "")
        + (f" ({f['source_format']})" if f["source_format"] else ""),
        f"family         {f['family']} ({'prefix' if f['melody'] else 'cross-attention'} conditioning)",
        f"decoder        {dec['layers']} layers, {dec['heads']} heads, hidden {dec['hidden_size']}, "
        f"{f['codebooks']} codebooks x {f['codebook_size']}, delays {dec['delays']}, {f['kv_cache']} KV cache "
        f"({f['kv_dtype'] or 'dtype not recorded'})",
        f"audio          {f['sample_rate']} Hz, {f['channels']} channel(s), {f['frame_rate']:g} frames/s, "
        f"max {f['window_s']:g} s",
        f"chroma         n_fft {c['n_fft']}, hop {c['hop_length']}, {c['bins']} bins, {c['frames']} frames" if c else None,
        _stems_line(f["stems"]) + " (melodies are separated first; --no-stems: full mix)" if f["stems"] else None,
        _MELODY_STEMS[f["melody_stems"]] if f["melody_stems"] else None,
        f"defaults       duration {d['duration']:g} s, top_k {d['top_k']}, top_p {d['top_p']:g}, "
        f"temperature {d['temperature']:g}, guidance {d['guidance']:g}, greedy {d['greedy']}",
    ]
    for name, g in f["graphs"].items():
        lines.append(f"graph          {name:<17} {g['precision']:<5} {g['size_bytes'] / 1e6:9.2f} MB  "
                     f"{', '.join(g['files'])}")
    lines += [f"lacks          {what}" for what in f["lacks"]]
    lines.append(f"files          {layout.files_checked(not no_hash)}")
    click.echo("\n".join(line for line in lines if line is not None))


_MELODY_STEMS = {  # describe()'s melody_stems: the graph melodies are separated with on CPU, by default
    "stems": "melody stems   exact tier (stems, fp32)",
    "stems_fast": "melody stems   fast tier (stems_fast, int8: same chroma as the exact graph on >= 99% of frames; "
                  "generate/serve --exact-stems: the exact graph); the stems command always uses the exact graph",
}


def _stems_line(p: dict) -> str:
    return (f"stems          Demucs: {', '.join(p['sources'])} at {p['sample_rate']} Hz, {p['channels']} channel(s), "
            f"segments of {p['segment_s']:g} s, n_fft {p['n_fft']}, melody = {' + '.join(p['melody_stems'])}")


if __name__ == "__main__":
    main()
