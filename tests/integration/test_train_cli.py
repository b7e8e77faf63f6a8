"""``shipyard train FILE.py`` (the quick path) and ``shipyard package --from-job`` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from planeproc import PlaneProcess

pytestmark = pytest.mark.integration

SCRIPT = """\
import os
import sys

import shipyard.train as st

rank, size = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
print(f"quick rank={rank} of {size} args={sys.argv[1:]}", flush=True)
st.report(metrics={"accuracy": 0.9}, progress=100)
if "--fail" in sys.argv:
    sys.exit(3)
"""


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlaneProcess]:
    process = PlaneProcess(tmp_path_factory.mktemp("train-cli-home")).wait_up()
    yield process
    process.stop()


def shipyard(*args: str, home: Path, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "SHIPYARD_HOME": str(home)}, timeout=timeout)


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def test_train_streams_node_0_and_exits_0(plane: PlaneProcess, script: Path, tmp_path: Path):
    result = shipyard("train", "train.py", "--runtime", "python", "--num-nodes", "2", "--arg", "--epochs",
                      "--arg", "2", "--name", "quick-ok", home=plane.home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "quick rank=0 of 2 args=['--epochs', '2']" in result.stdout  # node-0's log only
    assert "quick rank=1" not in result.stdout
    assert "trainjob.trainer.kubeflow.org/quick-ok created" in result.stderr
    assert "TrainJob quick-ok completed" in result.stderr


def test_train_on_torch_runs_nproc_per_node_ranks(plane: PlaneProcess, script: Path, tmp_path: Path):
    pytest.importorskip("torch")
    result = shipyard("train", str(script), "--nproc-per-node", "2", "--name", "quick-torch",
                      home=plane.home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "quick rank=0 of 2" in result.stdout and "quick rank=1 of 2" in result.stdout


def test_failed_job_fails_the_command_with_its_reason(plane: PlaneProcess, script: Path, tmp_path: Path):
    result = shipyard("train", str(script), "--runtime", "python", "--arg=--fail", "--name", "quick-fail",
                      home=plane.home, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "quick rank=0" in result.stdout and "TrainJob quick-fail failed" in result.stderr


def test_no_follow_returns_at_once_and_the_job_completes(plane: PlaneProcess, script: Path, tmp_path: Path):
    result = shipyard("train", str(script), "--runtime", "python", "--no-follow", "--name", "quick-bg",
                      home=plane.home, cwd=tmp_path)
    assert result.returncode == 0 and "shipyard logs trainjob quick-bg -f" in result.stderr
    from shipyard.train.client import TrainerClient

    with TrainerClient(url=plane.api, home=plane.home) as client:
        assert client.wait_for_job_status("quick-bg", timeout=120).metrics == {"accuracy": "0.9"}


@pytest.mark.parametrize("args, message", [
    (["missing.py"], "FILE.py 'missing.py' does not exist"),
    (["train.py", "--env", "NOVALUE"], "--env 'NOVALUE': expected KEY=VALUE"),
    (["train.py", "--runtime", "tensorflow"], "spec.runtimeRef"),
])
def test_bad_arguments_are_named(plane: PlaneProcess, script: Path, tmp_path: Path, args, message):
    result = shipyard("train", *args, home=plane.home, cwd=tmp_path)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_package_from_job_names_what_is_missing(plane: PlaneProcess, tmp_path: Path):
    result = shipyard("package", "--from-job", "never-ran", home=plane.home, cwd=tmp_path)
    assert result.returncode == 1 and "no TrainJob workspace for 'never-ran'" in result.stderr
    (plane.home / "jobs" / "default" / "empty-job").mkdir(parents=True)
    result = shipyard("package", "--from-job", "empty-job", home=plane.home, cwd=tmp_path)
    assert result.returncode == 1 and "wrote no model to" in result.stderr
