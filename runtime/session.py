"""onnxruntime sessions: provider choice, session settings, and loading with errors a user can act on.

Every session of the project (the runtime's, and the exporter's validation) is opened by
:func:`open_session` with a :class:`SessionSettings`, so both measure the same thing.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import capture, roles
from .errors import InvalidInputError, ModelFolderError

log = logging.getLogger(__name__)

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
_ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def resolve_providers(providers=None) -> list[str]:
    """``None``/"auto" -> CUDA when onnxruntime-gpu sees a GPU, else CPU; "cpu"; "cuda" (or an explicit
    onnxruntime provider list). Unknown names and CUDA without a GPU are clear errors."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None or providers == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    names = [providers] if isinstance(providers, str) else list(providers)
    resolved = []
    for name in names:
        ort_name = _ORT_NAMES.get(str(name).lower(), name)
        if ort_name not in _ORT_NAMES.values() and ort_name not in available:
            raise InvalidInputError(f"provider {name!r} is unknown; choose one of {', '.join(PROVIDER_CHOICES)}")
        if ort_name not in available:
            raise InvalidInputError(f"provider {name!r} is not available here (onnxruntime offers "
                                    f"{', '.join(available)}); for CUDA install musicgen-onnx[gpu] on a machine with a GPU")
        resolved.append(ort_name)
    if "CPUExecutionProvider" not in resolved:
        resolved.append("CPUExecutionProvider")
    return resolved


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, looked up once (~5 ms a lookup: fine at load, not after every served batch);
    None where there is no glibc."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Give the heap that session creation (or a served batch) freed back to the OS (glibc keeps it
    otherwise).

    onnxruntime parses each graph's protobuf and copies its weights out; the transient copies are
    freed but stay in the process's heap, about 350 MB for musicgen-melody int4 (measured, README).
    A no-op where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def check_memory(what: str, nbytes: int) -> None:
    """Refuse an allocation larger than this machine's physical memory before making it: numbers from a
    crafted manifest or an absurd request end in one line, not in the OOM killer."""
    import os

    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if nbytes > physical:
        raise InvalidInputError(f"{what} would need {nbytes / 1e9:.1f} GB, more than this machine's "
                                f"{physical / 1e9:.1f} GB of memory; ask for a shorter duration or fewer prompts")


@dataclass(frozen=True)
class SessionSettings:
    """How graphs are opened: onnxruntime provider names in order of preference, per-provider options
    (e.g. ``{"CUDAExecutionProvider": {"use_tf32": "0"}}``) and the CPU thread count."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)
    threads: int | None = None
    # Priority-based node order runs each Cast of a weight just before its consumer. The default order
    # runs every such Cast first, so an fp16 graph on CPU (its MatMuls get fp32 copies of their weights)
    # holds all the fp32 copies at once: a 512 MB fp16 test graph peaked at 1.63 GB vs 0.65 GB. The
    # exporter's validation uses it; the runtime does not (small int4 on CPU, alternating under load:
    # 8.3 / 9.4 / 8.0 steps/s vs 8.9 / 9.9 / 10.5 with the default order).
    priority_order: bool = False
    cuda_graph: bool = False  # capture the decoder's steps as CUDA graphs (capture.py; static folders with step inputs)
    device_sampler: bool = False  # pick tokens with the sampling graphs where the logits are (device_sampler.py)

    @classmethod
    def resolve(cls, providers=None, threads: int | None = None, provider_options=None) -> "SessionSettings":
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InvalidInputError(f"threads must be a positive integer, got {threads!r}")
        return cls(tuple(resolve_providers(providers)), dict(provider_options or {}), threads)

    @property
    def device(self) -> str:
        """Where buffers that a graph reads and writes in place belong ("cuda" or "cpu")."""
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"


def open_session(path: Path, settings: SessionSettings = SessionSettings(), graph: str | None = None,
                 arena: bool = False):
    """``graph``: the folder's name for it, which decides whether it may be captured (capture.py).
    ``arena``: for a graph whose every run allocates and frees hundreds of MB (the stems graphs); run it
    through a :class:`Graph` with ``shrink_arena`` so the arena is handed back after each run."""
    import onnxruntime as ort

    opts = session_options(settings, arena)
    providers = capture.provider_options(settings, graph)
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelFolderError(f"{path}: onnxruntime cannot load this graph ({first})") from None


def session_options(settings: SessionSettings = SessionSettings(), arena: bool = False):
    """The runtime's onnxruntime session options (open_session's; benchmarks that profile a graph add
    profiling to these rather than restate them)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # EXTENDED, not ALL: ALL adds CPU layout transforms that cost seconds at load (small fp32 decoder:
    # 5.3 s vs 2.1 s) and measured no faster per step here (fp32 24.0 vs 23.7, int4 69 vs 73 steps/s).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    # No CPU arena: it keeps every activation peak (prefill, the codec's 10 s of audio) for the life of
    # the session and grew by 430 MB on a second melody generation; plain malloc hands large blocks
    # back. Measured no slower: melody int8 with fp16 KV, 10 s, 14.4 vs 13.5 steps/s; small fp32 and
    # int4 within run-to-run noise over four alternating runs.
    # The stems graphs are the exception: a segment allocates ~2 GB in blocks of 1-100 MB, and with
    # plain malloc glibc's dynamic mmap threshold (raised to 32 MiB by the first large free) leaves
    # them in per-thread heaps, fragmented: 12 s of full-size htdemucs stems peaked at 1372-1556 MB
    # from run to run; with the arena 990 MB, and shrunk after every run 759 MB, at the same speed.
    opts.enable_cpu_mem_arena = arena
    if settings.priority_order:
        opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if settings.threads:
        opts.intra_op_num_threads = settings.threads
    return opts


