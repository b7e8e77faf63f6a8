"""validate(): KServe's own examples pass, every rule names the field it refuses, warnings name what is not honoured."""

from __future__ import annotations

import copy
import gzip
import json
import textwrap
from pathlib import Path

import pytest
import yaml

from shipyard.control.resources import parse_documents
from shipyard.control.validation import (SCHEMA_DIR, SCHEMA_FILES, ValidationError, resolve_storage_paths, schema_of,
                                         validate)

CRDS = Path(__file__).resolve().parents[3] / "shared" / "crds"

# The first example of KServe's docs ("Deploy Scikit-learn models with InferenceService"), as published.
KSERVE_SKLEARN = """
apiVersion: "serving.kserve.io/v1beta1"
kind: "InferenceService"
metadata:
  name: "sklearn-iris"
spec:
  predictor:
    model:
      modelFormat:
        name: sklearn
      storageUri: "gs://kfserving-examples/models/sklearn/1.0/model"
"""

# The V2 variant of the same docs page, with the runtime and resources it shows.
KSERVE_SKLEARN_V2 = """
apiVersion: "serving.kserve.io/v1beta1"
kind: "InferenceService"
metadata:
  name: "sklearn-v2-iris"
spec:
  predictor:
    model:
      modelFormat:
        name: sklearn
      protocolVersion: v2
      runtime: kserve-sklearnserver
      storageUri: "gs://kfserving-examples/models/sklearn/1.0/model"
      resources:
        requests:
          cpu: "100m"
          memory: "512Mi"
        limits:
          cpu: "1"
          memory: "1Gi"
"""

# The legacy framework field form (KServe before modelFormat).
KSERVE_LEGACY = """
apiVersion: "serving.kserve.io/v1beta1"
kind: "InferenceService"
metadata:
  name: "sklearn-iris"
spec:
  predictor:
    sklearn:
      storageUri: "gs://kfserving-examples/models/sklearn/1.0/model"
"""

# KServe's canary rollout example (second revision at 10%).
KSERVE_CANARY = """
apiVersion: "serving.kserve.io/v1beta1"
kind: "InferenceService"
metadata:
  name: "sklearn-iris"
spec:
  predictor:
    canaryTrafficPercent: 10
    model:
      modelFormat:
        name: sklearn
      storageUri: "gs://kfserving-examples/models/sklearn/1.0/model-2"
"""


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.joblib").write_bytes(b"not loaded by validation")
    return folder


def local(text: str, path: Path) -> dict:
    """The example with its gs:// storageUri pointed at a local folder (nothing else changed)."""
    [document] = parse_documents(text.replace("gs://kfserving-examples/models/sklearn/1.0/model-2", str(path))
                                 .replace("gs://kfserving-examples/models/sklearn/1.0/model", str(path)))
    return document


def errors_of(document: dict) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        validate(document)
    return {error.path: error.message for error in caught.value.errors}


def warnings_of(document: dict) -> dict[str, str]:
    return {warning.path: warning.message for warning in validate(document).warnings}


# -- upstream examples ------------------------------------------------------------------------------
def test_kserve_sklearn_example_with_a_local_storage_uri_is_valid_without_warnings(model_dir):
    validated = validate(local(KSERVE_SKLEARN, model_dir))
    assert validated.warnings == []
    resource = validated.resource
    assert (resource.kind, resource.namespace, resource.name) == ("InferenceService", "default", "sklearn-iris")
    assert resource.spec["predictor"]["model"]["storageUri"] == str(model_dir)


def test_kserve_example_unmodified_is_refused_for_its_gs_scheme():
    [document] = parse_documents(KSERVE_SKLEARN)
    assert errors_of(document) == {
        "spec.predictor.model.storageUri": "scheme 'gs://' is not supported; use a local path, file://, http://, "
                                           "https://, s3:// or dataset://NAME/path (through a Dataset's cache)"}


def test_kserve_v2_example_warns_about_runtime_and_resource_limits(model_dir):
    assert warnings_of(local(KSERVE_SKLEARN_V2, model_dir)) == {
        "spec.predictor.model.runtime": "'kserve-sklearnserver' is not used: Shipyard serves the model with its own "
                                        "runtime for the format",
        "spec.predictor.model.resources.limits": "cpu and memory limits are not enforced locally (replicas are "
                                                 "processes on this machine); requests (or limits without requests) "
                                                 "set the cpu/memory autoscaling targets",
    }


