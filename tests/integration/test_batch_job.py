"""BatchJobs through a real ``shipyard up``: a scikit-learn artifact scoring a Parquet file to Succeeded with its
status numbers and the output checked row by row; a job naming an InferenceService scored through the gateway;
deleting a running job stops it and removes its partial work; a plane restarted mid-run resumes the job from its
finished chunks; the SDK's ``Client.batch``; invalid documents refused by field path with nothing applied."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from planeproc import PlaneProcess, isvc, wait_for

pytestmark = pytest.mark.integration

API = "batch.shipyard.io/v1alpha1"
SLOW_MODEL = '''
    import time

    import numpy as np

    class Model:
        def load(self):
            pass

        def predict(self, inputs):
            time.sleep(0.25)
            return {"doubled": np.asarray(inputs["x"], dtype=np.float64) * 2}
'''


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory):
    started = PlaneProcess(tmp_path_factory.mktemp("batchplane") / "home").wait_up()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A logistic regression on iris saved with joblib, and a Parquet file of 1,500 iris rows with an id column."""
    import joblib
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("batchdata")
    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(features, labels)
    joblib.dump(model, folder / "iris.joblib")
    rows = np.random.default_rng(7).integers(0, len(features), 1500)
    frame = pd.DataFrame(features[rows], columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    frame.insert(0, "id", [f"row-{index:05d}" for index in range(len(frame))])
    frame.to_parquet(folder / "iris.parquet", index=False)
    return {"folder": folder, "model": folder / "iris.joblib", "input": folder / "iris.parquet", "frame": frame,
            "expected": model.predict(features[rows])}


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model.py sleeping 0.25 s per predict, and 400 rows: 40 chunks of 10 take at least 10 s."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("slowbatch")
    (folder / "slow").mkdir()
    (folder / "slow" / "model.py").write_text(textwrap.dedent(SLOW_MODEL))
    pd.DataFrame({"id": range(400), "x": np.arange(400, dtype=np.float64)}).to_parquet(folder / "x.parquet",
                                                                                      index=False)
    return {"folder": folder, "model": folder / "slow", "input": folder / "x.parquet"}


def batch_job(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "BatchJob", "metadata": {"name": name},
            "spec": {key: str(value) if isinstance(value, Path) else value for key, value in spec.items()}}


def job(plane: PlaneProcess, name: str) -> httpx.Response:
    return httpx.get(f"{plane.api}/apis/batchjobs/default/{name}", timeout=10)


def wait_status(plane: PlaneProcess, name: str, check: Any, what: str, timeout: float = 120) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        response = job(plane, name)
        assert response.status_code == 200, response.text
        seen.clear()
        seen.update(response.json().get("status") or {})
        return bool(check(seen))

    try:
        wait_for(done, timeout, f"BatchJob {name}: {what}")
    except AssertionError:
        raise AssertionError(f"BatchJob {name}: {what}; status: {seen}\n{plane.output[-3000:]}") from None
    return dict(seen)


def wait_phase(plane: PlaneProcess, name: str, phase: str, timeout: float = 120) -> dict[str, Any]:
    return wait_status(plane, name, lambda status: status.get("phase") in (phase, "Failed"), phase, timeout)


def shipyard(plane: PlaneProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SHIPYARD_HOME": str(plane.home)})


def test_a_batch_job_scores_a_parquet_file_to_succeeded(plane, scored):
    import pandas as pd

    output = scored["folder"] / "scores.parquet"
    plane.apply(batch_job("iris-scores", model=scored["model"], input=scored["input"], output=output, carry=["id"],
                          batchSize=400, outputColumns={"predict": "species"}))
    status = wait_phase(plane, "iris-scores", "Succeeded")
    assert status["phase"] == "Succeeded", status
    assert (status["rowsDone"], status["rowsTotal"], status["errors"]) == (1500, 1500, 0)
    assert status["rowsPerSecond"] > 0 and status["chunksTotal"] == 4 and status["chunksDone"] == 4
    assert status["output"] == str(output) and status["startTime"] <= status["completionTime"]
    assert status["observedGeneration"] == 1 and status["resumedChunks"] == 0
    assert [c["type"] for c in status["conditions"]] == ["Complete"]
    written = pd.read_parquet(output)
    assert list(written.columns) == ["id", "species"]
    assert written["id"].tolist() == scored["frame"]["id"].tolist()  # every row once, in input order
    np.testing.assert_array_equal(written["species"].to_numpy(), scored["expected"])

    table = shipyard(plane, "get", "batchjobs").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "ROWS", "ERRORS", "ROWS/S", "AGE"]
    assert table[1].split()[:4] == ["iris-scores", "Succeeded", "1500/1500", "0"]
    described = shipyard(plane, "describe", "bj", "iris-scores").stdout
    assert "Phase:        Succeeded" in described and "Rows:         1500/1500 (100.0%), chunk 4/4" in described
    logs = shipyard(plane, "logs", "batchjob", "iris-scores")
    assert logs.returncode == 0, logs.stderr
    assert "=== run 1 of BatchJob iris-scores" in logs.stdout and "=== Succeeded: 1500 rows, 0 errors" in logs.stdout
    events = httpx.get(f"{plane.api}/apis/batchjobs/default/iris-scores/describe", timeout=10).json()["events"]
    assert {"Created", "Started", "Succeeded"} <= {event["reason"] for event in events}

    # a finished job does not run again; a changed spec is a new generation that does
    plane.apply(batch_job("iris-scores", model=scored["model"], input=scored["input"], output=output, carry=["id"],
                          batchSize=400, limit=100, outputColumns={"predict": "species"}))
    again = wait_status(plane, "iris-scores", lambda s: s.get("observedGeneration") == 2 and
                        s.get("phase") in ("Succeeded", "Failed"), "generation 2 finished")
    assert (again["phase"], again["rowsDone"], again["runs"]) == ("Succeeded", 100, 2)
    assert len(pd.read_parquet(output)) == 100
    shipyard(plane, "delete", "batchjob", "iris-scores", "--wait")
    assert job(plane, "iris-scores").status_code == 404
    assert not (plane.home / "logs" / "batchjob" / "default" / "iris-scores.log").exists()


def test_a_failed_run_says_why_by_field(plane, scored):
    plane.apply(batch_job("no-column", model=scored["model"], input=scored["input"],
                          output=scored["folder"] / "never.parquet", columns=["sepal_length", "petal_size"]))
    status = wait_phase(plane, "no-column", "Failed")
    assert status["phase"] == "Failed" and status["conditions"][0]["reason"] == "BatchFailed"
    assert status["message"].startswith("spec.columns: no column 'petal_size' in the input"), status["message"]
    assert not (scored["folder"] / "never.parquet").exists()
    assert "petal_size" in shipyard(plane, "describe", "batchjob", "no-column").stdout


def test_a_job_naming_an_inference_service_is_scored_through_the_gateway(plane, scored):
    import pandas as pd

    output = scored["folder"] / "through-gateway.csv"
    plane.apply(isvc("iris-svc", scored["model"]),
                batch_job("via-gateway", model="iris-svc", input=scored["input"], output=output, carry=["id"],
                          limit=300, requestRows=64, concurrency=2))
    status = wait_phase(plane, "via-gateway", "Succeeded", timeout=180)
    assert status["phase"] == "Succeeded", status
    assert (status["rowsDone"], status["errors"]) == (300, 0)
    written = pd.read_csv(output)
    assert written["id"].tolist() == scored["frame"]["id"].tolist()[:300]
    prediction = [column for column in written.columns if column != "id"]
    np.testing.assert_array_equal(written[prediction[0]].to_numpy(), scored["expected"][:300])
    plane.apply(batch_job("waits-for-service", model="no-such-svc", input=scored["input"],
                          output=scored["folder"] / "waits.csv"))
    waiting = wait_status(plane, "waits-for-service", lambda s: s.get("conditions"), "a condition")
    assert waiting["phase"] == "Pending" and waiting["conditions"][0]["reason"] == "ServiceNotFound"
    assert "InferenceService 'no-such-svc' does not exist" in waiting["conditions"][0]["message"]
    shipyard(plane, "delete", "batchjob", "waits-for-service", "--wait")
    shipyard(plane, "delete", "isvc", "iris-svc", "--wait")


def test_deleting_a_running_job_stops_it_and_discards_its_work(plane, slow):
    output = slow["folder"] / "deleted.parquet"
    plane.apply(batch_job("slow-delete", model=slow["model"], input=slow["input"], output=output, batchSize=10,
                          carry=["id"]))
    running = wait_status(plane, "slow-delete", lambda s: s.get("phase") == "Running" and s.get("rowsDone", 0) >= 20,
                          "Running with 2 chunks done")
    assert running["rowsTotal"] == 400 and running["chunksTotal"] == 40
    log = plane.home / "logs" / "batchjob" / "default" / "slow-delete.log"
    assert log.exists()
    deleted = shipyard(plane, "delete", "batchjob", "slow-delete", "--wait", "--timeout", "60")
    assert deleted.returncode == 0, deleted.stderr
    assert job(plane, "slow-delete").status_code == 404
    assert not output.exists() and not log.exists()
    from shipyard.batch import BatchSpec, work_dir

    assert not Path(work_dir(BatchSpec(model=str(slow["model"]), input=str(slow["input"]), output=str(output),
                                       batch_size=10, carry=["id"]))).exists()  # the manifest and parts are gone


def test_a_plane_restart_resumes_a_running_job(tmp_path, slow):
    import pandas as pd

    home = tmp_path / "home"
    output = tmp_path / "resumed.parquet"
    first = PlaneProcess(home).wait_up()
    try:
        first.apply(batch_job("resume-me", model=slow["model"], input=slow["input"], output=output, batchSize=10,
                              carry=["id"]))
        wait_status(first, "resume-me", lambda s: s.get("chunksDone", 0) >= 3, "3 chunks done")
    finally:
        assert first.stop(signal.SIGTERM) == 0
    second = PlaneProcess(home).wait_up()
    try:
        status = wait_phase(second, "resume-me", "Succeeded", timeout=180)
        assert status["phase"] == "Succeeded", status
        assert status["resumedChunks"] >= 3 and status["runs"] == 2 and status["rowsDone"] == 400
        written = pd.read_parquet(output)
        assert written["id"].tolist() == list(range(400))  # every row exactly once, in order
        np.testing.assert_array_equal(written["doubled"].to_numpy(), np.arange(400) * 2.0)
        events = httpx.get(f"{second.api}/apis/batchjobs/default/resume-me/describe", timeout=10).json()["events"]
        assert {"Requeued", "Resumed"} <= {event["reason"] for event in events}
        log = (home / "logs" / "batchjob" / "default" / "resume-me.log").read_text()
        assert "=== run 1 of BatchJob" in log and "=== run 2 of BatchJob" in log and "resuming" in log
    finally:
        second.stop()


def test_the_sdk_runs_a_batch_job_through_the_plane(plane, scored, monkeypatch):
    import pandas as pd

    import shipyard
    from shipyard.control.client import BatchFailed

    monkeypatch.chdir(scored["folder"])  # relative paths are the caller's
    client = shipyard.Client(url=plane.api)
    status = client.batch("iris.joblib", "iris.parquet", "sdk/scores.csv", name="sdk-batch", carry="id",
                          batch_size=500, limit=1000, timeout=120)
    assert (status["phase"], status["rowsDone"], status["errors"]) == ("Succeeded", 1000, 0)
    assert status["output"] == str(scored["folder"] / "sdk" / "scores.csv")
    assert len(pd.read_csv(scored["folder"] / "sdk" / "scores.csv")) == 1000
    assert client.get("batchjob", "sdk-batch")["spec"]["model"] == str(scored["model"])

    with pytest.raises(BatchFailed, match="spec.input: .*missing.parquet") as failed:
        client.batch("iris.joblib", "missing.parquet", "sdk/never.csv", timeout=120)
    assert failed.value.status["phase"] == "Failed"
    with pytest.raises(ValueError, match="batchsize: not a batch option; did you mean 'batch_size'"):
        client.batch("iris.joblib", "iris.parquet", "x.csv", batchsize=5)
    client.close()


def test_invalid_documents_are_refused_by_path_and_nothing_is_applied(plane, scored, tmp_path):
    good = batch_job("good-one", model=scored["model"], input=scored["input"], output=tmp_path / "good.parquet")
    bad = batch_job("bad-one", model=tmp_path / "missing.joblib", input=scored["input"], output="out.txt",
                    batchSize=0, columns=["a"], carry=["a"], maxErrors=2.5)
    response = httpx.post(f"{plane.api}/apis/apply", json={"documents": [good, bad]}, timeout=30)
    assert response.status_code == 400, response.text
    errors = {error["path"]: error["message"] for error in response.json()["errors"]}
    assert {error["document"] for error in response.json()["errors"]} == {1}
    assert errors["spec.batchSize"] == "0 is less than the minimum of 1"
    assert errors["spec.model"].startswith("no file or folder")
    assert errors["spec.carry[0]"].startswith("'a' is also in spec.columns")
    assert "fraction below 1" in errors["spec.maxErrors"]
    assert errors["spec.outputFormat"].startswith("cannot tell the output format")
    assert job(plane, "good-one").status_code == 404  # all or nothing

    (tmp_path / "bad.yaml").write_text(
        "apiVersion: batch.shipyard.io/v1alpha1\nkind: BatchJob\nmetadata: {name: from-yaml}\n"
        "spec: {model: iris.joblib, input: in.parquet, output: out.parquet, workers: 0, bacthSize: 5}\n")
    applied = shipyard(plane, "apply", "-f", str(tmp_path / "bad.yaml"))
    assert applied.returncode == 1
    assert "spec.workers: 0 is less than the minimum of 1" in applied.stderr
    assert "spec.bacthSize: unknown field; did you mean 'batchSize'?" in applied.stderr
    assert job(plane, "from-yaml").status_code == 404
