"""validate() for the data kinds: Fluid's own examples pass, every rule names the field it refuses, and
fields with no local meaning are accepted with a warning naming them."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.control.client import cache_runtime
from shipyard.control.data_validation import parse_dataset_uri, parse_duration
from shipyard.control.resources import kind_of, parse_documents
from shipyard.control.validation import SCHEMA_DIR, SCHEMA_FILES, ValidationError, schema_of, validate

CRDS = Path(__file__).resolve().parents[3] / "shared" / "crds"

# Fluid's docs (samples/data_warmup.md, dataflow.md, dataprocess.md), as published but for local mounts.
FLUID_EXAMPLES = """
apiVersion: data.fluid.io/v1alpha1
kind: Dataset
metadata:
  name: spark
spec:
  mounts:
    - mountPoint: https://mirrors.bit.edu.cn/apache/spark/
      name: spark
---
apiVersion: data.fluid.io/v1alpha1
kind: CacheRuntime
metadata:
  name: spark
spec:
  runtimeClassName: shipyard
  worker:
    tieredStore:
      levels:
        - processMemory:
            quota: 1Gi
          high: "0.95"
          low: "0.7"
        - emptyDir:
            quota: 10Gi
---
apiVersion: data.fluid.io/v1alpha1
kind: DataLoad
metadata:
  name: spark-dataload
spec:
  dataset:
    name: spark
    namespace: default
  loadMetadata: true
  target:
    - path: /spark/spark-3.5.1
      replicas: 1
---
apiVersion: data.fluid.io/v1alpha1
kind: DataMigrate
metadata:
  name: migrate-in
spec:
  from:
    externalStorage:
      uri: s3://bucket/imagenet
  to:
    dataset:
      name: spark
      namespace: default
      path: /imports
---
apiVersion: data.fluid.io/v1alpha1
kind: DataProcess
metadata:
  name: step3-process
spec:
  dataset:
    name: spark
    namespace: default
    mountPath: /data
  runAfter:
    kind: DataLoad
    name: spark-dataload
  processor:
    script:
      command: ["bash"]
      source: |
        ls -l $DATASET_PATH
---
apiVersion: data.shipyard.io/v1alpha1
kind: DataClean
metadata:
  name: evict
