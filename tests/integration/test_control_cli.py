"""``shipyard apply|get|describe|delete|logs|rollout`` against the API on a real socket (a real Store, no controller)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from apithread import ApiThread
from kserve_examples import SKLEARN_IRIS_LOCAL
from shipyard.cli import resources, rollout as rollout_cli
from shipyard.control.controllers.rollout import rollout
from shipyard.control.resources import INFERENCE_SERVICE
from shipyard.control.store import ReplicaRecord

pytestmark = pytest.mark.integration
KIND = INFERENCE_SERVICE.kind

# The commands registered as cli/main.py registers them.
app = typer.Typer()
app.command("apply")(resources.apply)
app.command("get")(resources.get)
app.command("describe")(resources.describe)
app.command("delete")(resources.delete)
app.command("logs")(resources.logs)
app.add_typer(rollout_cli.app, name="rollout")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SHIPYARD_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    return home


@pytest.fixture
def plane(home):
    with ApiThread(home, rollout) as running:
        yield running


@pytest.fixture
def project(tmp_path, iris) -> Path:
    """A folder with a real model and the KServe sklearn example pointing at it by a relative path."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path / "project"
    (folder / "model").mkdir(parents=True)
    joblib.dump(LogisticRegression(max_iter=1000).fit(*iris), folder / "model" / "model.joblib")
    (folder / "sklearn-iris.yaml").write_text(SKLEARN_IRIS_LOCAL)
    return folder


def run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, list(args), input=stdin)


def test_apply_prints_like_kubectl(plane, project):
    result = run("apply", "-f", str(project / "sklearn-iris.yaml"))
    assert result.exit_code == 0, result.output
    assert result.stdout == "inferenceservice.serving.kserve.io/sklearn-iris created\n"
    stored = plane.store.get(KIND, "default", "sklearn-iris")
    assert stored.spec["predictor"]["model"]["storageUri"] == str(project / "model")
    assert run("apply", "-f", str(project / "sklearn-iris.yaml")).stdout.endswith(" unchanged\n")
    text = (project / "sklearn-iris.yaml").read_text().replace("spec:\n", "spec:\n  explainer:\n    nodeSelector: "
                                                              "{gpu: 'yes'}\n    model: {modelFormat: {name: shap}, "
                                                              f"storageUri: {project}}}\n")
    changed = run("apply", "-f", "-", "--dry-run", stdin=text.replace('"./model"', str(project / "model")))
    assert changed.exit_code == 0, changed.output
    assert changed.stdout == "inferenceservice.serving.kserve.io/sklearn-iris configured (dry run)\n"
    assert changed.stderr == "Warning: spec.explainer.nodeSelector: not honoured by the local engine (replicas are " \
                             "processes on this machine)\n"
    assert "explainer" not in plane.store.get(KIND, "default", "sklearn-iris").spec


def test_invalid_files_apply_nothing_and_name_every_problem(plane, project):
    good = project / "sklearn-iris.yaml"
    bad = project / "bad.yaml"
    bad.write_text(good.read_text().replace("sklearn-iris", "second") + "---\n" +
                   good.read_text().replace("sklearn-iris", "Third").replace("name: sklearn", "name: caffe"))
    result = run("apply", "-f", str(good), "-f", str(bad))
    assert result.exit_code == 1
    assert "1 of 3 documents cannot be applied; nothing was applied" in result.stderr
    assert f"{bad} document 2 (Third): metadata.name:" in result.stderr
    assert f"{bad} document 2 (Third): spec.predictor.model.modelFormat.name: 'caffe' is not supported" in \
        result.stderr
    assert plane.store.list(KIND) == []
    missing = run("apply", "-f", str(project / "nope.yaml"))
    assert missing.exit_code == 1 and "nope.yaml" in missing.stderr
    broken = project / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    assert "is not valid YAML or JSON" in run("apply", "-f", str(broken)).stderr
    assert "no documents in" in run("apply", "-f", "-", stdin="\n---\n").stderr


