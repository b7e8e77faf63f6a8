"""TrainerClient against a real ``shipyard up``: functions and commands as TrainJobs, logs, status, suspend, delete."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from planeproc import PlaneProcess, wait_for
from shipyard.control.client import ControlError
from shipyard.train.client import TrainerClient
from shipyard.train.types import CommandTrainer, CustomTrainer, Initializer

pytestmark = pytest.mark.integration


def count_up(steps, marker):
    """Every process prints its rank; rank 0 reports progress and a metric each step."""
    import os

    import shipyard.train as st

    for step in range(1, steps + 1):
        print(f"{marker} rank={os.environ.get('RANK', '0')} step={step}", flush=True)
        st.report(metrics={"loss": 1.0 / step}, step=step, progress=100.0 * step / steps)


def fail_loudly(message):
    raise SystemExit(message)


def wait_for_stop(ready_file):
    """Runs until SIGTERM (suspend), leaving a file so the test knows it started."""
    import time
    from pathlib import Path

    import shipyard.train as st

    st.stop_requested()
    Path(ready_file).touch()
    while not st.stop_requested():
        time.sleep(0.05)
    print("stopping on request", flush=True)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlaneProcess]:
    home = tmp_path_factory.mktemp("train-sdk-home")
    process = PlaneProcess(home).wait_up()
    yield process
    process.stop()


@pytest.fixture()
def client(plane: PlaneProcess) -> Iterator[TrainerClient]:
    with TrainerClient(url=plane.api, home=plane.home) as trainer:
        yield trainer


def test_runtimes_are_listed_and_unknown_ones_named(client: TrainerClient):
    names = {runtime.name: runtime.trainer.framework for runtime in client.list_runtimes()}
    assert names["torch-distributed"] == "torch" and names["python"] == "python"
    assert client.get_runtime("xgboost-distributed").trainer.framework == "xgboost"
    with pytest.raises(ValueError, match="no training runtime 'tensorflow'; known: .*torch-distributed"):
        client.get_runtime("tensorflow")


def test_function_job_on_two_nodes_completes_with_logs_progress_and_metrics(client: TrainerClient):
    name = client.train(runtime="python", trainer=CustomTrainer(count_up, {"steps": 3, "marker": "sdk-fn"},
                                                               num_nodes=2))
    job = client.wait_for_job_status(name, timeout=120)
    assert job.status == "Complete" and job.runtime == "python" and job.num_nodes == 2
    assert job.progress == 100.0 and float(job.metrics["loss"]) == pytest.approx(1 / 3, rel=1e-3)
    for step in ("node-0", "node-1"):
        lines = [line for line in client.get_job_logs(name, step=step) if line.startswith("sdk-fn")]
        assert [line.split()[-1] for line in lines] == ["step=1", "step=2", "step=3"], lines
    followed = list(client.get_job_logs(name, follow=True))  # a finished job: follow returns
    assert "sdk-fn rank=0 step=3" in followed
    assert name in [listed.name for listed in client.list_jobs(runtime="python")]
    assert [listed.name for listed in client.list_jobs(runtime="jax-distributed") if listed.name == name] == []


def test_command_job_runs_a_script_with_its_args(client: TrainerClient, tmp_path: Path):
    script = tmp_path / "train.py"
    script.write_text("import sys\nprint('args:', ' '.join(sys.argv[1:]))\n")
    name = client.train(runtime="python", trainer=CommandTrainer(["python", str(script)], ["--epochs", "2"],
                                                                 env={"UNUSED": "1"}))
    client.wait_for_job_status(name, timeout=120)
    assert "args: --epochs 2" in list(client.get_job_logs(name))


def test_failed_job_raises_with_its_reason(client: TrainerClient):
    name = client.train(runtime="python", trainer=CustomTrainer(fail_loudly, {"message": "boom from the job"}))
    with pytest.raises(RuntimeError, match=f"TrainJob {name} failed"):
        client.wait_for_job_status(name, timeout=120)
    assert client.get_job(name).status == "Failed"
    assert "boom from the job" in "\n".join(client.get_job_logs(name))
    assert client.wait_for_job_status(name, {"Failed"}, timeout=5).status == "Failed"


def test_suspend_resume_and_delete(client: TrainerClient, tmp_path: Path):
    ready = tmp_path / "started"
    name = client.train(runtime="python", trainer=CustomTrainer(wait_for_stop, {"ready_file": str(ready)}))
    wait_for(ready.exists, 120, "the job to start")
    client.suspend_job(name)
    assert client.wait_for_job_status(name, {"Suspended"}, timeout=60).status == "Suspended"
    wait_for(lambda: "stopping on request" in "\n".join(client.get_job_logs(name)), 60, "a graceful stop")
    ready.unlink()
    client.resume_job(name)
    wait_for(ready.exists, 120, "the job to start again")
    client.delete_job(name, wait=True)
    with pytest.raises(ControlError) as missing:
        client.get_job(name)
    assert missing.value.status == 404


def test_invalid_job_is_refused_by_field_path(client: TrainerClient):
    with pytest.raises(ControlError) as refused:
        client.train(runtime="no-such-runtime", trainer=CommandTrainer(["python", "t.py"]))
    assert any(error["path"] == "spec.runtimeRef.name" for error in refused.value.errors), refused.value.errors
    with pytest.raises(ControlError) as refused:
        client.train(runtime="python", trainer=CommandTrainer(["python", "t.py"], env={"PET_NNODES": "9"}))
    assert any(error["path"].startswith("spec.trainer.env") for error in refused.value.errors), refused.value.errors


def test_initializer_copies_the_dataset_into_the_workspace(client: TrainerClient, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.jsonl").write_text('{"text": "hello"}\n')
    script = tmp_path / "read.py"
    script.write_text("from pathlib import Path\nprint('rows:', *sorted(p.name for p in Path('dataset').rglob('*')))\n")
    name = client.train(runtime="python", initializer=Initializer(dataset=str(data)),
                        trainer=CommandTrainer([sys.executable, str(script)]))
    client.wait_for_job_status(name, timeout=120)
    assert any("rows.jsonl" in line for line in client.get_job_logs(name)), list(client.get_job_logs(name))
    assert list(client.get_job_logs(name, step="dataset-initializer"))  # its own logged step


def test_no_plane_says_how_to_start_one(tmp_path: Path):
    from shipyard.control.client import PlaneNotRunning

    with pytest.raises(PlaneNotRunning, match="shipyard up --detach"):
        TrainerClient(home=tmp_path)