spec:
  dataset:
    name: spark
  target:
    - path: /spark/*.tgz
  runAfter:
    kind: DataProcess
    name: step3-process
  ttlSecondsAfterFinished: 60
"""


def examples() -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for document in parse_documents(FLUID_EXAMPLES)}


def errors_of(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as raised:
        validate(document)
    return {error.path: error.message for error in raised.value.errors}


def warnings_of(document: dict[str, Any]) -> dict[str, str]:
    return {warning.path: warning.message for warning in validate(document).warnings}


def changed(kind: str, change: Any) -> dict[str, Any]:
    document = copy.deepcopy(examples()[kind])
    change(document)
    return document


def test_fluid_examples_are_valid_without_warnings():
    for kind, document in examples().items():
        validated = validate(document)
        assert (validated.resource.kind, validated.warnings) == (kind, [])
    document = changed("DataLoad", lambda d: d["spec"]["target"][0].update(replicas=2))
    assert warnings_of(document) == {"spec.target[0].replicas": "not honoured: one machine keeps one copy"}


def test_kinds_and_their_short_names():
    for name, kind in [("datasets", "Dataset"), ("dataset", "Dataset"), ("cacheruntime", "CacheRuntime"),
                       ("load", "DataLoad"), ("dataloads", "DataLoad"), ("migrate", "DataMigrate"),
                       ("dataprocess", "DataProcess"), ("datacleans", "DataClean")]:
        assert kind_of(name).kind == kind


@pytest.mark.parametrize("kind,file", [("Dataset", "datasets"), ("CacheRuntime", "cacheruntimes"),
                                       ("DataLoad", "dataloads"), ("DataMigrate", "datamigrates"),
                                       ("DataProcess", "dataprocesses")])
def test_vendored_schemas_are_fluids_unchanged(kind, file):
    crd_file = CRDS / f"data.fluid.io_{file}.yaml"
    if not crd_file.exists():
        pytest.skip(f"{crd_file} is absent (a clone without ../shared)")
    crd = yaml.safe_load(crd_file.read_text())
    upstream = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]["openAPIV3Schema"]
    with gzip.open(SCHEMA_DIR / SCHEMA_FILES[kind]) as handle:
        assert json.load(handle) == upstream


def test_dataclean_schema_is_strict():
    assert schema_of("DataClean")["properties"]["spec"]["required"] == ["dataset"]
    document = changed("DataClean", lambda d: d["spec"].update(mode="evict"))
    assert errors_of(document) == {"spec.mode": "unknown field"}
    document = changed("DataClean", lambda d: d["spec"].pop("dataset"))
    assert errors_of(document) == {"spec.dataset": "required field is missing"}


def test_unknown_fields_are_errors_with_a_hint():
    document = changed("DataLoad", lambda d: d["spec"].update(targets=[{"path": "/x"}]))
    assert errors_of(document) == {"spec.targets": "unknown field; did you mean 'target'?"}
    document = changed("Dataset", lambda d: d["spec"]["mounts"][0].update(mountpoint="/data/x"))
    assert errors_of(document) == {"spec.mounts[0].mountpoint": "unknown field; did you mean 'mountPoint'?"}


def test_dataset_needs_a_mount_and_a_usable_mount_point():
    document = changed("Dataset", lambda d: d["spec"].pop("mounts"))
    assert list(errors_of(document)) == ["spec.mounts"]
    assert "at least one mount" in errors_of(document)["spec.mounts"]
    document = changed("Dataset", lambda d: d["spec"].update(mounts=[]))
    assert list(errors_of(document)) == ["spec.mounts"]
    document = changed("Dataset", lambda d: d["spec"]["mounts"][0].update(mountPoint="pvc://claim/data"))
    assert "pvc://" in errors_of(document)["spec.mounts[0].mountPoint"]
    document = changed("Dataset", lambda d: d["spec"]["mounts"].append({"mountPoint": "/srv/other", "name": "spark"}))
    assert "already used" in errors_of(document)["spec.mounts[1].name"]
    document = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "d"}}
    assert errors_of(document) == {"spec": "required field is missing (a Dataset needs spec.mounts)"}


def test_dataset_warnings_name_fields_without_local_meaning():
    def add(document: dict[str, Any]) -> None:
        document["spec"]["nodeAffinity"] = {"required": {"nodeSelectorTerms": []}}
        document["spec"]["tolerations"] = [{"key": "gpu", "operator": "Exists"}]
        document["spec"]["placement"] = "Shared"
        document["metadata"]["annotations"] = {"data.shipyard.io/metadata-sync-intervall": "1m"}

    warnings = warnings_of(changed("Dataset", add))
    assert set(warnings) == {"spec.nodeAffinity", "spec.tolerations", "spec.placement",
                             "metadata.annotations[data.shipyard.io/metadata-sync-intervall]"}
    assert "did you mean 'data.shipyard.io/metadata-sync-interval'" in \
        warnings["metadata.annotations[data.shipyard.io/metadata-sync-intervall]"]
    document = changed("Dataset", lambda d: d["metadata"].update(
        annotations={"data.shipyard.io/metadata-sync-interval": "soon"}))
    assert "not a duration" in errors_of(document)["metadata.annotations[data.shipyard.io/metadata-sync-interval]"]


def test_cache_runtime_levels_and_options_are_checked_by_path():
    document = changed("CacheRuntime", lambda d: d["spec"]["worker"]["tieredStore"]["levels"][0].update(low="0.99"))
    assert "low watermark" in errors_of(document)["spec.worker.tieredStore.levels[0].low"]
    document = changed("CacheRuntime", lambda d: d["spec"].update(options={"evictionPolicy": "fifo"}))
    assert list(errors_of(document)) == ["spec.options.evictionPolicy"]
    document = changed("CacheRuntime", lambda d: d["spec"].update(options={"blocksize": "1Mi"}))
    assert "did you mean 'blockSize'" in errors_of(document)["spec.options.blocksize"]
    document = changed("CacheRuntime", lambda d: d["spec"]["worker"]["tieredStore"]["levels"][1]["emptyDir"].update(
        quota="lots"))
    assert list(errors_of(document)) == ["spec.worker.tieredStore.levels[1].emptyDir.quota"]
    document = changed("CacheRuntime", lambda d: d["spec"].pop("runtimeClassName"))
    assert errors_of(document) == {"spec.runtimeClassName": "required field is missing"}


def test_cache_runtime_warnings():
    def add(document: dict[str, Any]) -> None:
        document["spec"]["runtimeClassName"] = "alluxio"
        document["spec"]["worker"]["replicas"] = 3
        document["spec"]["master"] = {"replicas": 1}

    assert set(warnings_of(changed("CacheRuntime", add))) == {"spec.runtimeClassName", "spec.worker.replicas",
                                                             "spec.master"}


def test_policies_schedules_and_on_event():
    document = changed("DataLoad", lambda d: d["spec"].update(policy="Hourly"))
    assert list(errors_of(document)) == ["spec.policy"]
    document = changed("DataLoad", lambda d: d["spec"].update(policy="Cron"))
    assert "required when policy is Cron" in errors_of(document)["spec.schedule"]
    document = changed("DataLoad", lambda d: d["spec"].update(policy="Cron", schedule="*/5 * * *"))
    assert "expected 5 fields" in errors_of(document)["spec.schedule"]
    for good in ("*/5 * * * *", "@hourly", "@every 2s"):
        validate(changed("DataLoad", lambda d: d["spec"].update(policy="Cron", schedule=good)))
    validate(changed("DataLoad", lambda d: d["spec"].update(policy="OnEvent")))
    document = changed("DataProcess", lambda d: d["spec"].update(policy="OnEvent"))
    assert "OnEvent is supported for DataLoad only" in errors_of(document)["spec.policy"]
    document = changed("DataLoad", lambda d: d["spec"].update(schedule="@hourly"))
    assert warnings_of(document)["spec.schedule"] == "ignored: policy is Once, not Cron"