def test_namespace_option(plane, project):
    result = run("apply", "-f", str(project / "sklearn-iris.yaml"), "-n", "team-a")
    assert result.exit_code == 0, result.output
    assert plane.store.get(KIND, "team-a", "sklearn-iris") is not None
    text = (project / "sklearn-iris.yaml").read_text().replace('name: "sklearn-iris"',
                                                              'name: "sklearn-iris"\n  namespace: dev')
    clash = run("apply", "-f", "-", "-n", "prod", stdin=text)
    assert clash.exit_code == 1 and "names namespace 'dev', which does not match --namespace 'prod'" in clash.stderr


def give_status(plane: ApiThread, name: str, namespace: str = "default") -> None:
    """The status the controller writes for a canary at 20% (KServe's field names)."""
    plane.store.set_status(KIND, namespace, name, {
        "observedGeneration": 1, "url": f"http://{name}.{namespace}.example.com",
        "address": {"url": "http://127.0.0.1:8080"},
        "conditions": [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True",
                                                                      "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "components": {"predictor": {
            "latestCreatedRevision": f"{name}-predictor-00002", "latestReadyRevision": f"{name}-predictor-00002",
            "latestRolledoutRevision": f"{name}-predictor-00001",
            "traffic": [{"revisionName": f"{name}-predictor-00002", "percent": 20, "latestRevision": True,
                         "tag": "latest"},
                        {"revisionName": f"{name}-predictor-00001", "percent": 80, "latestRevision": False,
                         "tag": "prev"}]}}})


def test_get_table_wide_json_yaml(plane, project):
    run("apply", "-f", str(project / "sklearn-iris.yaml"))
    run("apply", "-f", str(project / "sklearn-iris.yaml"), "-n", "team-a")
    give_status(plane, "sklearn-iris")
    lines = run("get", "isvc").stdout.splitlines()
    assert lines[0].split() == ["NAME", "URL", "READY", "PREV", "LATEST", "AGE"]
    assert lines[1].split()[:5] == ["sklearn-iris", "http://sklearn-iris.default.example.com", "True", "80", "20"]
    assert len(lines) == 2
    wide = run("get", "inferenceservices", "-o", "wide", "-A").stdout.splitlines()
    assert wide[0].split() == ["NAMESPACE", "NAME", "URL", "READY", "PREV", "LATEST", "PREVROLLEDOUTREVISION",
                               "LATESTREADYREVISION", "TRAFFIC", "AGE"]
    assert wide[1].split()[:10] == ["default", "sklearn-iris", "http://sklearn-iris.default.example.com", "True", "80",
                                    "20", "sklearn-iris-predictor-00001", "sklearn-iris-predictor-00002",
                                    "sklearn-iris-predictor-00002=20%", "sklearn-iris-predictor-00001=80%"]
    assert wide[2].split()[:2] == ["team-a", "sklearn-iris"]  # no status yet: empty columns
    one = json.loads(run("get", "isvc", "sklearn-iris", "-o", "json").stdout)
    assert one["kind"] == KIND and one["status"]["components"]["predictor"]["traffic"][0]["percent"] == 20
    listed = yaml.safe_load(run("get", "isvc", "-o", "yaml", "-n", "team-a").stdout)
    assert listed["kind"] == "List" and [i["metadata"]["namespace"] for i in listed["items"]] == ["team-a"]
    empty = run("get", "isvc", "-n", "nobody")
    assert empty.exit_code == 0 and empty.stderr == "No resources found in namespace 'nobody'.\n"
    assert "not found in namespace 'default'" in run("get", "isvc", "ghost").stderr
    assert "unknown kind 'pods'" in run("get", "pods").stderr
    assert "--output 'table' is not one of" in run("get", "isvc", "-o", "table").stderr


def test_describe_shows_status_revisions_replicas_and_events(plane, project):
    run("apply", "-f", str(project / "sklearn-iris.yaml"))
    store = plane.store
    for number in (1, 2):
        revision = store.add_revision("default", "sklearn-iris", f"fp{number}", {}, 1)
        store.upsert_replica(ReplicaRecord("default", "sklearn-iris", revision.name, 0, 1000 + number,
                                           f"http://127.0.0.1:{5000 + number}", None, "ready", number - 1,
                                           "code 1" if number == 2 else "", time.time(), "/tmp/r.log"))
    store.event(KIND, "default", "sklearn-iris", "Warning", "ReplicaRestarted",
                "replica 0 of sklearn-iris-predictor-00002 exited with code 1; restarting in 1s")
    give_status(plane, "sklearn-iris")
    result = run("describe", "isvc", "sklearn-iris")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Name:         sklearn-iris" in text and "URL:          http://sklearn-iris.default.example.com" in text
    assert "storageUri: " + str(project / "model") in text
    assert [line.split()[:3] for line in text.splitlines() if "sklearn-iris-predictor-0000" in line][:2] == [
        ["sklearn-iris-predictor-00001", "1", "80%"], ["sklearn-iris-predictor-00002", "1", "20%"]]
    assert "ReplicaRestarted" in text and "restarting in 1s" in text
    assert "http://127.0.0.1:5002" in text and "code 1" in text
    assert "rolled out: sklearn-iris-predictor-00001" in text


