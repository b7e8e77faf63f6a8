"""The control plane's API on a real socket with a real Store (no controller), over HTTP and through ControlClient."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import httpx
import pytest

from apithread import ApiThread
from shipyard.control.client import ControlClient, ControlError, NotReady, PlaneNotRunning
from shipyard.control.controllers.rollout import rollout
from shipyard.control.resources import INFERENCE_SERVICE
from shipyard.control.store import ReplicaRecord

pytestmark = pytest.mark.integration
KIND = INFERENCE_SERVICE.kind


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SHIPYARD_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def model(tmp_path_factory, iris) -> Path:
    """A real scikit-learn model file (validation checks the storageUri exists; nothing here loads it)."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    path = tmp_path_factory.mktemp("model") / "model.joblib"
    joblib.dump(LogisticRegression(max_iter=1000).fit(*iris), path)
    return path


@pytest.fixture
def plane(home):
    with ApiThread(home, rollout) as running:
        yield running


@pytest.fixture
def http(plane):
    with httpx.Client(base_url=plane.url, timeout=30, trust_env=False) as client:
        yield client


def isvc(name: str, storage: Path, namespace: str | None = None, **predictor) -> dict:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": metadata,
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": str(storage)},
                                   **predictor}}}


def test_healthz_and_unknown_routes(http):
    assert http.get("/healthz").json()["ok"] is True
    assert http.get("/nope").status_code == 404
    answer = http.get("/apis/deployments")
    assert answer.status_code == 404 and "unknown kind 'deployments'" in answer.json()["error"]
    answer = http.put("/apis/isvc/default/x")
    assert answer.status_code == 405 and "use GET, DELETE" in answer.json()["error"]
    answer = http.post("/apis/apply", content=b"{not json")
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
    assert http.post("/apis/apply", json={"documents": {}}).json() == {
        "error": '"documents" must be a non-empty list of resources'}


def test_apply_created_unchanged_configured(plane, http, model):
    first = http.post("/apis/apply", json={"documents": [isvc("iris", model)]})
    assert first.status_code == 200
    assert first.json()["results"] == [{"apiVersion": "serving.kserve.io/v1beta1", "kind": KIND,
                                        "namespace": "default", "name": "iris", "action": "created",
                                        "warnings": []}]
    assert plane.store.get(KIND, "default", "iris").generation == 1
    assert plane.changes == 1
    again = http.post("/apis/apply", json={"documents": [isvc("iris", model)]}).json()["results"][0]
    assert again["action"] == "unchanged" and plane.changes == 1
    changed = http.post("/apis/apply", json={"documents": [isvc("iris", model, canaryTrafficPercent=20,
                                                                 logger={"mode": "all", "url": "http://dumper"})]}
                        ).json()["results"][0]
    assert changed["action"] == "configured"
    assert changed["warnings"] == []
    stored = plane.store.get(KIND, "default", "iris")
    assert stored.generation == 2 and stored.spec["predictor"]["canaryTrafficPercent"] == 20
    assert plane.changes == 2


def test_an_invalid_document_means_nothing_is_applied(plane, http, model):
    http.post("/apis/apply", json={"documents": [isvc("kept", model)]})
    bad = isvc("second", model, minReplicas=-1)
    bad["spec"]["predictor"]["model"]["modelFormat"]["name"] = "tensorflow"
    answer = http.post("/apis/apply", json={"documents": [isvc("first", model), isvc("kept", model, timeout=30), bad]})
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "1 of 3 documents cannot be applied; nothing was applied",
        "errors": [{"document": 2, "path": "spec.predictor.model.modelFormat.name",
                    "message": "'tensorflow' is not supported; Shipyard serves sklearn, xgboost, lightgbm, onnx, "
                               "pytorch, huggingface, custom, detector"},
                   {"document": 2, "path": "spec.predictor.minReplicas",
                    "message": "-1 is less than the minimum of 0"}]}
    assert plane.store.get(KIND, "default", "first") is None
    assert "timeout" not in plane.store.get(KIND, "default", "kept").spec["predictor"]
    duplicate = http.post("/apis/apply", json={"documents": [isvc("twin", model), isvc("twin", model)]})
    assert duplicate.status_code == 400 and duplicate.json()["errors"] == [{
        "document": 1, "path": "metadata.name",
        "message": "'twin' in namespace 'default' is also document 0; give each resource once"}]
    assert plane.store.get(KIND, "default", "twin") is None


