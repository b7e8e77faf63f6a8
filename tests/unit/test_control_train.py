"""The TrainJob parts that need no plane: admission rules, inventory declarations, validation, report reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shipyard.control.controllers.trainjob import Report, estimate_remaining, read_report
from shipyard.control.resources import kind_of
from shipyard.control.scheduler import Demand, Inventory, admit, detect_inventory, job_needs
from shipyard.control.validation import ValidationError, validate

MACHINE = Inventory({"cpu": 4.0, "memory": 8e9, "gpu": 0.0})


def demand(name: str, cpu: float, priority: int = 0, queued_at: float = 0.0) -> Demand:
    return Demand(("default", name), priority, queued_at, job_needs(1, {"cpu": cpu}))


def names(admitted: list[Demand]) -> list[str]:
    return [item.key[1] for item in admitted]


def test_higher_priority_first_then_first_come_first_served():
    queued = [demand("late", 1, queued_at=2), demand("early", 1, queued_at=1), demand("urgent", 1, 5, queued_at=3)]
    assert names(admit(queued, MACHINE, [])) == ["urgent", "early", "late"]


def test_a_gang_starts_only_when_all_its_nodes_fit():
    big = Demand(("default", "big"), 0, 0.0, job_needs(3, {"cpu": 1}))
    assert job_needs(3, {"cpu": 1})["cpu"] == 3
    assert names(admit([big], MACHINE, running=[{"cpu": 2}])) == []
    assert names(admit([big], MACHINE, running=[{"cpu": 1}])) == ["big"]


def test_skip_ahead_never_delays_a_higher_priority_job():
    blocked_high = demand("high", 3, priority=10)
    same_small = demand("same", 1, priority=10, queued_at=1)
    low_small = demand("low", 1, priority=0)
    # 2 cpus free: "high" waits; "same" (equal priority) may skip ahead; "low" may not
    assert names(admit([low_small, same_small, blocked_high], MACHINE, running=[{"cpu": 2}])) == ["same"]


def test_a_job_bigger_than_the_machine_does_not_hold_up_the_queue():
    assert names(admit([demand("huge", 64, priority=9), demand("small", 1)], MACHINE, [])) == ["small"]


def test_inventory_declared_through_the_environment():
    declared = detect_inventory({"SHIPYARD_CPUS": "3", "SHIPYARD_MEMORY": "1000", "SHIPYARD_GPUS": "0,1"})
    assert declared.total == {"cpu": 3.0, "memory": 1000.0, "gpu": 2.0}
    assert detect_inventory({"SHIPYARD_GPU_COUNT": "4"}).total["gpu"] == 4.0
    detected = detect_inventory({"SHIPYARD_GPUS": ""})
    assert detected.total["cpu"] >= 1 and detected.total["memory"] > 0 and detected.total["gpu"] == 0
    with pytest.raises(ValueError, match="SHIPYARD_CPUS='two' is not a number"):
        detect_inventory({"SHIPYARD_CPUS": "two"})


def test_trainer_kinds_and_their_short_names():
    assert kind_of("tj").kind == "TrainJob" and kind_of("trainjobs").kind == "TrainJob"
    assert not kind_of("clustertrainingruntime").namespaced


def job_document(**trainer) -> dict:
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "demo"},
            "spec": {"runtimeRef": {"name": "python"}, "trainer": {"command": ["python", "t.py"], **trainer}}}


def error_paths(document: dict) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        validate(document)
    return {error.path: error.message for error in caught.value.errors}


def test_a_valid_trainjob_validates_with_warnings_for_what_is_ignored():
    validated = validate(job_document(image="pytorch/pytorch:latest", numNodes=2))
    assert validated.resource.kind == "TrainJob" and validated.resource.namespace == "default"
    assert [w.path for w in validated.warnings] == ["spec.trainer.image"]


def test_trainjob_errors_name_the_field():
    document = job_document(numProcPerNode=0, numNodes=0, env=[{"name": "OK", "value": "1"},
                                                               {"name": "JAX_PROCESS_ID", "value": "3"}])
    document["metadata"]["annotations"] = {"trainer.shipyard.io/priority": "high",
                                           "trainer.shipyard.io/packages": "numpy"}
    document["spec"]["initializer"] = {"dataset": {"storageUri": "ftp://host/data"},
                                       "model": {"storageUri": "relative/model"}}
    errors = error_paths(document)
    assert set(errors) == {
        "spec.trainer.numProcPerNode", "spec.trainer.numNodes", "spec.trainer.env[1].name",
        "metadata.annotations[trainer.shipyard.io/priority]", "metadata.annotations[trainer.shipyard.io/packages]",
        "spec.initializer.dataset.storageUri", "spec.initializer.model.storageUri"}
    assert "reserved" in errors["spec.trainer.env[1].name"]
    assert "less than the minimum of 1" in errors["spec.trainer.numProcPerNode"]


def test_schema_errors_for_trainer_kinds():
    assert error_paths(job_document(numNode=2)) == {"spec.trainer.numNode": "unknown field; did you mean "
                                                    "'numNodes'?"}
    no_ref = job_document()
    del no_ref["spec"]["runtimeRef"]
    assert set(error_paths(no_ref)) == {"spec.runtimeRef"}
    runtime = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
               "metadata": {"name": "mine", "namespace": "ignored"},
               "spec": {"mlPolicy": {"numNodes": 1, "torch": {}, "jax": {}}, "template": {"spec": {}}}}
    assert set(error_paths(runtime)) == {"spec.mlPolicy"}
    del runtime["spec"]["mlPolicy"]["jax"]
    assert validate(runtime).resource.namespace == ""  # cluster-scoped


def test_report_lines_become_progress_eta_and_latest_metrics(tmp_path: Path):
    path = tmp_path / "report.jsonl"
    lines = [{"time": 100.0, "step": 0, "progress": 10, "metrics": {"loss": 2.0}},
             {"time": 110.0, "step": 1, "progress": 30, "metrics": {"loss": 1.0, "acc": 0.5}}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"time": 120, "progr')
    report = Report()
    read_report(path, report)
    assert report.metrics == {"loss": 1.0, "acc": 0.5} and report.last == (110.0, 30.0)
    assert estimate_remaining(report.first, report.last) == 35  # 2%/s, 70% left
    with open(path, "a") as handle:  # the torn line completes; only the new bytes are read
        handle.write('ess": 50, "metrics": {"loss": 0.5}}\nnot json\n')
    read_report(path, report)
    assert report.metrics["loss"] == 0.5 and report.last == (120.0, 50.0)
    assert estimate_remaining(None, report.last) is None
