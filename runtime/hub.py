"""Where a model comes from: a local folder, a Hugging Face hub repo, or an audiocraft name.

``resolve_model`` turns what a user typed into a local model folder, the way audiocraft's
``get_pretrained('melody')`` and optimum's ``from_pretrained(..., export=True)`` meet users:

* an existing folder is used as it is;
* a bundled model's name ('tiny-melody', 'tiny-stems': random weights, shipped in the package) is its
  folder, offline;
* an audiocraft name ('melody', 'small', 'stereo-large', 'facebook/musicgen-melody', ...) is an
  exported folder in this project's cache (``MUSICGEN_ONNX_HOME``, default ``~/.cache/musicgen-onnx``),
  made on demand by the exporter when asked to (``export=True``), otherwise named in the error with the
  command that makes it;
* any other ``org/name`` is a hub repo holding an exported folder (at its root, or one sub-folder per
  precision), fetched with ``huggingface_hub`` into its normal cache (``HF_HOME``, ``HF_HUB_OFFLINE``,
  tokens and revisions as the hub library handles them): the manifest first, then exactly the files it
  lists. The runtime then checks every file's size and sha256 as for any folder. A name that could be a
  missing local folder too ("models/x" from another directory) is answered naming both readings, and
  an offline machine (``HF_HUB_OFFLINE``, or no answer from the hub within a second) reads the hub
  cache only instead of waiting on retries.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import getproxies

from .errors import InvalidInputError, ModelFolderError
from .manifest import MANIFEST_NAME, PRECISIONS

log = logging.getLogger(__name__)

# audiocraft's names (MusicGen.get_pretrained) -> the checkpoint each exports from
CHECKPOINTS = {name: f"facebook/musicgen-{name}" for name in (
    "small", "medium", "large", "melody", "melody-large", "stereo-small", "stereo-medium", "stereo-large",
    "stereo-melody", "stereo-melody-large")}
DEFAULT_NAME = "facebook/musicgen-melody"  # audiocraft's get_pretrained default
_MODELS = Path(__file__).resolve().parent.parent / "models"
BUNDLED_NAME = "tiny-melody"  # what generate, serve and info use when no model is named
BUNDLED_STEMS_NAME = "tiny-stems"  # the stems command's default
BUNDLED_MODELS = {name: _MODELS / name for name in (BUNDLED_NAME, BUNDLED_STEMS_NAME)}
PROBE_SECONDS = 0.8  # how long the hub may take to accept a connection before it counts as unreachable
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def cache_home() -> Path:
    """Exported folders made on demand live here: ``MUSICGEN_ONNX_HOME`` or the user's cache folder."""
    if os.environ.get("MUSICGEN_ONNX_HOME"):
        return Path(os.environ["MUSICGEN_ONNX_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "musicgen-onnx"


def default_precision(providers) -> str:
    """fp16 on CUDA (its GroupQueryAttention has no fp32 kernel), int8 on CPU (10x PyTorch, near-fp32 quality)."""
    return "fp16" if providers and providers[0] == "CUDAExecutionProvider" else "int8"


def checkpoint_of(name: str) -> str | None:
    if name in CHECKPOINTS:
        return CHECKPOINTS[name]
    return name if name in CHECKPOINTS.values() else None


def local_folder(model: str | os.PathLike) -> Path | None:
    """``model`` as a folder here, else as a bundled model's name (a folder of that name wins), else None.
    An empty name is refused: ``Path("")`` is the current directory, which would be read as the model."""
    if not str(model).strip():
        raise InvalidInputError(f"the model is empty ({str(model)!r}): give a model folder, a bundled model "
                                f"({', '.join(BUNDLED_MODELS)}), an audiocraft name such as 'melody' or a hub "
                                f"repo id 'org/name'")
    path = Path(model)
    if path.is_dir():
        return path
    return BUNDLED_MODELS.get(str(model))


def resolve_model(model: str | os.PathLike, revision: str | None = None, precision: str | None = None,
                  export: bool = False, providers=None, progress=None) -> Path:
    """A local folder to load for ``model`` (see the module docstring); one-line errors otherwise."""
    local = local_folder(model)
    if local is not None:
        return local
    path, name = Path(model), str(model)
    if precision is not None and precision not in PRECISIONS:
        raise ModelFolderError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    checkpoint = checkpoint_of(name)
    if checkpoint is not None:
        return _exported(checkpoint, precision or default_precision(providers), export, progress)
    if not _REPO_ID.fullmatch(name) or ".." in name or path.parent.is_dir():  # models/x: a folder that is missing
        what = "is not a directory" if path.exists() else "does not exist"
        raise ModelFolderError(f"model folder {name!r} {what} ({path.absolute()}); nor is it a bundled model "
                               f"({', '.join(BUNDLED_MODELS)}), an audiocraft name such as 'melody', or a hub "
                               f"repo id 'org/name'")
    return _from_hub(name, revision, precision)


def _no_folder(name: str) -> str:
    """The local reading of a name that also reads as a hub repo id, for errors that give both."""
    return f"no folder {name!r} under the current directory ({Path.cwd()}), and "


def hub_offline() -> str | None:
    """Why the hub cannot be asked (``HF_HUB_OFFLINE``, or no connection within :data:`PROBE_SECONDS`
    to the endpoint or the HTTPS proxy), or None. The probe runs on a daemon thread so that a DNS
    lookup that hangs costs no more than the probe's time either."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "offline: HF_HUB_OFFLINE is set"
    target = urlparse(getproxies().get("https") or constants.ENDPOINT)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    answered: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
            answered.append(True)
        except (OSError, ValueError, TypeError):  # refused, unreachable, no such host, a malformed endpoint
            pass

    thread = threading.Thread(target=probe, daemon=True, name="hub-probe")
    thread.start()
    thread.join(PROBE_SECONDS)
    return None if answered else f"the hub cannot be reached: no answer from {host}:{port} within {PROBE_SECONDS:g} s"


def _exported(checkpoint: str, precision: str, export: bool, progress) -> Path:
    folder = cache_home() / f"{checkpoint.replace('/', '--')}-{precision}"
    if (folder / MANIFEST_NAME).is_file():  # the exporter renames a finished folder into place: complete
        return folder
    command = f"musicgen-onnx export {checkpoint} {folder} --precision {precision}"
    if not export:
        raise ModelFolderError(f"{checkpoint} ({precision}) is not exported yet; pass export=True (CLI: --export, "
                               f"needs the 'export' extra) or run: {command}")
    run_export = _exporter(checkpoint)
    log.info("exporting %s (%s) into %s", checkpoint, precision, folder)
    return run_export(checkpoint, folder, precision=precision, progress=progress)


def _exporter(checkpoint: str):
    """The exporter, found through the ``musicgen_onnx.exporters`` entry point that the package declares:
    the runtime never imports the export stage (it needs torch), it only asks for it by name."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="musicgen_onnx.exporters") if ep.name == "transformers"]
    try:
        if not found:
            raise ImportError("no exporter is registered")
        return found[0].load()
    except ImportError as exc:
        raise ModelFolderError(f"exporting {checkpoint} needs the 'export' extra (pip install "
                               f"'musicgen-onnx[export]'): {exc}") from None


def _hub_errors():
    from huggingface_hub import errors

    return errors


def _from_hub(repo: str, revision: str | None, precision: str | None) -> Path:
    try:
        from huggingface_hub import constants
    except ImportError:
        raise ModelFolderError(f"model {repo!r}: {_no_folder(repo)}reading it as a hub repo id needs the 'hub' "
                               f"extra: pip install 'musicgen-onnx[hub]'") from None
    offline = hub_offline()
    where = f"hub repo {repo!r}" + (f" @ {revision}" if revision else "")
    not_cached = ModelFolderError(f"model {repo!r}: {_no_folder(repo)}{where} is not in the local Hugging Face "
                                  f"cache ({offline or 'the hub cannot be reached'})")
    sub = f"{precision}/" if precision else ""
    if offline:
        if not (Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}").is_dir():
            raise not_cached  # before importing the cache machinery: over a tenth of a second
        return _cached_snapshot(repo, revision, sub, constants.HF_HUB_CACHE, not_cached, f"{where} ({offline})")
    from huggingface_hub import hf_hub_download, snapshot_download

    errors = _hub_errors()
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would bury the one line this call ends with
    try:
        manifest_path = Path(hf_hub_download(repo, f"{sub}{MANIFEST_NAME}", revision=revision))
        from .manifest import load_manifest

        manifest = load_manifest(manifest_path.parent)
        files = [f"{sub}{rel}" for rel in (MANIFEST_NAME, *manifest.named_files)]
        snapshot = Path(snapshot_download(repo, revision=revision, allow_patterns=files))
    except errors.LocalEntryNotFoundError:
        raise not_cached from None
    except errors.RepositoryNotFoundError:
        raise ModelFolderError(f"model {repo!r}: {_no_folder(repo)}the hub has no repository {repo!r} (or it is "
                               f"private: log in with `hf auth login`)") from None
    except errors.RevisionNotFoundError:
        raise ModelFolderError(f"{where}: no such revision") from None
    except errors.EntryNotFoundError:
        raise ModelFolderError(f"{where}: has no {sub}{MANIFEST_NAME}"
                               + ("" if precision else " at its root (pass --precision for a sub-folder)")
                               + "; not a musicgen-onnx model repo") from None
    except (errors.HfHubHTTPError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelFolderError(f"{where}: download failed ({first})") from None
    finally:
        hub_log.setLevel(level)
    return snapshot / sub if sub else snapshot


def _cached_snapshot(repo: str, revision: str | None, sub: str, cache: str, not_cached: ModelFolderError,
                     where: str) -> Path:
    """The cached snapshot's folder, found on disk alone. Not ``hf_hub_download(local_files_only=True)``:
    huggingface_hub 2.x builds its request headers even then, and the first build fetches a registry from
    the hub, waiting its 3 s timeout when the hub does not answer. A repo cached only in part (a download
    that stopped) is named as such, rather than left to the folder loader's "file is missing"."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, f"{sub}{MANIFEST_NAME}", cache_dir=cache, revision=revision)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{not_cached} ({exc})") from None
    if not isinstance(found, str):  # None (not cached) or the cache's marker of a file the hub lacks
        raise not_cached
    folder = Path(found).parent  # the snapshot's folder, or its precision sub-folder
    from .manifest import load_manifest

    manifest = load_manifest(folder)
    missing = [rel for rel in manifest.named_files if not (folder / rel).exists()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelFolderError(f"model {repo!r}: {where} is cached only in part: {missing[0]!r}{more} is missing")
    return folder
