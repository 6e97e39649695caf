"""The same service as a Ray Serve deployment: N replicas, each loading the model once and batching
its own requests (extra ``ray``).

Why a builder and not an app object: Ray pickles what it ships to replicas; the model (onnxruntime
sessions) cannot be pickled and must be loaded where it runs, so each replica calls
:func:`build_app` on start (``serve.ingress`` accepts a builder that returns an ASGI app).

    from ray import serve
    from musicgen_onnx.serve.ray_app import deployment
    serve.run(deployment("models/musicgen-melody", replicas=2), name="musicgen", route_prefix="/")

or ``musicgen-onnx serve --ray --replicas 2``. Ray's HTTP proxy spreads requests over the replicas;
requests only batch with requests that reach the same replica.

What an operator gets from :func:`run` (issue 24 items 18, 19, 21): a private Ray cluster for this
process unless ``--ray-address`` names one (``RAY_ADDRESS`` is not followed: joining a cluster is
asked for, never inherited), its ports on the loopback interface (it has no other node; clients reach
Ray Serve's proxy through the front, serve/ray_front.py), replicas that ask
for the CPUs given (refused in one line when the cluster cannot hold them, instead of waiting for ever),
SIGTERM / Ctrl-C at any moment, a drain on stop (Ray Serve stops routing to a replica and waits for its
requests; the app's own shutdown finishes its queue), and only this application deleted on a shared
cluster (never ``serve.shutdown()``). Metrics: each replica labels its series with its id and posts
them to a small actor every second; any replica's ``/metrics`` shows all of them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from ..runtime.errors import InvalidInputError, MusicGenError
from .settings import ServeSettings

logger = logging.getLogger(__name__)

APP_NAME = "musicgen"
DRAIN_LIMIT_S = 300.0
"""On stop, the longest a replica's queued and running requests get before Ray ends it (then the
connections' grace): the plain server drains without a limit, but a stop must end."""
HEALTH_PERIOD_S = 5.0
METRICS_PUSH_S = 1.0
METRICS_STALE_S = 15.0  # a replica not heard from this long is gone: its series leave /metrics


@dataclass(frozen=True)
class RayOptions:
    replicas: int = 2
    replica_cpus: float | None = None  # None: the cluster's CPUs shared between the replicas, at most 1 each
    address: str | None = None  # None: a private cluster for this process
    graceful_timeout_s: float = 10.0
    log_format: str = "text"
    stems_dir: str | None = None  # serve --stems (or the bundled one): each replica loads it for /v1/stems


def fit_replica_cpus(replicas: int, wanted: float | None, available: float) -> float:
    """CPUs each replica asks of Ray. Why refuse: Ray waits for ever for a replica it cannot place (three
    replicas of one CPU on two cores never became ready)."""
    if wanted is not None and not 0 < wanted <= 1024:
        raise InvalidInputError(f"--replica-cpus must be in (0, 1024], got {wanted!r}")
    if wanted is None:
        share = int(available / replicas * 100) / 100  # Ray counts CPUs in hundredths here: round down
        if share <= 0:
            raise InvalidInputError(f"--replicas {replicas} cannot share the Ray cluster's {available:g} CPUs: "
                                    f"give fewer replicas")
        return min(1.0, share)
    if wanted * replicas > available + 1e-9:
        raise InvalidInputError(f"--replicas {replicas} x --replica-cpus {wanted:g} = {wanted * replicas:g} CPUs, but "
                                f"the Ray cluster has {available:g}: lower one of them (fractions such as 0.5 "
                                f"are allowed)")
    return float(wanted)


def check_listen(host: str, port: int) -> None:
    """The front binds only after Ray has started and the replicas loaded (a minute on a small machine):
    a port that is taken is said at once, in one line."""
    import socket

    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as exc:
        raise InvalidInputError(f"--host {host} --port {port}: cannot listen there: {exc.strerror or exc}") from None


def build_app(model_dir: str, settings: ServeSettings, providers: str = "auto", threads: int | None = None,
              low_memory: bool = False, replica: str | None = None, peers=None, stems_dir: str | None = None,
              exact_stems: bool = False):
    """``stems_dir``: the stems folder for ``POST /v1/stems`` (``serve --stems``), loaded in each replica;
    ``exact_stems``: ``serve --exact-stems``, each replica's melodies through the exact stems graph."""
    from ..runtime.musicgen import MusicGen
    from .app import create_app

    model = MusicGen.from_pretrained(model_dir, providers=providers, threads=threads, low_memory=low_memory,
                                     exact_stems=exact_stems)
    stems = None
    if stems_dir is not None:
        from ..runtime.stems import StemSeparator

        stems = StemSeparator.from_folder(stems_dir, providers=providers, threads=threads)
    return create_app(model, settings, stems, replica=replica, peers=peers)