def test_operations_need_a_dataset_name():
    document = changed("DataLoad", lambda d: d["spec"]["dataset"].pop("name"))
    assert errors_of(document) == {"spec.dataset.name": "required field is missing"}
    document = changed("DataClean", lambda d: d["spec"]["dataset"].pop("name"))
    assert errors_of(document) == {"spec.dataset.name": "required field is missing"}
    document = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "DataLoad", "metadata": {"name": "x"}}
    assert errors_of(document) == {"spec": "required field is missing (a DataLoad needs spec.dataset)"}


def test_run_after_must_name_an_operation_shipyard_runs():
    document = changed("DataProcess", lambda d: d["spec"].update(runAfter={"kind": "DataBackup", "name": "b"}))
    assert "not an operation Shipyard runs" in errors_of(document)["spec.runAfter.kind"]
    document = changed("DataProcess", lambda d: d["spec"].update(runAfter={"kind": "Dataset", "name": "b"}))
    assert list(errors_of(document)) == ["spec.runAfter.kind"]  # Fluid's enum
    document = changed("DataClean", lambda d: d["spec"].update(runAfter={"kind": "DataClean", "name": "evict"}))
    assert errors_of(document) == {"spec.runAfter.name": "an operation cannot run after itself"}
    document = changed("DataProcess", lambda d: d["spec"]["runAfter"].update(
        affinityStrategy={"policy": "Require", "dependOn": {"kind": "DataLoad", "name": "x"}}))
    assert "spec.runAfter.affinityStrategy" in warnings_of(document)


