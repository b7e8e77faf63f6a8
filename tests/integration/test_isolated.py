"""Isolated environments: one server, packages needing different versions of the same library.

``old`` needs inflection 0.5.0 (and numpy 1.x where wheels exist, so numpy 1 and 2 meet across the
pipe), ``new`` needs inflection 0.5.1; the server's environment has no inflection at all, so each
runs in its own environment, built with uv from PyPI once per test session (SHIPYARD_HOME is a
session-scoped temporary folder). ``local`` needs only numpy, which the server has: it runs in
the server's process. A second server checks the environment cache is reused and that a package
whose requirements cannot be installed fails alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from tritonclient.utils import InferenceServerException

from serverproc import ServerProcess
from shipyard.package.environment import INSTALLER_VARIABLE, META_FILE, ensure_environment, environment_key

pytestmark = pytest.mark.integration

#: Environment builds download from PyPI on a cold uv cache; allow for a slow index.
START_SECONDS = 300

REPORT_MODEL = '''
import importlib.util
import os
import sys

import numpy as np

try:
    import inflection
    INFLECTION = inflection.__version__
except ImportError:
    INFLECTION = "absent"

SERVER_LIBRARIES = ("yaml", "msgspec", "grpc", "typer", "httpx")


class Model:
    def load(self):
        print("loaded; inflection", INFLECTION)  # on stdout: must not break the worker's protocol

    def predict(self, inputs, parameters):
        if parameters.get("fail"):
            return 1 / 0
        return {
            "inflection": np.array([INFLECTION], dtype=object),
            "numpy": np.array([np.__version__], dtype=object),
            "pid": np.array([os.getpid()], dtype=np.int64),
            "importable": np.array([",".join(m for m in SERVER_LIBRARIES if importlib.util.find_spec(m))],
                                   dtype=object),
            "imported": np.array([",".join(m for m in SERVER_LIBRARIES if m in sys.modules)], dtype=object),
            "greeting": np.array([os.environ.get("GREETING", "")], dtype=object),
            "doubled": inputs["x"] * 2,
        }
'''

OLD_REQUIREMENTS = ["inflection==0.5.0", 'numpy==1.26.4; python_version < "3.13"']
NEW_REQUIREMENTS = ["inflection==0.5.1"]


def write_package(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(REPORT_MODEL)
    (folder / "shipyard.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="session")
def shipyard_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SHIPYARD_HOME for the session, so each environment is built once."""
    return tmp_path_factory.mktemp("shipyard_home")


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("isolated_packages")
    return {
        "old": write_package(root / "old", {"requirements": OLD_REQUIREMENTS,
                                            "environment_variables": {"GREETING": "hello from old"}}),
        "new": write_package(root / "new", {"requirements": NEW_REQUIREMENTS}),
        "local": write_package(root / "local", {"requirements": ["numpy"]}),
    }


def start(*args: str | Path, home: Path) -> ServerProcess:
    server = ServerProcess(*args, "--log-level", "info", env={"SHIPYARD_HOME": str(home)})
    server.wait_ready(START_SECONDS)
    return server


@pytest.fixture(scope="module")
def server(packages, shipyard_home):
    process = start(packages["old"], packages["new"], packages["local"], home=shipyard_home)
    yield process
    process.stop()


def report(server: ServerProcess, model: str, **parameters) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.5, 2.0]}]}
    if parameters:
        body["parameters"] = parameters
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=60)