def test_delete_and_wait(plane, project):
    run("apply", "-f", str(project / "sklearn-iris.yaml"))
    result = run("delete", "isvc", "sklearn-iris")
    assert result.stdout == ('inferenceservice.serving.kserve.io "sklearn-iris" deleting (replicas stop in the '
                             "background)\n")
    assert run("get", "isvc").stdout.splitlines()[1].split()[1] == "Deleting"
    threading.Timer(0.4, plane.store.remove, (KIND, "default", "sklearn-iris")).start()
    waited = run("delete", "isvc", "sklearn-iris", "--wait", "--timeout", "20")
    assert waited.stdout == 'inferenceservice.serving.kserve.io "sklearn-iris" deleted\n'
    gone = run("delete", "isvc", "sklearn-iris")
    assert gone.exit_code == 1 and "not found" in gone.stderr


def test_logs(plane, project, home):
    run("apply", "-f", str(project / "sklearn-iris.yaml"))
    folder = home / "logs" / "default" / "sklearn-iris"
    folder.mkdir(parents=True)
    (folder / "sklearn-iris-predictor-00001-0.log").write_text("a\nb\nc\n")
    (folder / "sklearn-iris-predictor-00001-1.log").write_text("d\n")
    result = run("logs", "isvc", "sklearn-iris", "--tail", "1")
    assert result.stdout == "[sklearn-iris-predictor-00001-0] c\n[sklearn-iris-predictor-00001-1] d\n"
    missing = run("logs", "isvc", "sklearn-iris", "--revision", "sklearn-iris-predictor-00005")
    assert missing.exit_code == 1 and "no logs of revision 'sklearn-iris-predictor-00005'" in missing.stderr


def test_rollout_commands(plane, project):
    text = (project / "sklearn-iris.yaml").read_text().replace("  predictor:\n", "  predictor:\n    "
                                                               "canaryTrafficPercent: 20\n")
    assert run("apply", "-f", "-", stdin=text.replace('"./model"', str(project / "model"))).exit_code == 0
    promoted = run("rollout", "promote", "sklearn-iris")
    assert promoted.exit_code == 0 and promoted.stdout.startswith("promoting")
    assert "canaryTrafficPercent" not in plane.store.get(KIND, "default", "sklearn-iris").spec["predictor"]
    plane.store.add_revision("default", "sklearn-iris", "fp", {}, 1)
    pinned = run("rollout", "pin", "sklearn-iris", "1")
    assert pinned.stdout == "pinned to sklearn-iris-predictor-00001: it gets all traffic once ready\n"
    back = run("rollout", "rollback", "sklearn-iris", "sklearn-iris-predictor-00001")
    assert back.exit_code == 0 and "pinned to sklearn-iris-predictor-00001" in back.stdout
    nothing = run("rollout", "rollback", "sklearn-iris")
    assert nothing.exit_code == 1 and "no previous rolled-out revision" in nothing.stderr


@pytest.mark.parametrize("command", [["apply", "-f", "{file}"], ["get", "isvc"], ["describe", "isvc", "x"],
                                     ["delete", "isvc", "x"], ["logs", "isvc", "x"], ["rollout", "promote", "x"]])
def test_every_command_says_how_to_start_the_plane(home, project, command):
    args = [part.format(file=project / "sklearn-iris.yaml") for part in command]
    result = run(*args)
    assert result.exit_code == 1
    assert "the control plane is not running; start it with: shipyard up --detach" in result.stderr


def test_help_reads_well():
    for command in (["apply"], ["get"], ["describe"], ["delete"], ["logs"], ["rollout"], ["rollout", "pin"]):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout, command