def test_process_needs_a_local_script():
    document = changed("DataProcess", lambda d: d["spec"].update(processor={"job": {"podSpec": {"containers": [
        {"name": "c", "image": "python"}]}}}))
    assert errors_of(document) == {"spec.processor.job": "pod specs need Kubernetes; use processor.script "
                                                         "(command python / python3 / bash / sh / sql and source)"}
    document = changed("DataProcess", lambda d: d["spec"]["processor"]["script"].update(command=["ruby"]))
    assert "'ruby' is not supported" in errors_of(document)["spec.processor.script.command[0]"]
    document = changed("DataProcess", lambda d: d["spec"]["processor"]["script"].pop("command"))
    assert "required field is missing" in errors_of(document)["spec.processor.script.command"]
    document = changed("DataProcess", lambda d: d["spec"]["processor"]["script"].pop("source"))
    assert errors_of(document) == {"spec.processor.script.source": "required field is missing"}
    document = changed("DataProcess", lambda d: d["spec"]["processor"]["script"].update(
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]))
    assert "set value" in errors_of(document)["spec.processor.script.env[0].valueFrom"]
    document = changed("DataProcess", lambda d: d["spec"]["processor"]["script"].update(image="python",
                                                                                          imageTag="3.11"))
    assert set(warnings_of(document)) == {"spec.processor.script.image", "spec.processor.script.imageTag"}


def test_output_annotation_and_unknown_annotations():
    def output(value: str) -> Any:
        return lambda d: d["metadata"].update(annotations={"data.shipyard.io/output": value})

    validate(changed("DataProcess", output("dataset://features/train")))
    assert "names no dataset" in errors_of(changed("DataProcess", output("dataset:///x")))[
        "metadata.annotations[data.shipyard.io/output]"]
    assert "not a dataset:// URI" in errors_of(changed("DataProcess", output("s3://b/x")))[
        "metadata.annotations[data.shipyard.io/output]"]
    document = changed("DataLoad", lambda d: d["metadata"].update(
        annotations={"data.shipyard.io/poll-intervall": "1s"}))
    assert "did you mean 'data.shipyard.io/poll-interval'" in \
        warnings_of(document)["metadata.annotations[data.shipyard.io/poll-intervall]"]
    document = changed("DataLoad", lambda d: d["metadata"].update(annotations={"data.shipyard.io/poll-interval": "0s"}))
    assert list(errors_of(document)) == ["metadata.annotations[data.shipyard.io/poll-interval]"]


def test_load_and_migrate_options():
    document = changed("DataLoad", lambda d: d["spec"].update(options={"parallelism": "many"}))
    assert list(errors_of(document)) == ["spec.options.parallelism"]
    document = changed("DataLoad", lambda d: d["spec"].update(options={"paralelism": "4"}))
    assert "did you mean 'parallelism'" in warnings_of(document)["spec.options.paralelism"]
    document = changed("DataMigrate", lambda d: d["spec"].update(options={"checksum": "maybe"}))
    assert list(errors_of(document)) == ["spec.options.checksum"]
    validate(changed("DataMigrate", lambda d: d["spec"].update(options={"checksum": "false", "exclude": "*.tmp"})))


def test_migrate_sides():
    document = changed("DataMigrate", lambda d: d["spec"]["to"].update(externalStorage={"uri": "/srv/out"}))
    assert "exactly one of dataset or externalStorage" in errors_of(document)["spec.to"]
    document = changed("DataMigrate", lambda d: d["spec"].update(to={"externalStorage": {"uri": "/srv/out"}}))
    assert "one of spec.from or spec.to must be a dataset" in errors_of(document)["spec"]
    document = changed("DataMigrate", lambda d: d["spec"]["from"]["externalStorage"].update(uri="relative/dir"))
    assert "relative path" in errors_of(document)["spec.from.externalStorage.uri"]
    document = changed("DataMigrate", lambda d: d["spec"]["to"]["dataset"].pop("namespace"))
    assert errors_of(document) == {"spec.to.dataset.namespace": "required field is missing"}  # Fluid's schema
    document = changed("DataMigrate", lambda d: d["spec"].update(policy="OnEvent"))
    assert list(errors_of(document)) == ["spec.policy"]