class MusicGenReplica:
    """The class Ray Serve runs per replica (wrapped by ``serve.ingress``): a health check Ray polls (a
    replica whose generation worker died is replaced), and the metrics post."""

    def _app(self):
        app = getattr(self, "app", None) or getattr(self, "_asgi_app", None)
        return app if app is not None and hasattr(app, "state") else None

    def check_health(self):
        app = self._app()
        if app is not None and not app.state.batcher.working():
            raise RuntimeError("the generation worker has stopped")


def _replica_name() -> str:
    try:
        from ray import serve

        ctx = serve.get_replica_context()
        rid = getattr(ctx, "replica_id", None)
        return str(getattr(rid, "unique_id", None) or getattr(ctx, "replica_tag", None) or os.getpid())
    except Exception:  # outside a replica (a test): the pid names it
        return str(os.getpid())


class MetricsBoard:
    """Every replica's latest metric families (a Ray actor, one per application, owned by whichever
    replica made it: if that replica dies the next post makes a new one)."""

    def __init__(self):
        self.by_replica: dict = {}

    def put(self, replica: str, families) -> None:
        self.by_replica[replica] = (time.monotonic(), families)

    def others(self, replica: str) -> list:
        now = time.monotonic()
        self.by_replica = {k: v for k, v in self.by_replica.items() if now - v[0] < METRICS_STALE_S}
        return [fams for k, (_, fams) in sorted(self.by_replica.items()) if k != replica]


class MetricsPost:
    """A replica's side of the board: post this replica's families every second, read the others'."""

    def __init__(self, board_name: str, replica: str):
        self.board_name, self.replica = board_name, replica
        self._board = None
        self.app = None

    def board(self):
        import ray

        if self._board is None:
            self._board = ray.remote(num_cpus=0)(MetricsBoard).options(
                name=self.board_name, namespace="musicgen_onnx", get_if_exists=True).remote()
        return self._board

    def start(self, app) -> None:
        self.app = app
        threading.Thread(target=self._loop, name="musicgen-metrics-post", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                batcher = self.app.state.batcher
                self.board().put.remote(self.replica, self.app.state.metrics.families(
                    batcher.queue_length(), batcher.in_flight()))
            except Exception as exc:  # the board's owner died: make it again next time
                logger.debug("metrics post failed: %s", exc)
                self._board = None
            time.sleep(METRICS_PUSH_S)

    def __call__(self) -> list:
        """The other replicas' families (none if the board cannot be reached in 2 s)."""
        import ray

        try:
            return ray.get(self.board().others.remote(self.replica), timeout=2)
        except Exception as exc:
            logger.warning("metrics of the other replicas unavailable: %s", exc)
            self._board = None
            return []


def deployment(model_dir: str, replicas: int = 2, settings: ServeSettings | None = None, providers: str = "auto",
               threads: int | None = None, cpus_per_replica: float = 1.0, low_memory: bool = False,
               graceful_timeout_s: float = 10.0, app_name: str = APP_NAME, stems_dir: str | None = None,
               exact_stems: bool = False):
    """A bound Ray Serve application of ``replicas`` replicas of the service (pass it to ``serve.run``
    with ``name=app_name``)."""
    from ray import serve

    settings = (settings or ServeSettings()).check()
    model_dir = str(model_dir)

    def builder():  # a plain function: Ray calls a function to build the app, but calls a partial as the app
        replica = _replica_name()
        post = MetricsPost(f"metrics-{app_name}", replica)
        app = build_app(model_dir, settings, providers, threads, low_memory, replica=replica, peers=post,
                        stems_dir=stems_dir, exact_stems=exact_stems)
        post.start(app)
        return app

    ingress = serve.ingress(builder)(MusicGenReplica)
    return serve.deployment(
        ingress, name="musicgen", num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica},
        max_ongoing_requests=settings.max_queue + settings.max_batch, max_queued_requests=settings.max_queue,
        graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=DRAIN_LIMIT_S + graceful_timeout_s,
        health_check_period_s=HEALTH_PERIOD_S).bind()


