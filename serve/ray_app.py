"""The same service as a Ray Serve deployment: N replicas, each loading the model once and batching
its own requests (extra ``ray``).

Why a builder and not an app object: Ray pickles what it ships to replicas; the model (onnxruntime
sessions) cannot be pickled and must be loaded where it runs, so each replica calls
:func:`build_app` on start (``serve.ingress`` accepts a builder that returns an ASGI app).

    from ray import serve
    from musicgen_onnx.serve.ray_app import deployment
    serve.run(deployment("models/musicgen-melody", replicas=2), route_prefix="/")

or ``musicgen-onnx serve --ray --replicas 2``. Ray's HTTP proxy spreads requests over the replicas;
requests only batch with requests that reach the same replica.
"""

from __future__ import annotations

from .settings import ServeSettings


def build_app(model_dir: str, settings: ServeSettings, providers: str = "auto", threads: int | None = None,
              low_memory: bool = False, stems_dir: str | None = None):
    """``stems_dir``: the stems folder for ``POST /v1/stems`` (``serve --stems``), loaded in each replica."""
    from ..runtime.musicgen import MusicGen
    from .app import create_app

    model = MusicGen.from_pretrained(model_dir, providers=providers, threads=threads, low_memory=low_memory)
    stems = None
    if stems_dir is not None:
        from ..runtime.stems import StemSeparator

        stems = StemSeparator.from_folder(stems_dir, providers=providers, threads=threads)
    return create_app(model, settings, stems)


def deployment(model_dir: str, replicas: int = 2, settings: ServeSettings | None = None, providers: str = "auto",
               threads: int | None = None, cpus_per_replica: float = 1.0, low_memory: bool = False,
               stems_dir: str | None = None):
    """A bound Ray Serve application of ``replicas`` replicas of the service (pass it to ``serve.run``)."""
    from ray import serve

    settings = (settings or ServeSettings()).check()
    model_dir = str(model_dir)
    stems_dir = None if stems_dir is None else str(stems_dir)

    def builder():  # a plain function: Ray calls a function to build the app, but calls a partial as the app
        return build_app(model_dir, settings, providers, threads, low_memory, stems_dir)

    ingress = serve.ingress(builder)()
    return serve.deployment(ingress, name="musicgen", num_replicas=replicas,
                            ray_actor_options={"num_cpus": cpus_per_replica},
                            max_ongoing_requests=settings.max_queue + settings.max_batch).bind()


def run(model_dir: str, host: str, port: int, replicas: int, settings: ServeSettings, providers: str = "auto",
        threads: int | None = None, low_memory: bool = False, stems_dir: str | None = None) -> None:
    """Start a local Ray instance, serve until SIGTERM / Ctrl-C, then shut Ray Serve down."""
    import signal
    import threading

    import ray
    from ray import serve

    stop = threading.Event()
    ray.init(include_dashboard=False, configure_logging=False)
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own fatal-signal handler
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(model_dir, replicas, settings, providers, threads, low_memory=low_memory,
                             stems_dir=stems_dir),
                  route_prefix="/", blocking=False)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
