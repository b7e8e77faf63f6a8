"""TrainJobs through a real ``shipyard up``: run to Complete, queue by priority with gang admission,
suspend/resume, deadlines, invalid YAML, per-step logs (-f), describe, and a plane SIGKILL + restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from planeproc import PlaneProcess, wait_for

pytestmark = pytest.mark.integration

#: A training script: reports progress and a loss; with WAIT_FOR set, it waits for that file to exist first.
SCRIPT = """
import os, sys, time
from shipyard import train
flag = os.environ.get("WAIT_FOR")
while flag and not os.path.exists(flag):
    time.sleep(0.1)
for step in range(4):
    print(f"step {step} rank {train.rank()} attempt {os.environ['SHIPYARD_ATTEMPT']}", flush=True)
    train.report({"loss": 1.0 / (step + 1)}, step=step, progress=(step + 1) * 25)
    time.sleep(0.05)
print("done", flush=True)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


def trainjob(name: str, script: Path, nodes: int = 1, cpu: int = 1, env: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A TrainJob on the built-in python runtime, as a Kubeflow user writes it."""
    metadata: dict[str, Any] = {"name": name}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": metadata,
        "spec": {"runtimeRef": {"name": "python"}, **spec, "trainer": {
            "command": ["python", str(script)], "numNodes": nodes,
            "resourcesPerNode": {"requests": {"cpu": str(cpu)}},
            "env": [{"name": key, "value": value} for key, value in (env or {}).items()]}},
    }


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A plane whose declared inventory is 2 cpus, so three small jobs compete for it."""
    monkeypatch.setenv("SHIPYARD_CPUS", "2")
    started = PlaneProcess(tmp_path / "home").wait_up()
    yield started
    started.stop()


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def job(plane: PlaneProcess, name: str) -> dict[str, Any]:
    response = httpx.get(f"{plane.api}/apis/trainjobs/default/{name}/describe", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def state(plane: PlaneProcess, name: str) -> str | None:
    return ((job(plane, name).get("status") or {}).get("shipyard") or {}).get("state")


def wait_state(plane: PlaneProcess, name: str, wanted: str, timeout: float = 90) -> dict[str, Any]:
    wait_for(lambda: state(plane, name) == wanted, timeout, f"{name} {wanted}\n{plane.output}")
    return job(plane, name)


def shipyard(plane: PlaneProcess, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SHIPYARD_HOME": str(plane.home)})


def test_a_trainjob_runs_to_complete_and_describe_shows_progress_metrics_and_logs(plane, script, tmp_path):
    path = tmp_path / "job.yaml"
    import yaml

    path.write_text(yaml.safe_dump(trainjob("tiny", script, nodes=2)))
    applied = shipyard(plane, "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    assert "trainjob.trainer.kubeflow.org/tiny created" in applied.stdout
    described = wait_state(plane, "tiny", "Complete")
    status = described["status"]
    assert status["resolvedRuntime"]["metadata"]["name"] == "python"  # the runtime was copied at submit
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Created": "True", "Running": "False", "Complete": "True"}
    assert [(s["name"], s["succeeded"]) for s in status["jobsStatus"]] == [("node-0", 1), ("node-1", 1)]
    trainer = status["trainerStatus"]
    assert trainer["progressPercentage"] == 100 and {"name": "loss", "value": "0.25"} in trainer["metrics"]

    text = shipyard(plane, "describe", "trainjob", "tiny").stdout
    assert "State:        Complete" in text and "Progress:     100%" in text and "loss   0.25" in text
    table = shipyard(plane, "get", "tj").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "RUNTIME", "NODES", "AGE"]
    assert table[1].split()[:4] == ["tiny", "Complete", "python", "2"]
    node1 = shipyard(plane, "logs", "trainjob", "tiny", "--step", "node-1").stdout
    assert "step 3 rank 1 attempt 0" in node1 and "rank 0" not in node1
    missing = shipyard(plane, "logs", "trainjob", "tiny", "--step", "node-7")
    assert missing.returncode == 1 and "node-0, node-1" in missing.stderr


def test_invalid_trainjobs_are_rejected_by_field_path(plane, script):
    bad_env = trainjob("bad-env", script, env={"PET_NNODES": "4"})
    bad_nproc = trainjob("bad-nproc", script)
    bad_nproc["spec"]["trainer"]["numProcPerNode"] = 0
    bad_runtime = trainjob("bad-runtime", script)
    bad_runtime["spec"]["runtimeRef"]["name"] = "no-such-runtime"
    typo = trainjob("typo", script)
    typo["spec"]["trainer"]["numNode"] = 2
    response = httpx.post(f"{plane.api}/apis/apply", json={"documents": [bad_env, bad_nproc, bad_runtime, typo]},
                          timeout=30)
    assert response.status_code == 400
    errors = {(e["document"], e["path"]) for e in response.json()["errors"]}
    assert errors == {(0, "spec.trainer.env[0].name"), (1, "spec.trainer.numProcPerNode"),
                      (2, "spec.runtimeRef.name"), (3, "spec.trainer.numNode")}
    assert httpx.get(f"{plane.api}/apis/trainjobs", timeout=10).json()["items"] == []  # nothing applied


def test_priority_and_gang_admission_order_three_competing_jobs(plane, script, tmp_path):
    """2 cpus: a 2-cpu job runs; then a 1-cpu job of priority 0 and a 2-node job of priority 10 wait.
    The 2-node job starts first (all its nodes together), and the small one may not skip ahead of it."""
    go = {name: tmp_path / f"go-{name}" for name in ("first", "low", "high")}
    plane.apply(trainjob("first", script, nodes=2, env={"WAIT_FOR": str(go["first"])}))
    wait_state(plane, "first", "Running")
    plane.apply(trainjob("low", script, env={"WAIT_FOR": str(go["low"])}))
    plane.apply(trainjob("high", script, nodes=2, env={"WAIT_FOR": str(go["high"])},
                         annotations={"trainer.shipyard.io/priority": "10"}))
    time.sleep(1.5)  # several reconcile passes: neither may start while "first" holds both cpus
    assert (state(plane, "low"), state(plane, "high")) == ("Queued", "Queued")
    go["first"].touch()
    wait_state(plane, "high", "Running")
    assert state(plane, "low") == "Queued"  # it would fit nowhere: "high" holds both cpus
    go["high"].touch()
    wait_state(plane, "high", "Complete")
    go["low"].touch()
    wait_state(plane, "low", "Complete")
    starts = {name: job(plane, name)["status"]["shipyard"]["startTime"] for name in ("first", "high", "low")}
    assert starts["first"] < starts["high"] < starts["low"]


def test_suspend_stops_the_processes_and_resume_runs_the_job_again(plane, script, tmp_path):
    flag = tmp_path / "go"
    document = trainjob("pausable", script, env={"WAIT_FOR": str(flag)})
    plane.apply(document)
    running = wait_state(plane, "pausable", "Running")
    pids = [p["pid"] for p in running["status"]["shipyard"]["run"]["processes"]]
    document["spec"]["suspend"] = True
    plane.apply(document)
    suspended = wait_state(plane, "pausable", "Suspended")
    assert any(c["type"] == "Suspended" and c["status"] == "True" for c in suspended["status"]["conditions"])
    for pid in pids:
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
                 30, f"process {pid} stopped")
    document["spec"]["suspend"] = False
    plane.apply(document)
    flag.touch()
    done = wait_state(plane, "pausable", "Complete")
    assert {c["type"]: (c["status"], c.get("reason")) for c in done["status"]["conditions"]}["Suspended"] == (
        "False", "Resumed")
    reasons = [event["reason"] for event in done["events"]]
    assert reasons.index("Suspended") < reasons.index("Resumed") < reasons.index("Completed")


def test_a_job_past_its_deadline_fails_with_deadline_exceeded(plane, script, tmp_path):
    plane.apply(trainjob("slow", script, env={"WAIT_FOR": str(tmp_path / "never")}, activeDeadlineSeconds=2))
    failed = wait_state(plane, "slow", "Failed")
    condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "DeadlineExceeded"


def test_a_failing_job_restarts_up_to_max_restarts_then_fails(plane, script):
    plane.apply(trainjob("flaky", script, env={"EXIT_CODE": "3"}, annotations={"trainer.shipyard.io/max-restarts": "1"}))
    failed = wait_state(plane, "flaky", "Failed")
    own = failed["status"]["shipyard"]
    assert (own["restarts"], own["attempt"], own["exitCodes"]) == (1, 1, {"node-0": 3})
    log = shipyard(plane, "logs", "tj", "flaky", "--step", "node-0").stdout
    assert "attempt 0" in log and "attempt 1" in log


def test_logs_follow_streams_a_step_while_it_runs(plane, script, tmp_path):
    flag = tmp_path / "go"
    plane.apply(trainjob("streamed", script, env={"WAIT_FOR": str(flag)}))
    follower = subprocess.Popen([sys.executable, "-m", "shipyard", "logs", "tj", "streamed", "--step", "node-0", "-f"],
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "SHIPYARD_HOME": str(plane.home)})
    try:
        wait_state(plane, "streamed", "Running")
        flag.touch()
        lines = []
        for line in follower.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("done"):
                break
        assert any(line.startswith("step 3 rank 0") for line in lines)
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(30)


def test_a_killed_plane_leaves_the_job_running_and_the_next_plane_adopts_it(plane, script, tmp_path):
    flag = tmp_path / "go"
    plane.apply(trainjob("survivor", script, env={"WAIT_FOR": str(flag)}))
    running = wait_state(plane, "survivor", "Running")
    pid = running["status"]["shipyard"]["run"]["processes"][0]["pid"]
    plane.stop(signal.SIGKILL)
    assert Path(f"/proc/{pid}").exists()  # the job outlives its plane
    second = PlaneProcess(plane.home).wait_up()
    try:
        flag.touch()
        done = wait_state(second, "survivor", "Complete")
        assert done["status"]["shipyard"]["attempt"] == 0  # adopted, not run again
        assert "Adopted" in [event["reason"] for event in done["events"]]
    finally:
        second.stop()
