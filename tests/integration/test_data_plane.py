"""Datasets and data operations through a real ``shipyard up``: a Dataset bound to local folders with a
CacheRuntime, DataLoad (Once, OnEvent, Cron), flows chained by runAfter (success and failure), a
memoized DataProcess, invalid YAML, an unreachable source, the SDK, and the TrainJob and
InferenceService integrations. One plane serves the whole module; each test uses its own names."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from planeproc import PlaneProcess, isvc, wait_for

pytestmark = pytest.mark.integration

FLUID = "data.fluid.io/v1alpha1"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory):
    started = PlaneProcess(tmp_path_factory.mktemp("dataplane") / "home").wait_up()
    yield started
    started.stop()


def source(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def dataset(name: str, mount_point: str | Path, annotations: dict[str, str] | None = None, /,
            **mount: Any) -> dict[str, Any]:
    """A Dataset with one mount (``mount``: the mount's name, path, options...)."""
    metadata: dict[str, Any] = {"name": name, **({"annotations": annotations} if annotations else {})}
    return {"apiVersion": FLUID, "kind": "Dataset", "metadata": metadata,
            "spec": {"mounts": [{"mountPoint": str(mount_point), **mount}]}}


def runtime(name: str, quota: str) -> dict[str, Any]:
    return {"apiVersion": FLUID, "kind": "CacheRuntime", "metadata": {"name": name},
            "spec": {"runtimeClassName": "shipyard",
                     "worker": {"tieredStore": {"levels": [{"emptyDir": {"quota": quota}}]}}}}


def operation(kind: str, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    api = "data.shipyard.io/v1alpha1" if kind == "DataClean" else FLUID
    metadata: dict[str, Any] = {"name": name, **({"annotations": annotations} if annotations else {})}
    return {"apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec}


def get(plane: PlaneProcess, kind: str, name: str) -> dict[str, Any]:
    response = httpx.get(f"{plane.api}/apis/{kind}/default/{name}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def status(plane: PlaneProcess, kind: str, name: str) -> dict[str, Any]:
    return get(plane, kind, name).get("status") or {}


def wait_status(plane: PlaneProcess, kind: str, name: str, check: Any, what: str, timeout: float = 60) -> dict:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(status(plane, kind, name))
        return bool(check(found))

    try:
        wait_for(done, timeout, f"{kind} {name}: {what}")
    except AssertionError:
        raise AssertionError(f"{kind} {name}: {what}; status: {found}\n{plane.output[-3000:]}") from None
    return found


def wait_phase(plane: PlaneProcess, kind: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    return wait_status(plane, kind, name, lambda s: s.get("phase") == phase, phase, timeout)


def shipyard(plane: PlaneProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SHIPYARD_HOME": str(plane.home)})


def reason(found: dict[str, Any]) -> str | None:
    return next((c.get("reason") for c in found.get("conditions") or []), None)


def test_dataset_binds_loads_to_100_percent_and_the_cli_shows_it(plane, tmp_path):
    folder = source(tmp_path / "src", {f"train/part-{i}.bin": os.urandom(100_000) for i in range(5)})
    plane.apply(dataset("demo", folder, name="src"), runtime("demo", "64Mi"))
    bound = wait_phase(plane, "datasets", "demo", "Bound")
    assert (bound["ufsTotal"], bound["fileNum"]) == ("488.28KiB", "5")
    assert bound["runtimes"][0]["name"] == "demo"
    plane.apply(operation("DataLoad", "demo-warm", {"dataset": {"name": "demo"}, "target": [{"path": "/src/train"}]}))
    done = wait_phase(plane, "dataloads", "demo-warm", "Complete")
    assert (done["shipyard"]["files"], done["shipyard"]["bytes"], done["shipyard"]["runs"]) == (5, 500_000, 1)
    assert done["conditions"][0]["type"] == "Complete" and done["duration"].endswith("s")
    states = wait_status(plane, "datasets", "demo", lambda s: (s.get("cacheStates") or {}).get("cachedPercentage")
                         == "100.0%", "100% cached")["cacheStates"]
    assert states["cacheCapacity"] == "64.00MiB" and states["cacheHitRatio"] is None  # loaded, never read

    table = shipyard(plane, "get", "datasets").stdout.splitlines()
    assert [part.strip() for part in table[0].split("   ") if part.strip()] == [
        "NAME", "UFS TOTAL SIZE", "CACHED", "CACHE CAPACITY", "CACHED PERCENTAGE", "PHASE", "AGE"]
    assert table[1].split()[:6] == ["demo", "488.28KiB", "488.28KiB", "64.00MiB", "100.0%", "Bound"]
    wide = shipyard(plane, "get", "dataset", "demo", "-o", "wide").stdout.splitlines()
    assert "FILES" in wide[0] and "HIT RATIO" in wide[0] and wide[1].split()[6:8] == ["5", "—"]
    described = shipyard(plane, "describe", "dataset", "demo").stdout
    assert "Phase:        Bound" in described and "cachedPercentage" in described and "Configured" in described
    loads = shipyard(plane, "get", "load").stdout.splitlines()
    assert loads[0].split() == ["NAME", "DATASET", "PHASE", "AGE", "DURATION"]
    assert loads[1].split()[:3] == ["demo-warm", "demo", "Complete"]
    text = shipyard(plane, "describe", "dataload", "demo-warm").stdout
    assert "Last Result:  5 files, 488.28KiB" in text and "Completed" in text
    log = shipyard(plane, "logs", "dataload", "demo-warm").stdout
    assert "=== run 1 of DataLoad demo-warm" in log and "loaded 5 files" in log

    plane.apply(runtime("demo", "256Ki"))  # a smaller quota evicts down to it
    wait_status(plane, "datasets", "demo", lambda s: s["cacheStates"]["cacheCapacity"] == "256.00KiB"
                and float(s["cacheStates"]["cachedPercentage"].rstrip("%")) <= 52.5, "evicted to the new quota")

    root = plane.home / "data" / "default" / "demo"
    assert (root / "dataset.json").is_file()
    assert shipyard(plane, "delete", "dataset", "demo", "--wait").returncode == 0
    assert not root.exists() and sorted(p.name for p in (folder / "train").iterdir())[0] == "part-0.bin"


def test_on_event_load_reacts_to_a_new_file_at_the_source(plane, tmp_path):
    folder = source(tmp_path / "watched", {"a.txt": b"a" * 1000})
    plane.apply(dataset("watched", folder, path="/"),
                operation("DataLoad", "watched-load", {"dataset": {"name": "watched"}, "policy": "OnEvent"},
                          {"data.shipyard.io/poll-interval": "1s"}))
    wait_status(plane, "dataloads", "watched-load", lambda s: s.get("phase") == "Complete"
                and s["shipyard"]["runs"] == 1, "first load")
    time.sleep(1.5)  # a poll or two with nothing new: no run
    assert status(plane, "dataloads", "watched-load")["shipyard"]["runs"] == 1
    (folder / "b.txt").write_bytes(b"b" * 2000)
    found = wait_status(plane, "dataloads", "watched-load", lambda s: s["shipyard"].get("runs", 0) >= 2
                        and s.get("phase") == "Complete", "a load of the new file")
    assert found["shipyard"]["trigger"] == "OnEvent: 1 changed path(s)"
    assert (found["shipyard"]["files"], found["shipyard"]["bytes"]) == (1, 2000)
    assert "/b.txt" in shipyard(plane, "logs", "load", "watched-load").stdout


def test_cron_load_runs_on_its_schedule(plane, tmp_path):
    folder = source(tmp_path / "cron", {"x.bin": b"x" * 10})
    plane.apply(dataset("cron", folder, path="/"),
                operation("DataLoad", "cron-load", {"dataset": {"name": "cron"}, "policy": "Cron",
                                                    "schedule": "@every 2s"}))
    found = wait_status(plane, "dataloads", "cron-load", lambda s: s.get("shipyard", {}).get("runs", 0) >= 2,
                        "two scheduled runs", timeout=30)
    assert found["lastScheduleTime"] and found["lastSuccessfulTime"] and found["shipyard"]["nextScheduleTime"]
    assert shipyard(plane, "delete", "dataload", "cron-load", "--wait").returncode == 0


def test_a_flow_loads_processes_into_another_dataset_and_cleans(plane, tmp_path):
    raw = source(tmp_path / "raw", {f"day-{i}.csv": ("x,y\n" + "1,2\n" * (i + 1)).encode() for i in range(3)})
    out = source(tmp_path / "out", {})
    script = {"command": ["python"], "source": (
        "import os, pathlib\n"
        "src, out = pathlib.Path(os.environ['DATASET_PATH']), pathlib.Path(os.environ['OUTPUT_PATH'])\n"
        "rows = sum(len(p.read_text().splitlines()) - 1 for p in sorted(src.rglob('*.csv')))\n"
        "(out / 'summary.txt').write_text(f'rows={rows}\\n')\n"
        "print('summarized', rows, 'rows')\n")}
    process = operation("DataProcess", "flow-summarize", {
        "dataset": {"name": "flow-raw", "mountPath": "/data"}, "processor": {"script": script},
        "runAfter": {"kind": "DataLoad", "name": "flow-load"}},
        {"data.shipyard.io/output": "dataset://flow-out/results"})
    plane.apply(
        operation("DataClean", "flow-clean", {"dataset": {"name": "flow-raw"},
                                              "runAfter": {"kind": "DataProcess", "name": "flow-summarize"}}),
        process,
        operation("DataLoad", "flow-load", {"dataset": {"name": "flow-raw"}}),
        dataset("flow-raw", raw, path="/"), dataset("flow-out", out, path="/"))
    wait_phase(plane, "datacleans", "flow-clean", "Complete")
    assert (out / "results" / "summary.txt").read_text() == "rows=6\n"
    wait_status(plane, "datasets", "flow-out", lambda s: s.get("fileNum") == "1", "the output dataset re-listed")
    loaded, processed = status(plane, "dataloads", "flow-load"), status(plane, "dataprocesses", "flow-summarize")
    assert loaded["lastSuccessfulTime"] <= processed["lastScheduleTime"]
    assert processed["shipyard"]["files"] == 3 and processed["shipyard"]["memoKey"]
    assert "summarized 6 rows" in shipyard(plane, "logs", "dataprocess", "flow-summarize").stdout
    wait_status(plane, "datasets", "flow-raw", lambda s: s["cacheStates"]["cachedPercentage"] == "0.0%",
                "the clean emptied the cache")

    process["spec"]["ttlSecondsAfterFinished"] = 3600  # a new generation; inputs and code unchanged
    plane.apply(process)
    again = wait_status(plane, "dataprocesses", "flow-summarize", lambda s: s.get("phase") == "Complete"
                        and s["shipyard"]["observedGeneration"] == 2, "the re-run")
    assert again["shipyard"]["skipped"] is True and reason(again) == "UpToDate" and again["shipyard"]["runs"] == 2
    assert again["shipyard"]["memoKey"] == processed["shipyard"]["memoKey"]


def test_a_failed_step_fails_the_steps_after_it_without_running_them(plane, tmp_path):
    target = source(tmp_path / "target", {})
    plane.apply(
        dataset("fail-target", target, path="/"),
        operation("DataMigrate", "fail-import", {"from": {"externalStorage": {"uri": str(tmp_path / "missing")}},
                                                 "to": {"dataset": {"name": "fail-target", "namespace": "default"}}}),
        operation("DataLoad", "fail-load", {"dataset": {"name": "fail-target"},
                                            "runAfter": {"kind": "DataMigrate", "name": "fail-import"}}),
        operation("DataProcess", "fail-process", {
            "dataset": {"name": "fail-target", "mountPath": "/data"},
            "processor": {"script": {"command": ["sh"], "source": "echo never"}},
            "runAfter": {"kind": "DataLoad", "name": "fail-load"}}))
    failed = wait_phase(plane, "datamigrates", "fail-import", "Failed")
    assert failed["conditions"][0]["reason"] == "OperationFailed" and "missing" in failed["conditions"][0]["message"]
    for kind, name, upstream in (("dataload", "fail-load", "DataMigrate 'fail-import'"),
                                 ("dataprocess", "fail-process", "DataLoad 'fail-load'")):
        found = wait_phase(plane, kind, name, "Failed")
        assert reason(found) == "UpstreamFailed" and f"runAfter {upstream} failed" in found["conditions"][0]["message"]
        assert found["shipyard"].get("runs", 0) == 0
        assert not (plane.home / "logs" / kind / "default" / f"{name}.log").exists()  # it never ran
    assert "UpstreamFailed" in shipyard(plane, "describe", "dataprocess", "fail-process").stdout


def test_invalid_documents_are_rejected_by_field_path_and_the_plane_keeps_serving(plane):
    unknown = operation("DataLoad", "bad-1", {"dataset": {"name": "x"}, "targets": []})
    policy = operation("DataLoad", "bad-2", {"dataset": {"name": "x"}, "policy": "Sometimes"})
    schedule = operation("DataLoad", "bad-3", {"dataset": {"name": "x"}, "policy": "Cron", "schedule": "every day"})
    nameless = operation("DataLoad", "bad-4", {"dataset": {"namespace": "default"}})
    pod = operation("DataProcess", "bad-5", {"dataset": {"name": "x", "mountPath": "/d"},
                                             "processor": {"job": {"podSpec": {"containers": []}}}})
    response = httpx.post(f"{plane.api}/apis/apply", json={"documents": [unknown, policy, schedule, nameless, pod]},
                          timeout=30)
    assert response.status_code == 400
    errors = {(e["document"], e["path"]): e["message"] for e in response.json()["errors"]}
    assert set(errors) == {(0, "spec.targets"), (1, "spec.policy"), (2, "spec.schedule"), (3, "spec.dataset.name"),
                           (4, "spec.processor.job")}
    assert errors[(0, "spec.targets")] == "unknown field; did you mean 'target'?"
    assert "pod specs need Kubernetes; use processor.script" in errors[(4, "spec.processor.job")]
    assert httpx.get(f"{plane.api}/healthz", timeout=10).json()["ok"] is True
    stored = httpx.get(f"{plane.api}/apis/dataloads", timeout=10).json()["items"]
    assert not [item for item in stored if item["metadata"]["name"].startswith("bad-")]  # none was applied


def test_unreachable_source_fails_the_dataset_and_a_missing_dataset_makes_operations_wait(plane, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data/"
    plane.apply(dataset("offline", url, name="web"),
                operation("DataLoad", "later-load", {"dataset": {"name": "later"}, "ttlSecondsAfterFinished": 3}))
    failed = wait_phase(plane, "datasets", "offline", "Failed")
    assert failed["conditions"][0]["reason"] == "SourceUnreachable" and f"127.0.0.1:{port}" in \
        failed["conditions"][0]["message"]
    waiting = wait_status(plane, "dataloads", "later-load", lambda s: reason(s) == "DatasetNotFound", "waiting")
    assert waiting["phase"] == "Pending" and "dataset 'later'" in waiting["conditions"][0]["message"]
    plane.apply(dataset("later", source(tmp_path / "later", {"f": b"1"}), path="/"))
    assert wait_phase(plane, "dataloads", "later-load", "Complete")["shipyard"]["files"] == 1
    wait_for(lambda: httpx.get(f"{plane.api}/apis/dataloads/default/later-load", timeout=10).status_code == 404, 30,
             "ttlSecondsAfterFinished to remove it")


def test_sdk_creates_loads_cleans_and_reports_failures(plane, tmp_path):
    from shipyard.control.client import ControlClient, OperationFailed

    folder = source(tmp_path / "sdk", {"a/1.bin": os.urandom(50_000), "a/2.bin": os.urandom(50_000), "b.bin": b"b"})
    with ControlClient(plane.api) as client:
        created = client.create_dataset("sdk", str(folder), path="/", cache={"quota": "16Mi", "evictionPolicy": "lru"})
        assert created["status"]["phase"] == "Bound" and created["status"]["fileNum"] == "3"
        loaded = client.load("sdk", ["/a"], name="sdk-load")
        assert loaded["status"]["shipyard"]["files"] == 2
        wait_for(lambda: (client.dataset_status("sdk").get("cacheStates") or {}).get("cached") == "97.66KiB", 15,
                 "the load in cacheStates")
        cleaned = client.clean_up("sdk", "/a/1.bin")
        assert cleaned["status"]["shipyard"]["files"] == 1
        copied = client.migrate("sdk", str(tmp_path / "exported"), direction="to", path="/a", exclude=["2.*"])
        assert copied["status"]["phase"] == "Complete" and os.listdir(tmp_path / "exported") == ["1.bin"]
        processed = client.process("sdk", total_bytes, output="dataset://sdk/out", sub_path="/a")
        assert processed["status"]["shipyard"]["files"] == 2 and (folder / "out" / "total.txt").read_text() == "100000"
        with pytest.raises(OperationFailed, match="matches no file"):
            client.preload("sdk", ["/nowhere"])
        client.delete("dataset", "sdk", wait=True)
    assert not (plane.home / "data" / "default" / "sdk").exists()


def total_bytes(dataset_path, output_path):
    """A DataProcess function (shipped by its source): the input's size into total.txt."""
    import pathlib

    total = sum(p.stat().st_size for p in pathlib.Path(dataset_path).rglob("*") if p.is_file())
    (pathlib.Path(output_path) / "total.txt").write_text(str(total))


TRAIN = """
import fsspec, pathlib
files = sorted(p.name for p in pathlib.Path("dataset").rglob("*") if p.is_file())
print("initialized", files, flush=True)
with fsspec.open("dataset://train-data/src/rows.csv", "rb") as handle:
    print("direct", len(handle.read()), flush=True)
"""


def test_trainjob_dataset_initializer_preloads_copies_and_cleans_after(plane, tmp_path):
    folder = source(tmp_path / "train", {"rows.csv": b"a,b\n" * 1000, "more/notes.txt": b"n" * 10})
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    job = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
           "metadata": {"name": "uses-data", "annotations": {"trainer.shipyard.io/dataset-clean-after": "true"}},
           "spec": {"runtimeRef": {"name": "python"},
                    "initializer": {"dataset": {"storageUri": "dataset://train-data/src"}},
                    "trainer": {"command": ["python", str(script)]}}}
    missing = httpx.post(f"{plane.api}/apis/apply", json={"documents": [job]}, timeout=30)
    assert missing.status_code == 400 and missing.json()["errors"][0]["path"] == "spec.initializer.dataset.storageUri"
    plane.apply(dataset("train-data", folder, name="src"))
    wait_phase(plane, "datasets", "train-data", "Bound")
    plane.apply(job)
    wait_for(lambda: (status(plane, "trainjobs", "uses-data").get("shipyard") or {}).get("state") in
             ("Complete", "Failed"), 90, "the job")
    logs = plane.home / "logs" / "default" / "uses-data"
    node = (logs / "node-0.log").read_text()
    assert "initialized ['notes.txt', 'rows.csv']" in node and "direct 4000" in node, node
    assert status(plane, "trainjobs", "uses-data")["shipyard"]["state"] == "Complete"
    wait_for(lambda: "cleaned /src from the cache" in (logs / "dataset-initializer.log").read_text(), 30, "the clean")
    text = (logs / "dataset-initializer.log").read_text()
    assert "preloaded 2 files" in text and "copied 2 files" in text
    wait_status(plane, "datasets", "train-data", lambda s: s["cacheStates"]["cachedPercentage"] == "0.0%",
                "cleaned after the job")


def test_inference_service_loads_its_model_through_a_dataset(plane, tmp_path):
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from shipyard.data.engine import DatasetCache

    folder = tmp_path / "models"
    (folder / "iris").mkdir(parents=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(*load_iris(return_X_y=True)), folder / "iris" / "model.joblib")
    plane.apply(dataset("models", folder, path="/"))
    wait_phase(plane, "datasets", "models", "Bound")
    plane.apply(isvc("iris-from-data", "dataset://models/iris"))
    plane.wait_ready("iris-from-data", timeout=90)
    body = {"instances": [[6.8, 2.8, 4.8, 1.4]]}

    def predicted() -> Any:  # the gateway reloads its routes from the store every 100 ms
        answer = httpx.post(f"{plane.gateway}/v1/models/iris-from-data:predict", json=body, timeout=10)
        return answer.json() if answer.status_code == 200 else None

    assert wait_for(predicted, 10, "a prediction through the gateway") == {"predictions": [1]}
    with DatasetCache.open("models", home=plane.home) as cache:
        first = cache.stats()
    assert first.ufs_requests >= 1

    plane.apply(isvc("iris-from-data", "dataset://models/iris", timeout=30))  # a second revision
    wait_for(lambda: ((plane.describe("iris-from-data") or {}).get("status", {}).get("components", {})
                      .get("predictor", {}).get("latestReadyRevision") == "iris-from-data-predictor-00002"), 90,
             "the second revision")
    with DatasetCache.open("models", home=plane.home) as cache:
        second = cache.stats()
    assert (second.ufs_requests, second.ufs_bytes) == (first.ufs_requests, first.ufs_bytes)  # no source fetch
    assert wait_for(predicted, 10, "a prediction of the second revision") == {"predictions": [1]}
    assert shipyard(plane, "delete", "isvc", "iris-from-data", "--wait").returncode == 0


def test_a_run_cut_short_by_a_plane_stop_runs_again_on_the_next_plane(tmp_path):
    home = tmp_path / "home"
    folder = source(tmp_path / "slow", {"x.txt": b"x"})
    step = operation("DataProcess", "slow-step", {
        "dataset": {"name": "slow", "mountPath": "/data"},
        "processor": {"script": {"command": ["sh"], "source": "sleep 6; echo done > $OUTPUT_PATH/done.txt"}}},
        {"data.shipyard.io/output": "dataset://slow/results"})
    first = PlaneProcess(home).wait_up()
    try:
        first.apply(dataset("slow", folder, path="/"), step)
        wait_phase(first, "dataprocesses", "slow-step", "Executing")
        wait_status(first, "datasets", "slow", lambda s: s.get("operationRef") == {"DataProcess": "slow-step"},
                    "the running step in the dataset's operationRef")
    finally:
        assert first.stop() == 0  # SIGTERM: it waits a few seconds for the run, then leaves it to the next plane
    second = PlaneProcess(home).wait_up()
    try:
        found = wait_phase(second, "dataprocesses", "slow-step", "Complete", timeout=60)
        assert found["shipyard"]["runs"] == 1 and (folder / "results" / "done.txt").read_text() == "done\n"
        events = httpx.get(f"{second.api}/apis/dataprocesses/default/slow-step/describe", timeout=10).json()["events"]
        assert "Requeued" in [event["reason"] for event in events]
    finally:
        second.stop()


def test_deleting_a_running_data_process_stops_its_script(plane, tmp_path):
    folder = source(tmp_path / "stoppable", {"x.txt": b"x"})
    marker = tmp_path / "script.pid"
    step = operation("DataProcess", "long-step", {
        "dataset": {"name": "stoppable", "mountPath": "/data"},
        "processor": {"script": {"command": ["sh"], "source": f"echo $$ > {marker}; sleep 120"}}})
    plane.apply(dataset("stoppable", folder, path="/"), step)
    wait_phase(plane, "dataprocesses", "long-step", "Executing")
    wait_for(lambda: marker.exists() and marker.read_text().strip(), 30, "the script to start")
    pid = int(marker.read_text())
    assert httpx.delete(f"{plane.api}/apis/dataprocesses/default/long-step", timeout=10).status_code == 202

    def gone() -> bool:
        return httpx.get(f"{plane.api}/apis/dataprocesses/default/long-step", timeout=10).status_code == 404

    wait_for(gone, 30, "the deleted DataProcess to go (its script stopped, not run to the end)")
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
