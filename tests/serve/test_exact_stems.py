"""``serve --exact-stems``: the server's melodies go through the exact stems graph, as ``generate
--exact-stems`` does, with and without ``--ray``. In this process: the command builds the app, which is
then asked over Starlette's test client (no socket); Ray is a stand-in that builds each replica's app the
way Ray Serve would, by calling the deployment's builder."""

from __future__ import annotations

import io
import sys
import types

import numpy as np
import pytest
import soundfile as sf
from starlette.testclient import TestClient

from helpers import melody_folder_with_stems_tiers, run_cli_here


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return melody_folder_with_stems_tiers(tmp_path_factory.mktemp("melody") / "m")


def melody_stems(app) -> tuple[str, str]:
    """What ``/v1/model`` says melodies go through, and the graph a melody request went through: the exact
    ``stems`` is open anyway (the model's own stems model for ``/v1/stems``), so the fast one tells."""
    t = np.arange(16000) / 32000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 32000, format="WAV")
    with TestClient(app) as client:
        said = client.get("/v1/model").json()["melody_stems"]
        r = client.post("/v1/generate", data={"prompt": "x", "duration": "0.1", "seed": "1"},
                        files={"melody": ("m.wav", buf.getvalue(), "audio/wav")})
        assert r.status_code == 200, r.text
        return said, "stems_fast" if app.state.batcher.model.graphs.is_open("stems_fast") else "stems"


@pytest.fixture
def served(monkeypatch):
    """The apps the server would have served, instead of serving them."""
    from musicgen_onnx.serve import server

    apps = []
    monkeypatch.setattr(server, "run", lambda app, *a, **k: apps.append(app))
    return apps


@pytest.mark.parametrize("flag, graph", [((), "stems_fast"), (("--exact-stems",), "stems")])
def test_serve_exact_stems_loads_the_model_with_the_exact_graph(folder, served, flag, graph):
    r = run_cli_here("serve", "--model", folder, "--provider", "cpu", "--port", "0", *flag)
    assert r.returncode == 0, r.stderr
    (app,) = served
    assert melody_stems(app) == (graph, graph)


@pytest.fixture
def fake_ray(monkeypatch, served):
    """Just enough of ``ray`` and ``ray.serve`` for ``serve --ray --ray-address ADDR`` to run to its end:
    ``serve.run`` builds the replica's app as Ray Serve does (it calls the ingress builder) and keeps it."""
    import signal

    replicas = []
    ray = types.ModuleType("ray")
    ray.init = ray.shutdown = lambda *a, **k: None
    ray.cluster_resources = lambda: {"CPU": 2.0}
    serve = types.ModuleType("ray.serve")
    serve.status = lambda: types.SimpleNamespace(applications={})
    serve.start = serve.delete = lambda *a, **k: None
    serve.ingress = lambda builder: lambda cls: builder
    serve.deployment = lambda ingress, **k: types.SimpleNamespace(bind=lambda: ingress)
    serve.run = lambda builder, **k: replicas.append(builder())
    context = types.ModuleType("ray.serve.context")
    http = types.SimpleNamespace(http_config=types.SimpleNamespace(host="127.0.0.1", port=1))
    context._get_global_client = lambda: http
    ray.serve, serve.context = serve, context
    for name, module in (("ray", ray), ("ray.serve", serve), ("ray.serve.context", context)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # run() installs its own SIGTERM/SIGINT handlers
    from musicgen_onnx.serve import ray_app

    monkeypatch.setattr(ray_app.MetricsPost, "start", lambda self, app: None)  # its thread would post to Ray
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return replicas


@pytest.mark.parametrize("flag, graph", [((), "stems_fast"), (("--exact-stems",), "stems")])
def test_serve_ray_exact_stems_reaches_each_replicas_model(folder, fake_ray, flag, graph):
    r = run_cli_here("serve", "--ray", "--ray-address", "stand-in:6379", "--replicas", "1", "--model", folder,
                     "--provider", "cpu", "--port", "0", *flag)
    assert r.returncode == 0, r.stderr
    (app,) = fake_ray
    assert melody_stems(app) == (graph, graph)
