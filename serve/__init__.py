"""``musicgen-onnx serve``: MusicGen over HTTP, with request batching, streaming and a web page.

Why a package of its own: the runtime (``musicgen_onnx.runtime``) stays free of any web stack; only
this package imports Starlette (the ``serve`` extra). One process holds one model; one worker thread
(``batcher.py``) owns it and runs compatible queued requests as one ``generate`` call.
"""

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def create_app(model, settings: ServeSettings | None = None, stems=None):
    """The ASGI app for ``model`` (a loaded :class:`~musicgen_onnx.runtime.MusicGen`); imported lazily so
    that ``ServeSettings`` and the request rules can be used without Starlette installed."""
    from .app import create_app as create

    return create(model, settings or ServeSettings(), stems)