def test_legacy_framework_field_and_canary_examples_are_valid(model_dir):
    assert validate(local(KSERVE_LEGACY, model_dir)).resource.spec["predictor"]["sklearn"]["storageUri"] == \
        str(model_dir)
    assert validate(local(KSERVE_CANARY, model_dir)).warnings == []


def test_remote_schemes_and_file_uris_are_accepted(model_dir):
    for uri in ("s3://bucket/models/iris", "https://example.com/model.tar.gz", "http://host/m.joblib",
                f"file://{model_dir}"):
        document = local(KSERVE_SKLEARN, model_dir)
        document["spec"]["predictor"]["model"]["storageUri"] = uri
        assert validate(document).warnings == []


def test_vendored_schema_is_the_crd_schema():
    crd_file = CRDS / "serving.kserve.io_inferenceservices.yaml"
    if not crd_file.exists():
        pytest.skip(f"{CRDS} is absent (a clone without ../shared); the vendored schema cannot be compared")
    crd = yaml.safe_load(crd_file.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    assert schema_of("InferenceService") == version["schema"]["openAPIV3Schema"]
    with gzip.open(SCHEMA_DIR / SCHEMA_FILES["InferenceService"]) as handle:
        assert json.load(handle)["properties"]["spec"]["required"] == ["predictor"]
    assert "Apache License, Version 2.0" in (SCHEMA_DIR / "NOTICE").read_text()


# -- kind and metadata ------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "path", "message"), [
    ({"apiVersion": None}, "apiVersion", "required; e.g. serving.kserve.io/v1beta1"),
    ({"apiVersion": "serving.kserve.io/v1alpha1"}, "apiVersion",
     "'serving.kserve.io/v1alpha1' is not served for InferenceService; use serving.kserve.io/v1beta1"),
    ({"kind": None}, "kind", "required; expected one of: InferenceService, InferenceGraph, TrainJob, "
                             "TrainingRuntime, ClusterTrainingRuntime, Dataset, CacheRuntime, DataLoad, DataMigrate, "
                             "DataProcess, DataClean, BatchJob"),
    ({"kind": "isvc"}, "kind", "'isvc' is not a kind name; write 'InferenceService'"),
])
def test_kind_and_api_version_errors(model_dir, change, path, message):
    document = local(KSERVE_SKLEARN, model_dir)
    for key, value in change.items():
        if value is None:
            del document[key]
        else:
            document[key] = value
    assert errors_of(document) == {path: message}