def test_dry_run_reports_actions_and_stores_nothing(plane, http, model):
    http.post("/apis/apply", json={"documents": [isvc("iris", model)]})
    answer = http.post("/apis/apply", json={"documents": [isvc("iris", model, timeout=5), isvc("new", model)],
                                            "dry_run": True}).json()
    assert [r["action"] for r in answer["results"]] == ["configured", "created"] and answer["dry_run"] is True
    assert plane.store.get(KIND, "default", "new") is None
    assert plane.store.get(KIND, "default", "iris").generation == 1


def test_get_list_by_namespace_and_describe(plane, http, model):
    http.post("/apis/apply", json={"documents": [isvc("iris", model), isvc("iris", model, "team-a"),
                                                 isvc("wine", model, "team-a")]})
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in http.get("/apis/isvc").json()["items"]] == \
        [("default", "iris"), ("team-a", "iris"), ("team-a", "wine")]
    assert [i["metadata"]["name"] for i in http.get("/apis/inferenceservices/team-a").json()["items"]] == \
        ["iris", "wine"]
    got = http.get("/apis/InferenceService/team-a/wine").json()
    assert got["spec"]["predictor"]["model"]["storageUri"] == str(model) and got["metadata"]["generation"] == 1
    missing = http.get("/apis/isvc/default/wine")
    assert missing.status_code == 404
    assert missing.json() == {"error": "inferenceservice 'wine' not found in namespace 'default'"}

    store = plane.store
    revision = store.add_revision("default", "iris", "abc", {"model": {}}, 1)
    store.upsert_replica(ReplicaRecord("default", "iris", revision.name, 0, 4242, "http://127.0.0.1:5000",
                                       "127.0.0.1:5001", "ready", 0, "", time.time(), "/tmp/x.log"))
    store.set_routes("default", "iris", {"isvc": "iris", "backends": [], "version": 3})
    store.event(KIND, "default", "iris", "Normal", "RevisionCreated", f"created {revision.name}")
    described = http.get("/apis/isvc/default/iris/describe").json()
    assert [r["name"] for r in described["revisions"]] == ["iris-predictor-00001"]
    assert described["replicas"][0]["pid"] == 4242 and described["routes"]["version"] == 3
    assert [(e["reason"], e["message"]) for e in described["events"]] == [("RevisionCreated",
                                                                           "created iris-predictor-00001")]


def test_delete_marks_for_the_controller_and_blocks_reapply(plane, http, model):
    http.post("/apis/apply", json={"documents": [isvc("iris", model)]})
    answer = http.delete("/apis/isvc/default/iris")
    assert answer.status_code == 202 and answer.json()["action"] == "deleting"
    assert plane.store.get(KIND, "default", "iris").deleting
    assert http.get("/apis/isvc/default/iris").json()["metadata"]["deletionTimestamp"]
    again = http.post("/apis/apply", json={"documents": [isvc("iris", model)]})
    assert again.status_code == 409 and "is being deleted" in again.json()["errors"][0]["message"]
    assert http.delete("/apis/isvc/default/nothing").status_code == 404


def test_rollout_calls_the_controller_logic(plane, http, model):
    http.post("/apis/apply", json={"documents": [isvc("iris", model, canaryTrafficPercent=10)]})
    promoted = http.post("/apis/inferenceservices/default/iris/rollout", json={"action": "promote"})
    assert promoted.status_code == 200 and promoted.json()["message"].startswith("promoting")
    assert "canaryTrafficPercent" not in plane.store.get(KIND, "default", "iris").spec["predictor"]
    plane.store.add_revision("default", "iris", "f1", {}, 1)
    pinned = http.post("/apis/isvc/default/iris/rollout", json={"action": "pin", "revision": "1"}).json()
    assert pinned["pinned"] == "iris-predictor-00001"
    assert plane.store.get(KIND, "default", "iris").annotations["serving.shipyard.io/pinned-revision"] == \
        "iris-predictor-00001"
    unknown = http.post("/apis/isvc/default/iris/rollout", json={"action": "pin", "revision": "7"})
    assert unknown.status_code == 404 and "has no revision '7'" in unknown.json()["error"]
    assert http.post("/apis/isvc/default/iris/rollout", json={"action": "undo"}).status_code == 400
    assert http.post("/apis/isvc/default/ghost/rollout", json={"action": "promote"}).status_code == 404
    assert http.post("/apis/isvc/default/iris/rollout", json={"revision": 3}).status_code == 400