def test_storage_uris_may_name_a_dataset():
    trainjob = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "t"},
                "spec": {"runtimeRef": {"name": "python"}, "initializer": {"dataset": {"storageUri": "dataset://x/a"}},
                         "trainer": {"command": ["python", "-c", "pass"]}}}
    validate(trainjob)
    trainjob["spec"]["initializer"]["dataset"]["storageUri"] = "dataset://"
    assert "names no dataset" in errors_of(trainjob)["spec.initializer.dataset.storageUri"]
    trainjob["spec"]["initializer"]["dataset"]["storageUri"] = "dataset://x/a"
    trainjob["metadata"]["annotations"] = {"trainer.shipyard.io/dataset-clean-after": "yes"}
    assert list(errors_of(trainjob)) == ["metadata.annotations[trainer.shipyard.io/dataset-clean-after]"]
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "m"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                             "storageUri": "dataset://models/iris"}}}}
    validate(isvc)
    isvc["spec"]["predictor"]["model"]["storageUri"] = "dataset://Models/iris"
    assert "not a Dataset name" in errors_of(isvc)["spec.predictor.model.storageUri"]


def test_helpers():
    assert parse_dataset_uri("dataset://imagenet") == ("imagenet", "/")
    assert parse_dataset_uri("dataset://imagenet/train/") == ("imagenet", "/train")
    assert [parse_duration(text) for text in ("10s", "5m", "1h30m", "250ms", 3, "2.5")] == [10, 300, 5400, 0.25, 3,
                                                                                            2.5]
    for bad in ("", "soon", "-1", "0", "5x"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_sdk_cache_shorthand_makes_a_valid_runtime():
    runtime = cache_runtime("d", "default", {"quota": "2Gi", "evictionPolicy": "lru", "blockSize": "1Mi"})
    assert runtime["spec"]["worker"]["tieredStore"]["levels"] == [{"emptyDir": {"quota": "2Gi"}}]
    validate(runtime)
    runtime = cache_runtime("d", "default", {"levels": [{"medium": "MEM", "quota": "256Mi"},
                                                        {"medium": "SSD", "quota": "4Gi", "path": "/srv/cache",
                                                         "high": 0.9, "low": 0.5}]})
    assert runtime["spec"]["worker"]["tieredStore"]["levels"][1] == {
        "hostPath": {"paths": ["/srv/cache"], "quotas": ["4Gi"]}, "high": "0.9", "low": "0.5"}
    validate(runtime)
    with pytest.raises(ValueError, match="unknown key"):
        cache_runtime("d", "default", {"size": "1Gi"})


def test_apply_resolves_relative_local_sources_against_the_file(tmp_path):
    from shipyard.control.validation import resolve_storage_paths

    [ds, migrate] = parse_documents("""
apiVersion: data.fluid.io/v1alpha1
kind: Dataset
metadata: {name: d}
spec:
  mounts: [{mountPoint: ./data}, {mountPoint: s3://bucket/x}, {mountPoint: /srv/abs}]
---
apiVersion: data.fluid.io/v1alpha1
kind: DataMigrate
metadata: {name: m}
spec:
  from: {externalStorage: {uri: exports}}
  to: {dataset: {name: d, namespace: default}}
""")
    resolve_storage_paths(ds, tmp_path)
    assert [m["mountPoint"] for m in ds["spec"]["mounts"]] == [str(tmp_path / "data"), "s3://bucket/x", "/srv/abs"]
    resolve_storage_paths(migrate, tmp_path)
    assert migrate["spec"]["from"]["externalStorage"]["uri"] == str(tmp_path / "exports")