def _single_node_on_loopback() -> None:
    """Ray turns a loopback node address into the machine's outward address (so that other nodes can
    join) unless clusters are off, its setting for macOS and Windows: a private cluster has no other node,
    so its processes (this one and those the raylet starts, through the environment) take the loopback."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


class Stop(BaseException):
    """A signal arrived while Ray was starting or stopping: leave that step at once."""


def run(model_dir: str, host: str, port: int, settings: ServeSettings, options: RayOptions, server_options=None,
        providers: str = "auto", threads: int | None = None, low_memory: bool = False, ready=None,
        exact_stems: bool = False) -> None:
    """Serve on ``host:port`` through the front (serve/ray_front.py; Ray Serve's proxy listens on a
    loopback port) until SIGTERM / Ctrl-C, then delete this application (draining it) and, if this process
    started the Ray cluster, stop it. A signal while starting stops at once; a second one while draining
    stops without waiting."""
    import signal

    from .health import free_port
    from .ray_front import RayDrain, RayFront
    from .server import ServerOptions, run as serve_front

    stop = threading.Event()
    phase = ["starting"]

    def on_signal(signum, frame):
        stop.set()
        if phase[0] not in ("serving", "init", "final"):  # "init": raised once ray.init returns (an exception
            raise Stop(signal.Signals(signum).name)  # inside it left a half-made driver that crashed on shutdown)

    def install():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)

    install()
    private = options.address is None
    if private:  # refused before Ray starts: the private cluster gets this machine's CPUs
        fit_replica_cpus(options.replicas, options.replica_cpus, os.cpu_count() or 1)
    check_listen(host, port)
    started = False
    deployed = False
    try:
        import ray
        from ray import serve

        kw = dict(include_dashboard=False, configure_logging=False, dashboard_host="127.0.0.1")
        if private:  # Ray binds its own ports (and its metrics exporter) to the node's address: loopback
            kw.update(address="local", num_cpus=os.cpu_count() or 1, _node_ip_address="127.0.0.1")
            _single_node_on_loopback()
        else:
            kw["address"] = options.address
        os.environ.pop("RAY_ADDRESS", None)  # ray.init(address="local") must not be redirected by it
        if private:  # a SIGKILL gives no chance to call ray.shutdown(): a watcher ends the cluster then
            from . import reaper

            reaper.start()
        started = True  # whatever ends the start, ray.shutdown() ends what ray.init made
        phase[0] = "init"
        ray.init(**kw)
        install()  # ray.init installs its own handlers
        phase[0] = "starting"
        if stop.is_set():
            raise Stop("signal during ray.init")
        cpus = fit_replica_cpus(options.replicas, options.replica_cpus, ray.cluster_resources().get("CPU", 0.0))
        if not private and APP_NAME in serve.status().applications:
            raise InvalidInputError(f"the Ray cluster at {options.address} already runs an application named "
                                    f"{APP_NAME!r}: stop it first (this command would replace it)")
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        from ray.serve.context import _get_global_client

        http = _get_global_client().http_config  # a shared cluster's Serve keeps the proxy it already has
        upstream = f"http://{'127.0.0.1' if http.host in ('0.0.0.0', '::') else http.host}:{http.port}"
        app = deployment(model_dir, options.replicas, settings, providers, threads, cpus, low_memory,
                         options.graceful_timeout_s, stems_dir=options.stems_dir, exact_stems=exact_stems)
        deployed = True
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False,
                  logging_config={"encoding": "JSON"} if options.log_format == "json" else None)
        drain = RayDrain(lambda: serve.delete(APP_NAME))
        front = RayFront(upstream, settings, drain)
        if stop.is_set():
            raise Stop("signal")
        phase[0] = "serving"
        if ready is not None:
            ready(cpus)
        serve_front(front, host, port, server_options or ServerOptions())  # until SIGTERM: drain, grace, close
        deployed = not drain.draining  # deleted by the drain already
    except Stop as exc:
        logger.warning("%s while Ray was %s: stopping now", exc, phase[0])
    except MusicGenError:
        raise
    except Exception as exc:  # Ray's own start-up or deployment errors: one line, not Ray's traceback
        raise MusicGenError(f"Ray Serve: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}") from None
    finally:
        phase[0] = "stopping"
        try:
            if deployed:
                logger.info("deleting application %r: its replicas finish their requests (at most %g s), "
                            "then stop", APP_NAME, DRAIN_LIMIT_S + options.graceful_timeout_s)
                from ray import serve

                serve.delete(APP_NAME)
        except Stop:
            logger.warning("second signal: not waiting for the drain")
        except Exception as exc:
            logger.warning("deleting the application failed: %s", exc)
        finally:
            phase[0] = "final"
            if started:
                import ray

                ray.shutdown()  # our private cluster ends with its processes; a shared one only loses this driver