def _ort_errors() -> tuple[type, ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, n) for n in ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph",
                                              "NoSuchFile", "EPFail", "NotImplemented") if hasattr(state, n))


class Graph:
    """A session whose run failures are one-line :class:`ModelFolderError`s naming the graph: the
    manifest and I/O checks at load catch what they can, and a graph from a hostile folder that still
    fails inside onnxruntime must not end in a traceback."""

    def __init__(self, session, where: str, shrink_arena: bool = False):
        self.session = session
        self.where = where
        self._errors = _ort_errors()
        self._run_options = None
        if shrink_arena:  # a session opened with ``arena``: give its unused chunks back after every run
            import onnxruntime as ort

            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def __getattr__(self, name):  # get_inputs, get_outputs, io_binding, ...
        return getattr(self.session, name)

    def _failed(self, exc: Exception) -> ModelFolderError:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return ModelFolderError(f"{self.where} failed in onnxruntime ({first})")

    def run(self, outputs, feeds):
        try:
            return self.session.run(outputs, feeds, self._run_options)
        except self._errors as exc:
            raise self._failed(exc) from None

    def run_with_iobinding(self, binding, run_options=None):
        try:
            return self.session.run_with_iobinding(binding, run_options)
        except self._errors as exc:
            raise self._failed(exc) from None


def open_graph(folder: Path, name: str, path: Path, manifest, settings: SessionSettings,
               capturable: bool = True) -> Graph:
    """The folder's graph ``name`` (at ``path``) as the runtime runs it: its inputs and outputs checked
    against the manifest, its failures one line; the stems graphs (roles.STEMS_GRAPHS) with onnxruntime's
    arena, shrunk after every run (see open_session)."""
    arena = name in roles.STEMS_GRAPHS
    session = open_session(path, settings, name if capturable else None, arena=arena)
    check_graph_io(folder, name, session, manifest)
    return Graph(session, f"{folder}: graph {name}", shrink_arena=arena)


class GraphSessions:
    """The folder's graphs as sessions, opened when first asked for and then kept (the decoder at load,
    optional graphs such as the audio encoder only if a call needs them). ``run_transient`` serves a
    graph the caller does not want resident (``low_memory``'s text encoder): opened, run, released."""

    def __init__(self, folder: Path, manifest, settings: SessionSettings):
        self.folder = folder
        self.manifest = manifest
        self.settings = settings
        self._open: dict = {}
        self._lock = threading.Lock()  # one model serves concurrent calls: open each graph once

    def has(self, name: str) -> bool:
        return name in self.manifest.graphs

    def is_open(self, name: str) -> bool:
        return name in self._open

    def _path(self, name: str) -> Path:
        if not self.has(name):
            raise ModelFolderError(f"{self.folder}: this export has no {name} graph")
        from .manifest import folder_file

        return folder_file(self.folder, self.manifest.graphs[name].file)

    def _open_checked(self, name: str):
        # a decoder that computes its step's values from past_length (older folders) cannot be captured
        capturable = name != "decoder" or self.manifest.step_inputs == "positions"
        return open_graph(self.folder, name, self._path(name), self.manifest, self.settings, capturable)

    def __getitem__(self, name: str):
        with self._lock:
            if name not in self._open:
                self._open[name] = self._open_checked(name)
            return self._open[name]

    def run_transient(self, name: str, outputs: list[str], feeds: dict) -> list:
        if name in self._open:
            return self._open[name].run(outputs, feeds)
        session = self._open_checked(name)
        result = session.run(outputs, feeds)
        del session
        release_freed_memory()
        return result