def test_unknown_kind_names_the_known_ones(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["kind"] = "Deployment"
    assert errors_of(document) == {"kind": "unknown kind 'Deployment'; Shipyard knows: InferenceService "
                                           "(inferenceservice/isvc), InferenceGraph (inferencegraph/ig), "
                                           "TrainJob (trainjob/tj), TrainingRuntime "
                                           "(trainingruntime), ClusterTrainingRuntime (clustertrainingruntime), "
                                           "Dataset (dataset), CacheRuntime (cacheruntime), DataLoad (dataload/load), "
                                           "DataMigrate (datamigrate/migrate), DataProcess (dataprocess), DataClean "
                                           "(dataclean), BatchJob (batchjob/bj)"}


@pytest.mark.parametrize("name", ["Sklearn-Iris", "1-iris", "iris-", "iris_model", "a" * 64, ""])
def test_names_follow_kserve_rule(model_dir, name):
    document = local(KSERVE_SKLEARN, model_dir)
    document["metadata"]["name"] = name
    assert "is not a valid name" in errors_of(document)["metadata.name"]


def test_metadata_errors(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["metadata"] = {"generateName": "iris-", "namespace": "Team_A", "labels": {"tier": 1},
                            "annotations": {"serving.shipyard.io/rollback-max-error-rate": "5%",
                                            "serving.shipyard.io/shadow-percent": "150",
                                            "serving.shipyard.io/rollback-min-requests": "2.5"}}
    assert errors_of(document) == {
        "metadata.name": "required field is missing (generateName is not supported by apply)",
        "metadata.namespace": "'Team_A' is not a valid namespace: use at most 63 lower case letters, digits or '-', "
                              "starting and ending with a letter or digit",
        "metadata.labels[tier]": "1 is not a string; quote it (\"1\")",
        "metadata.annotations[serving.shipyard.io/rollback-max-error-rate]": "'5%' is not a number",
        "metadata.annotations[serving.shipyard.io/shadow-percent]": "'150' is out of range; expected between 0 "
                                                                    "and 100",
        "metadata.annotations[serving.shipyard.io/rollback-min-requests]": "'2.5' is not an integer",
    }


def test_metadata_and_spec_of_the_wrong_type(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["metadata"] = ["sklearn-iris"]
    document["spec"] = "predictor"
    assert errors_of(document) == {"metadata": "expected a mapping, got list",
                                   "spec": "'predictor' is not of type 'object'"}
    with pytest.raises(ValidationError, match="a document must be a mapping, not str"):
        validate("kind: InferenceService")


def test_namespace_is_kept(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["metadata"]["namespace"] = "team-a"
    assert validate(document).resource.namespace == "team-a"


# -- the upstream schema ----------------------------------------------------------------------------
def test_schema_errors_are_all_reported_by_path(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    predictor = document["spec"]["predictor"]
    predictor["minReplicas"] = "two"
    predictor["scaleMetric"] = "gpu"
    predictor["model"]["storageURI"] = "/elsewhere"
    predictor["model"]["modelFormat"] = {"version": "1"}
    predictor["model"]["resources"] = {"limits": {"cpu": "lots", "memory": [1]}}
    predictor["model"]["env"] = [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]
    predictor["containerConcurrency"] = 2**63
    document["specs"] = {}
    assert errors_of(document) == {
        "spec.predictor.minReplicas": "'two' is not of type 'integer'",
        "spec.predictor.scaleMetric": "'gpu' is not one of ['cpu', 'memory', 'concurrency', 'rps']",
        "spec.predictor.model.storageURI": "unknown field; did you mean 'storageUri'?",
        "spec.predictor.model.modelFormat.name": "required field is missing",
        "spec.predictor.model.resources.limits.cpu": "'lots' is not a quantity (e.g. 2, 500m, 1Gi)",
        "spec.predictor.model.resources.limits.memory": "[1] is not an integer or a string",
        "spec.predictor.model.env[1]": "duplicate of item 0 (name='A')",
        "spec.predictor.containerConcurrency": "9223372036854775808 is out of the int64 range",
        "specs": "unknown field; did you mean 'spec'?",
    }


def test_missing_spec_and_predictor(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    del document["spec"]
    assert errors_of(document) == {"spec": "required field is missing (an InferenceService needs spec.predictor)"}
    document["spec"] = {"transformer": {}}
    assert errors_of(document) == {"spec.predictor": "required field is missing"}


def test_status_in_a_document_is_ignored(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["status"] = {"url": "http://old", "anything": {"goes": True}}
    assert validate(document).resource.status == {}


# -- Shipyard's rules -------------------------------------------------------------------------------
def predictor_errors(model_dir: Path, predictor: dict) -> dict[str, str]:
    document = local(KSERVE_SKLEARN, model_dir)
    document["spec"]["predictor"] = predictor
    return errors_of(document)


def test_custom_containers_point_at_packages(model_dir):
    assert predictor_errors(model_dir, {"containers": [{"name": "kserve-container", "image": "me/model:1"}]}) == {
        "spec.predictor.containers": "custom containers are not supported locally; use a Shipyard package: "
                                     "modelFormat custom + storageUri pointing at it"}


def test_exactly_one_predictor_form(model_dir):
    assert predictor_errors(model_dir, {"minReplicas": 1}) == {
        "spec.predictor": "no model: set spec.predictor.model (modelFormat.name and storageUri) or a framework field "
                          "such as spec.predictor.sklearn.storageUri"}
    both = {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": str(model_dir)},
            "sklearn": {"storageUri": str(model_dir)}}
    assert predictor_errors(model_dir, both) == {
        "spec.predictor": "set exactly one of model or a framework field; found model, sklearn"}


def test_unsupported_formats_name_the_supported_ones(model_dir):
    supported = "sklearn, xgboost, lightgbm, onnx, pytorch, huggingface, custom, detector"
    assert predictor_errors(model_dir, {"tensorflow": {"storageUri": str(model_dir)}}) == {
        "spec.predictor.tensorflow": f"tensorflow models are not supported; Shipyard serves {supported} (custom: a "
                                     "Shipyard package)"}
    assert predictor_errors(model_dir, {"model": {"modelFormat": {"name": "triton"}, "storageUri": str(model_dir)}}) \
        == {"spec.predictor.model.modelFormat.name": f"'triton' is not supported; Shipyard serves {supported}"}


def test_every_supported_format_and_case_is_accepted(model_dir):
    for name in ("sklearn", "XGBoost", "lightgbm", "onnx", "pytorch", "huggingface"):
        document = local(KSERVE_SKLEARN, model_dir)
        document["spec"]["predictor"]["model"]["modelFormat"]["name"] = name
        assert validate(document).warnings == []


def test_storage_uri_rules(model_dir, tmp_path):
    def uri_errors(uri: str | None, model_format: str = "sklearn") -> dict[str, str]:
        model = {"modelFormat": {"name": model_format}}
        if uri is not None:
            model["storageUri"] = uri
        return predictor_errors(model_dir, {"model": model})

    assert uri_errors(None) == {"spec.predictor.model.storageUri": "required field is missing; set a local path, "
                                "file://, http(s)://, s3:// or dataset:// URI (or a Shipyard package folder)"}
    assert uri_errors("pvc://models/iris")["spec.predictor.model.storageUri"].startswith("scheme 'pvc://' is not")
    assert uri_errors("models/iris") == {"spec.predictor.model.storageUri": "'models/iris' is a relative path: the "
                                         "control plane cannot tell what it is relative to; use an absolute path "
                                         "(shipyard apply -f FILE resolves relative paths against FILE's folder)"}
    assert uri_errors(str(tmp_path / "nowhere")) == {"spec.predictor.model.storageUri":
                                                      f"{tmp_path / 'nowhere'} does not exist"}
    assert uri_errors(f"file://{tmp_path / 'nowhere'}") == {"spec.predictor.model.storageUri":
                                                             f"{tmp_path / 'nowhere'} does not exist"}
    assert uri_errors(str(model_dir), "custom") == {"spec.predictor.model.storageUri": f"{model_dir} is not a Shipyard "
                                                    "package: modelFormat custom needs a folder with shipyard.yaml "
                                                    "(or model.py)"}
    (model_dir / "shipyard.yaml").write_text("name: iris\n")
    package = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "pkg"},
               "spec": {"predictor": {"model": {"modelFormat": {"name": "custom"}, "storageUri": str(model_dir)}}}}
    assert validate(package).warnings == []


def test_storage_alternatives_are_refused(model_dir):
    model = {"modelFormat": {"name": "sklearn"}, "storageUri": str(model_dir), "storage": {"key": "s3creds"}}
    assert predictor_errors(model_dir, {"model": model, "storageUris": [{"uri": "s3://b/m"}]}) == {
        "spec.predictor.model.storage": "storage specs (secret keys) are not supported; set storageUri (s3:// "
                                        "credentials come from the usual AWS environment)",
        "spec.predictor.storageUris": "not supported; set storageUri on spec.predictor.model"}


def test_protocol_and_ranges(model_dir):
    model = {"modelFormat": {"name": "sklearn"}, "storageUri": str(model_dir), "protocolVersion": "grpc-v1"}
    assert predictor_errors(model_dir, {
        "model": model, "canaryTrafficPercent": 101, "minReplicas": -1, "containerConcurrency": -2, "timeout": 0,
        "batcher": {"maxBatchSize": 0, "maxLatency": -5}}) == {
        "spec.predictor.model.protocolVersion": "'grpc-v1' is not supported; use one of v1, v2, grpc-v2",
        "spec.predictor.canaryTrafficPercent": "101 is greater than the maximum of 100",
        "spec.predictor.minReplicas": "-1 is less than the minimum of 0",
        "spec.predictor.containerConcurrency": "-2 is less than the minimum of 0",
        "spec.predictor.timeout": "0 is less than the minimum of 1",
        "spec.predictor.batcher.maxBatchSize": "0 is less than the minimum of 1",
        "spec.predictor.batcher.maxLatency": "-5 is less than the minimum of 0",
    }
    model["protocolVersion"] = "v2"
    assert predictor_errors(model_dir, {"model": model, "minReplicas": 3, "maxReplicas": 2,
                                        "canaryTrafficPercent": -1}) == {
        "spec.predictor.maxReplicas": "2 is less than minReplicas (3)",
        "spec.predictor.canaryTrafficPercent": "-1 is less than the minimum of 0"}


def test_standard_mode_canary_list_is_refused(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["spec"]["canary"] = [{"predictor": {}, "trafficPercent": 10}]
    assert errors_of(document)["spec.canary"].startswith("the Standard-mode canary list is not supported")


def test_all_errors_come_at_once(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["metadata"]["name"] = "Bad"
    document["spec"]["predictor"]["minReplicas"] = -1
    document["spec"]["predictor"]["model"]["protocolVersion"] = "v3"
    document["spec"]["predictor"]["model"]["storgeUri"] = "x"
    assert set(errors_of(document)) == {"metadata.name", "spec.predictor.minReplicas",
                                        "spec.predictor.model.protocolVersion", "spec.predictor.model.storgeUri"}


# -- warnings ---------------------------------------------------------------------------------------
def test_fields_not_honoured_are_warned_by_path(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "Serverless",
                                           "example.com/team": "ml", "serving.shipyard.io/shadow-percnt": "5",
                                           "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
                                           "autoscaling.knative.dev/windw": "10s",
                                           "autoscaling.knative.dev/target-burst-capacity": "200"}
    predictor = document["spec"]["predictor"]
    predictor.update({"minReplicas": 0, "maxReplicas": 4, "scaleMetric": "concurrency", "scaleTarget": 5,
                      "scaleMetricType": "AverageValue", "autoScaling": {"metrics": []},
                      "logger": {"mode": "all", "url": "http://dumper"}, "nodeSelector": {"gpu": "yes"}})
    predictor["model"]["env"] = [{"name": "OMP_NUM_THREADS", "value": "1"}]
    assert warnings_of(document) == {
        "spec.predictor.scaleMetricType": "'AverageValue' is not honoured: cpu and memory targets are a percentage "
                                          "of the container's request (of one core without a cpu request; MiB per "
                                          "replica without a memory request)",
        "spec.predictor.autoScaling": "not honoured: set scaleMetric and scaleTarget (and Knative's "
                                      "autoscaling.knative.dev/ annotations)",
        "spec.predictor.nodeSelector": "not honoured by the local engine (replicas are processes on this machine)",
        "spec.predictor.model.env": "not honoured by the local engine",
        "metadata.annotations[serving.shipyard.io/shadow-percnt]": "unknown Shipyard annotation; did you mean "
                                                                   "'serving.shipyard.io/shadow-percent'?",
        "metadata.annotations[autoscaling.knative.dev/class]": "not honoured: the autoscaler follows scaleMetric "
                                                               "(Knative's KPA for concurrency and rps, HPA-style "
                                                               "for cpu and memory)",
        "metadata.annotations[autoscaling.knative.dev/target-burst-capacity]": "not honoured by Shipyard's "
                                                                               "autoscaler (docs/deployments.md "
                                                                               "lists the autoscaling.knative.dev/ "
                                                                               "annotations it reads)",
        "metadata.annotations[autoscaling.knative.dev/windw]": "not honoured by Shipyard's autoscaler; did you mean "
                                                               "'autoscaling.knative.dev/window'?",
    }


def test_autoscaling_fields_are_honoured_without_warnings(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["metadata"]["annotations"] = {
        "autoscaling.knative.dev/window": "6s", "autoscaling.knative.dev/panic-window-percentage": "20",
        "autoscaling.knative.dev/scale-to-zero-grace-period": "1s", "autoscaling.knative.dev/initial-scale": "0",
        "serving.shipyard.io/autoscale-tick": "200ms", "serving.shipyard.io/activator-queue": "10",
        "serving.shipyard.io/activator-timeout": "5s"}
    predictor = document["spec"]["predictor"]
    predictor.update({"minReplicas": 0, "maxReplicas": 4, "scaleMetric": "rps", "scaleTarget": 5,
                      "scaleMetricType": "Utilization"})
    predictor["model"]["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}}
    assert warnings_of(document) == {}
    del document["metadata"]["annotations"]["autoscaling.knative.dev/initial-scale"]
    document["spec"]["predictor"].update({"minReplicas": 2, "maxReplicas": 5})
    assert warnings_of(document) == {}


def test_autoscaling_errors_name_their_field(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["metadata"]["annotations"] = {
        "autoscaling.knative.dev/window": "soon", "autoscaling.knative.dev/panic-threshold-percentage": "50",
        "autoscaling.knative.dev/max-scale-down-rate": "1", "serving.shipyard.io/autoscale-tick": "0s",
        "serving.shipyard.io/activator-queue": "-1", "autoscaling.knative.dev/initial-scale": "0"}
    document["spec"]["predictor"].update({"minReplicas": 0, "scaleMetric": "cpu"})
    assert errors_of(document) == {
        "metadata.annotations[autoscaling.knative.dev/window]": "'soon' is not a duration; expected e.g. 500ms, 6s, "
                                                                "1m, 1h, 1h30m or a number of seconds",
        "metadata.annotations[autoscaling.knative.dev/panic-threshold-percentage]": "'50' is out of range; expected "
                                                                                    "between 110 and 1000",
        "metadata.annotations[autoscaling.knative.dev/max-scale-down-rate]": "'1' is out of range; expected greater "
                                                                             "than 1",
        "metadata.annotations[serving.shipyard.io/autoscale-tick]": "'0s' is out of range; expected at least 10ms "
                                                                    "and at most 60s",
        "metadata.annotations[serving.shipyard.io/activator-queue]": "-1 is less than the minimum of 1",
        "spec.predictor.minReplicas": "0 (scale to zero) needs scaleMetric concurrency or rps: cpu is scaled "
                                      "HPA-style, which keeps at least one replica (set minReplicas to 1 or more, "
                                      "or scale on concurrency)",
        "metadata.annotations[autoscaling.knative.dev/initial-scale]": "0 needs minReplicas 0 (scale to zero, with "
                                                                       "scaleMetric concurrency or rps)",
    }


def test_schema_errors_on_autoscaling_fields_are_not_repeated(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["spec"]["predictor"].update({"scaleMetric": "latency", "scaleTarget": "ten"})
    errors = errors_of(document)
    assert set(errors) == {"spec.predictor.scaleMetric", "spec.predictor.scaleTarget"}
    assert errors["spec.predictor.scaleMetric"].startswith("'latency' is not one of")


def test_a_document_is_not_changed_by_validation(model_dir):
    document = local(KSERVE_SKLEARN_V2, model_dir)
    before = copy.deepcopy(document)
    validate(document)
    assert document == before


# -- relative paths -----------------------------------------------------------------------------------
def test_relative_storage_paths_resolve_against_the_file_folder(tmp_path):
    text = textwrap.dedent("""
        apiVersion: serving.kserve.io/v1beta1
        kind: InferenceService
        metadata: {name: a}
        spec: {predictor: {sklearn: {storageUri: ./models/iris}}}
        ---
        apiVersion: serving.kserve.io/v1beta1
        kind: InferenceService
        metadata: {name: b}
        spec: {predictor: {model: {modelFormat: {name: onnx}, storageUri: s3://bucket/model.onnx}}}
        ---
        apiVersion: serving.kserve.io/v1beta1
        kind: InferenceService
        metadata: {name: c}
        spec: {predictor: {model: {modelFormat: {name: onnx}, storageUri: /abs/model.onnx}}}
    """)
    first, second, third = [resolve_storage_paths(doc, tmp_path / "deploy") for doc in parse_documents(text)]
    assert first["spec"]["predictor"]["sklearn"]["storageUri"] == str(tmp_path / "deploy" / "models" / "iris")
    assert second["spec"]["predictor"]["model"]["storageUri"] == "s3://bucket/model.onnx"
    assert third["spec"]["predictor"]["model"]["storageUri"] == "/abs/model.onnx"
    assert resolve_storage_paths({"kind": "x"}, tmp_path) == {"kind": "x"}


def test_a_trainjob_script_next_to_the_yaml_is_made_absolute(tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    document = {"kind": "TrainJob", "spec": {"trainer": {"command": ["python", "train.py", "--out", "model.py"]}}}
    resolved = resolve_storage_paths(document, tmp_path)
    assert resolved["spec"]["trainer"]["command"] == ["python", str(tmp_path / "train.py"), "--out", "model.py"]


def test_replica_resources_and_gpu_memory_are_checked_at_apply(model_dir):
    document = local(KSERVE_SKLEARN, model_dir)
    document["spec"]["predictor"]["model"]["resources"] = {"requests": {"nvidia.com/gpu": "0.5"}}
    assert "whole number of GPUs" in errors_of(document)["spec.predictor.model.resources.requests.nvidia.com/gpu"]
    document["spec"]["predictor"]["model"]["resources"] = {"requests": {"cpu": "1"}}
    document["metadata"]["annotations"] = {"serving.shipyard.io/gpu-memory": "lots"}
    assert "serving.shipyard.io/gpu-memory" in " ".join(errors_of(document))
    document["metadata"]["annotations"] = {"serving.shipyard.io/gpu-memory": "8Gi"}
    assert "metadata.annotations[serving.shipyard.io/gpu-memory]" not in warnings_of(document)