def outputs(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return {output["name"]: output["data"][0] if output["name"] != "doubled" else output["data"]
            for output in response.json()["outputs"]}


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_each_package_sees_its_own_library_version_over_rest(server):
    old, new, local = (outputs(report(server, name)) for name in ("old", "new", "local"))
    assert (old["inflection"], new["inflection"], local["inflection"]) == ("0.5.0", "0.5.1", "absent")
    assert old["doubled"] == new["doubled"] == [3.0, 4.0]
    if old["numpy"].startswith("1."):  # numpy 1.x in the worker, 2.x in the server: raw buffers, no pickles
        assert np.__version__ != old["numpy"]


def test_each_package_sees_its_own_library_version_over_grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        for model, expected in (("old", b"0.5.0"), ("new", b"0.5.1")):
            tensor = grpcclient.InferInput("x", [2], "FP32")
            tensor.set_data_from_numpy(np.array([1.5, 2.0], dtype=np.float32))
            result = client.infer(model, [tensor])
            assert result.as_numpy("inflection").tolist() == [expected]
            assert result.as_numpy("doubled").tolist() == [3.0, 4.0]
        with pytest.raises(InferenceServerException) as error:
            client.infer("old", [tensor], parameters={"fail": True})
        assert error.value.status() == "StatusCode.INTERNAL" and "ZeroDivisionError" in error.value.message()
    finally:
        client.close()


def test_the_worker_cannot_see_the_servers_libraries(server):
    local = outputs(report(server, "local"))
    assert "yaml" in local["importable"] and "msgspec" in local["imported"]  # the server has them
    for name in ("old", "new"):
        isolated = outputs(report(server, name))
        assert isolated["importable"] == "" and isolated["imported"] == "", isolated


def test_a_package_the_server_satisfies_runs_in_its_process(server):
    assert outputs(report(server, "local"))["pid"] == server.process.pid
    worker = outputs(report(server, "old"))["pid"]
    assert worker != server.process.pid and parent_of(worker) == server.process.pid
    assert "model 'old' runs in its own environment: requires inflection==0.5.0, which the server does not have" \
        in server.output
    assert "model 'local' runs in its own environment" not in server.output
    assert "built environment" in server.output and "with uv" in server.output


def test_environment_variables_reach_the_worker_only(server):
    assert outputs(report(server, "old"))["greeting"] == "hello from old"
    assert outputs(report(server, "new"))["greeting"] == ""


def test_status_codes_survive_the_hop(server):
    failed = report(server, "new", fail=True)
    assert failed.status_code == 500 and "model 'new' raised ZeroDivisionError" in failed.json()["error"]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": [{"name": "nope"}]}
    missing = httpx.post(f"{server.url}/v2/models/new/infer", json=body)
    assert missing.status_code == 400 and "produced no output 'nope'" in missing.json()["error"]


def test_a_killed_worker_is_replaced_on_the_next_request(server):
    first = outputs(report(server, "new"))["pid"]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until it is dead (a zombie until the server looks)
        stat = Path(f"/proc/{first}/stat")
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    replaced = outputs(report(server, "new"))
    assert replaced["inflection"] == "0.5.1" and replaced["pid"] != first
    assert f"had stopped (pid {first}, killed by SIGKILL" in server.output


def test_the_cache_is_reused_and_a_failed_build_fails_only_its_model(server, packages, shipyard_home, tmp_path):
    """A second server reuses ``new``'s environment; ``broken`` cannot be installed, and fails alone."""
    envs = shipyard_home / "envs"
    built = envs / environment_key(NEW_REQUIREMENTS) / META_FILE
    assert built.is_file(), sorted(p.name for p in envs.iterdir())
    stamp = built.stat().st_mtime_ns
    repository = tmp_path / "repository"
    shutil.copytree(packages["new"], repository / "new")
    write_package(repository / "broken", {"requirements": ["inflection==99.0.0"]})
    second = start("--model-repository", repository, "--load-on-request", home=shipyard_home)
    try:
        assert outputs(report(second, "new"))["inflection"] == "0.5.1"
        assert f"using environment {built.parent} (cached)" in second.output
        assert "building environment" not in second.output and built.stat().st_mtime_ns == stamp

        failed = httpx.post(f"{second.url}/v2/repository/models/broken/load", timeout=120)
        assert failed.status_code == 400, failed.text
        error = failed.json()["error"]
        assert "failed to load model 'broken'" in error and "installing the requirements" in error
        assert "inflection==99.0.0" in error.split("said:", 1)[1], "uv's own explanation is quoted"
        assert not (envs / environment_key(["inflection==99.0.0"])).exists()
        assert not [p.name for p in envs.iterdir() if p.name.startswith(".build-")], "nothing half-built is left"

        assert outputs(report(second, "new"))["inflection"] == "0.5.1", "the other model keeps serving"
        assert httpx.get(f"{second.url}/v2/health/live").status_code == 200
    finally:
        second.stop()


def test_without_uv_the_environment_is_built_with_venv_and_pip(tmp_path, monkeypatch):
    """The fallback where uv is missing (or SHIPYARD_ENV_INSTALLER=pip, to use pip's own configuration)."""
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(INSTALLER_VARIABLE, "pip")
    python = ensure_environment(NEW_REQUIREMENTS)
    environment = python.parent.parent
    assert environment.parent == tmp_path / "home" / "envs" and environment.name == environment_key(NEW_REQUIREMENTS)
    assert json.loads((environment / META_FILE).read_text())["tool"] == "pip"
    probe = ("import importlib.util, inflection, numpy, shipyard.runtimes.isolated_worker; "
             "print(inflection.__version__, [m for m in ('yaml', 'msgspec', 'typer') if importlib.util.find_spec(m)])")
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.5.1", "[]"], "built in a temporary folder, it works where it was renamed to"
    assert ensure_environment(["inflection==0.5.1", "numpy"]) == python, "the same requirements reuse it"
