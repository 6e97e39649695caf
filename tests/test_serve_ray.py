"""``serve --ray`` without starting Ray (CI does not install it; ``python -m benchmarks.ray_check`` starts
it): what cannot schedule and the options Ray Serve's proxy owns are refused in one line, before Ray
starts (issue 24 items 18-19; servex's leftover: the server options under --ray)."""

from __future__ import annotations

import pytest

from conftest import run_cli
from musicgen_onnx.runtime.errors import InvalidInputError
from musicgen_onnx.serve.ray_app import fit_replica_cpus


def test_replicas_share_the_cpus_when_none_are_given():
    assert fit_replica_cpus(3, None, 2) == 0.66  # three replicas on two cores fit, instead of one never starting
    assert fit_replica_cpus(2, None, 2) == 1.0
    assert fit_replica_cpus(1, None, 16) == 1.0
    assert fit_replica_cpus(3, 0.5, 2) == 0.5


@pytest.mark.parametrize("replicas, cpus, available, words", [
    (3, 1.0, 2, "--replicas 3 x --replica-cpus 1 = 3 CPUs, but the Ray cluster has 2"),
    (64, None, 0.5, "cannot share"),
    (1, -1.0, 2, "--replica-cpus must be in (0, 1024]"),
])
def test_what_cannot_schedule_is_refused(replicas, cpus, available, words):
    with pytest.raises(InvalidInputError) as exc:
        fit_replica_cpus(replicas, cpus, available)
    assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("args, words", [
    (["--ray", "--replicas", "64", "--replica-cpus", "1024"], "--replicas 64 x --replica-cpus 1024 = 65536 CPUs"),
    (["--ray", "--max-connections", "5"], "--max-connections and --header-timeout work without --ray only"),
    (["--ray", "--header-timeout", "5"], "--max-connections and --header-timeout work without --ray only"),
    (["--replica-cpus", "0.5"], "--replica-cpus and --ray-address work with --ray only"),
    (["--ray-address", "auto"], "--replica-cpus and --ray-address work with --ray only"),
])
def test_the_command_refuses_in_one_line(args, words):
    """Refused before Ray is imported: the same line whether or not the 'ray' extra is installed."""
    r = run_cli("serve", "--port", "1", *args, timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in r.stderr