def test_rollout_without_a_controller_says_so(home):
    with ApiThread(home) as plane:
        answer = httpx.post(f"{plane.url}/apis/isvc/default/x/rollout", json={"action": "promote"}, trust_env=False)
    assert answer.status_code == 501 and "no rollout controller" in answer.json()["error"]


def write_log(home: Path, revision: str, index: int, text: str) -> Path:
    path = home / "logs" / "default" / "iris" / f"{revision}-{index}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(text)
    return path


def test_logs_by_revision_tail_and_follow(plane, http, home, model):
    http.post("/apis/apply", json={"documents": [isvc("iris", model)]})
    old = write_log(home, "iris-predictor-00001", 0, "old 1\nold 2\n")
    new = write_log(home, "iris-predictor-00002", 0, "".join(f"new {i}\n" for i in range(300)))
    plane.store.upsert_replica(ReplicaRecord("default", "iris", "iris-predictor-00002", 0, 1, None, None, "ready", 0,
                                             "", time.time(), str(new)))
    text = http.get("/apis/isvc/default/iris/logs")
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text.splitlines() == [f"new {i}" for i in range(100, 300)]  # the live revision, 200 lines
    chunk = http.post("/apis/isvc/default/iris/logs", json={"revision": "iris-predictor-00001", "tail": 1}).json()
    assert chunk["text"] == "old 2\n"
    plane.store.set_status(KIND, "default", "iris", {"components": {"predictor": {
        "latestCreatedRevision": "iris-predictor-00002", "previousRolledoutRevision": "iris-predictor-00001"}}})
    assert http.post("/apis/isvc/default/iris/logs", json={"revision": "prev"}).json()["text"] == "old 1\nold 2\n"
    latest = http.post("/apis/isvc/default/iris/logs", json={"revision": "latest", "tail": 2}).json()
    assert latest["text"] == "new 298\nnew 299\n"
    threading.Timer(0.3, write_log, (home, "iris-predictor-00002", 0, "fresh\n")).start()
    followed = http.post("/apis/isvc/default/iris/logs", json={"revision": "latest", "cursor": latest["cursor"],
                                                              "wait_s": 20}).json()
    assert followed["text"] == "fresh\n"
    missing = http.post("/apis/isvc/default/iris/logs", json={"revision": "iris-predictor-00009"})
    assert missing.status_code == 404 and "logs exist for: iris-predictor-00001, iris-predictor-00002" in \
        missing.json()["error"]
    for bad in ({"tail": -1}, {"wait_s": 99, "cursor": ""}, {"cursor": "x"}, {"revision": 2}):
        assert http.post("/apis/isvc/default/iris/logs", json=bad).status_code == 400, bad
    assert old.exists()


# -- ControlClient ----------------------------------------------------------------------------------------
def test_client_finds_the_plane_and_applies_a_file(plane, tmp_path, model):
    folder = tmp_path / "project"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.joblib").write_bytes(model.read_bytes())
    (folder / "isvc.yaml").write_text(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: iris\n"
        "spec:\n  predictor:\n    sklearn:\n      storageUri: ./model\n")
    with ControlClient() as client:
        assert client.url == plane.url
        [result] = client.apply(path=folder / "isvc.yaml")
        assert (result["name"], result["action"]) == ("iris", "created")
        got = client.get("isvc", "iris")
        assert got["spec"]["predictor"]["sklearn"]["storageUri"] == str(folder / "model")
        assert [item["metadata"]["name"] for item in client.get("isvc")] == ["iris"]
        assert client.get("isvc", namespace="elsewhere") == []
        assert client.describe("isvc", "iris")["revisions"] == []
        with pytest.raises(ControlError) as refused:
            client.apply(text="apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n"
                              "metadata: {name: Bad}\nspec: {predictor: {sklearn: {storageUri: ./model}}}\n")
        assert refused.value.status == 400
        assert [e["path"] for e in refused.value.errors] == ["metadata.name", "spec.predictor.sklearn.storageUri"]
        with pytest.raises(ValueError, match="does not match --namespace 'prod'"):
            client.apply(isvc("x", folder / "model", "dev"), namespace="prod")
        document = isvc("x", folder / "model")
        [moved] = client.apply(document, namespace="prod", dry_run=True)
        assert moved["namespace"] == "prod" and moved["action"] == "created"
        assert document == isvc("x", folder / "model")  # the caller's document is not changed