def expected_dims(name: str, manifest) -> dict[str, dict[int, int]]:
    """Role -> {axis: size} that the graph's declared shapes must agree with, where they are fixed."""
    m = manifest
    if name in roles.STEMS_GRAPHS:
        return stems_dims(m.stems)
    per_side = m.num_codebooks // m.audio_channels
    cache = {r: {1: m.num_heads, 3: m.head_dim} for kind in ("past", "present") for r in roles.layers(kind, m.num_layers)}
    cross = {r: {1: m.num_heads, 3: m.head_dim} for r in roles.layers("cross", m.num_layers)}
    if name == "decoder":
        dims = {roles.TOKEN_IDS: {1: m.num_codebooks}, roles.LOGITS: {1: m.num_codebooks, 2: m.codebook_size},
                roles.PREFIX_EMBEDS: {2: m.hidden_size}, **cache}
        return {**dims, **cross} if not m.is_melody else dims
    if name == "text_encoder":
        if m.is_melody:
            return {roles.CHROMA: {2: m.chroma.num_chroma}, roles.PREFIX: {2: m.hidden_size}}
        return cross
    if name in ("audio_decoder", "audio_encoder"):
        return {roles.AUDIO_CODES: {1: per_side}, roles.AUDIO_VALUES: {1: 1}}
    return {}


def stems_dims(p) -> dict[str, dict[int, int]]:
    """The stems graph's fixed sizes, from :class:`~.manifest.StemsParams` ``p``."""
    from . import roles

    c, s = p.audio_channels, len(p.sources)
    return {roles.STEMS_WAVE: {1: c, 2: p.segment_length}, roles.STEMS_SPEC: {1: 2 * c, 2: p.freqs, 3: p.frames},
            roles.STEMS_TIME: {1: s * c, 2: p.segment_length}, roles.STEMS_FREQ: {1: s * 2 * c, 2: p.freqs, 3: p.frames}}


def check_graph_io(folder, name: str, session, manifest) -> None:
    """The graph declares exactly the tensors the manifest lists, with the sizes the manifest's numbers
    imply: a folder whose graphs disagree with its manifest is refused at load, not mid-generation."""
    info = manifest.graphs[name]
    ins = {i.name: i for i in session.get_inputs()}
    outs = {o.name: o for o in session.get_outputs()}
    where = f"{folder}: graph {name} ({info.file})"
    if set(ins) != set(info.inputs) or set(outs) != set(info.outputs):
        raise ModelFolderError(f"{where} declares inputs {sorted(ins)[:4]}... and outputs {sorted(outs)[:4]}..., "
                               f"not those the manifest lists")
    if name == "decoder" and manifest.kv_dtype is not None:
        want = {"fp16": "tensor(float16)", "fp32": "tensor(float)"}[manifest.kv_dtype]
        past = info.roles.get("past.0.key")
        if past in ins and ins[past].type != want:
            raise ModelFolderError(f"{where}: its KV cache is {ins[past].type}, the manifest says {manifest.kv_dtype}")
    for role, axes in expected_dims(name, manifest).items():
        if not info.has(role):
            continue
        tensor = ins.get(info.roles[role]) or outs.get(info.roles[role])
        shape = tensor.shape if tensor is not None else []
        for axis, size in axes.items():
            got = shape[axis] if axis < len(shape) else None
            if isinstance(got, int) and got != size:
                raise ModelFolderError(f"{where}: {tensor.name} has size {got} on axis {axis}, the manifest implies "
                                       f"{size}")
