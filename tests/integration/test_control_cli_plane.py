"""The user's path, as real processes: ``shipyard up``, then KServe's sklearn example (unmodified but for a
relative local storageUri) through ``shipyard apply``, a prediction through the gateway, ``shipyard delete --wait``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from kserve_examples import SKLEARN_IRIS_LOCAL

pytestmark = pytest.mark.integration



def shipyard(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def test_kserve_sklearn_example_serves_through_the_cli(tmp_path, iris):
    import joblib
    from sklearn.linear_model import LogisticRegression

    env = {**os.environ, "SHIPYARD_HOME": str(tmp_path / "home")}
    if shipyard("apply", "--help", env=env, cwd=tmp_path).returncode != 0:
        pytest.skip("shipyard apply is not registered in cli/main.py yet")
    project = tmp_path / "project"
    (project / "model").mkdir(parents=True)
    joblib.dump(LogisticRegression(max_iter=1000).fit(*iris), project / "model" / "model.joblib")
    (project / "sklearn-iris.yaml").write_text(SKLEARN_IRIS_LOCAL)

    not_running = shipyard("get", "isvc", env=env, cwd=project)
    assert not_running.returncode == 1 and "shipyard up --detach" in not_running.stderr
    plane = subprocess.Popen([sys.executable, "-m", "shipyard", "up", "--api-port", "0", "--http-port", "0",
                              "--grpc-port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        plane_file = tmp_path / "home" / "plane.json"
        deadline = time.monotonic() + 60
        while not plane_file.exists():
            if plane.poll() is not None or time.monotonic() > deadline:
                output = plane.stdout.read().decode() if plane.poll() is not None else "(still running)"
                raise AssertionError(f"shipyard up did not start:\n{output}")
            time.sleep(0.1)
        gateway = json.loads(plane_file.read_text())["gateway_url"]

        applied = shipyard("apply", "-f", "sklearn-iris.yaml", env=env, cwd=project)
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout == "inferenceservice.serving.kserve.io/sklearn-iris created\n"
        waited = subprocess.run([sys.executable, "-c", textwrap.dedent("""
            from shipyard.control.client import ControlClient
            print(ControlClient().wait_ready("isvc", "sklearn-iris", timeout=90)["status"]["url"])
        """)], capture_output=True, text=True, env=env, timeout=120)
        assert waited.stdout.strip() == "http://sklearn-iris.default.example.com", waited.stderr
        listed = shipyard("get", "isvc", env=env, cwd=project).stdout.splitlines()
        assert listed[1].split()[:4] == ["sklearn-iris", "http://sklearn-iris.default.example.com", "True", "100"]
        answer = httpx.post(f"{gateway}/v1/models/sklearn-iris:predict", json={"instances": [[6.8, 2.8, 4.8, 1.4]]},
                            trust_env=False, timeout=30)
        assert answer.status_code == 200 and answer.json()["predictions"] == [1]
        replica_pids = [replica["pid"] for replica in _describe(env, project)["replicas"]]
        assert replica_pids and all(_alive(pid) for pid in replica_pids)
        logs = shipyard("logs", "isvc", "sklearn-iris", env=env, cwd=project)
        assert "model 'sklearn-iris' (sklearn, version 1) ready" in logs.stdout, logs.stderr
        deleted = shipyard("delete", "isvc", "sklearn-iris", "--wait", env=env, cwd=project)
        assert deleted.stdout == 'inferenceservice.serving.kserve.io "sklearn-iris" deleted\n', deleted.stderr
        for pid in replica_pids:
            assert not _alive(pid), f"replica {pid} still runs after delete"
    finally:
        plane.send_signal(signal.SIGTERM)
        try:
            plane.wait(30)
        except subprocess.TimeoutExpired:
            plane.kill()
            plane.wait()


def _describe(env: dict[str, str], cwd: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", "import json; from shipyard.control.client import ControlClient; "
                             "print(json.dumps(ControlClient().describe('isvc', 'sklearn-iris')))"],
                            capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
    return json.loads(result.stdout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