def test_client_delete_waits_for_the_controller(plane, model):
    client = ControlClient()
    client.apply(isvc("iris", model))
    threading.Timer(0.5, plane.store.remove, (KIND, "default", "iris")).start()  # what the controller ends with
    client.delete("isvc", "iris", wait=True, timeout=20)
    with pytest.raises(ControlError) as gone:
        client.get("isvc", "iris")
    assert gone.value.status == 404
    client.apply(isvc("iris", model))
    with pytest.raises(TimeoutError, match="still being deleted after 0.5s"):
        client.delete("isvc", "iris", wait=True, timeout=0.5)


def ready_status(generation: int, ready: str = "True") -> dict:
    return {"observedGeneration": generation, "url": "http://iris.default.example.com",
            "conditions": [{"type": "PredictorReady", "status": ready, "reason": "" if ready == "True" else
                            "ReplicaFailed", "message": "" if ready == "True" else "replica 0 exited with code 1"},
                           {"type": "Ready", "status": ready}]}


def test_wait_ready_needs_the_current_generation(plane, model):
    client = ControlClient()
    client.apply(isvc("iris", model))
    with pytest.raises(NotReady, match=r"not ready after 0.3s: it has no status yet"):
        client.wait_ready("isvc", "iris", timeout=0.3)
    threading.Timer(0.3, plane.store.set_status, (KIND, "default", "iris", ready_status(1))).start()
    assert client.wait_ready("isvc", "iris", timeout=20)["status"]["url"] == "http://iris.default.example.com"
    client.apply(isvc("iris", model, timeout=10))  # generation 2: the old Ready does not count
    with pytest.raises(NotReady, match=r"PredictorReady=True; Ready=True"):
        client.wait_ready("isvc", "iris", timeout=0.3)
    plane.store.set_status(KIND, "default", "iris", ready_status(2, "False"))
    with pytest.raises(NotReady, match=r"PredictorReady=False \(ReplicaFailed: replica 0 exited with code 1\)"):
        client.wait_ready("isvc", "iris", timeout=0.3)


def test_client_logs_and_follow(plane, home, model):
    client = ControlClient()
    client.apply(isvc("iris", model))
    write_log(home, "iris-predictor-00001", 0, "one\ntwo\n")
    assert client.logs("iris", tail=1) == "two\n"
    stream = client.follow_logs("iris", tail=5, wait_s=5)
    assert next(stream) == "one\ntwo\n"
    threading.Timer(0.3, write_log, (home, "iris-predictor-00001", 0, "three\n")).start()
    assert next(stream) == "three\n"
    stream.close()


def test_rollout_through_the_client(plane, model):
    client = ControlClient()
    client.apply(isvc("iris", model, canaryTrafficPercent=30))
    assert client.rollout("iris", "promote")["message"].startswith("promoting")
    with pytest.raises(ControlError, match="no previous rolled-out revision"):
        client.rollout("iris", "rollback")


def test_no_plane_says_how_to_start_one(home, model):
    with pytest.raises(PlaneNotRunning, match=r"^the control plane is not running; start it with: shipyard up "
                                              r"--detach$"):
        ControlClient()
    (home / "plane.json").write_text('{"pid": 1, "api_url": "http://127.0.0.1:9"}')  # stale: nobody holds the lock
    with pytest.raises(PlaneNotRunning):
        ControlClient()
    with ApiThread(home) as plane:
        client = ControlClient()
        stopped_url = plane.url
    with pytest.raises(PlaneNotRunning, match=f"cannot reach {stopped_url}"):
        client.get("isvc")
    document = copy.deepcopy(isvc("iris", model))
    with pytest.raises(PlaneNotRunning):
        ControlClient().apply(document)
