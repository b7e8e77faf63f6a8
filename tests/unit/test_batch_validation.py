"""validate() for the BatchJob kind: a good document passes with warnings for fields its model's form ignores;
every problem (schema, Shipyard's rules, the engine's spec_problems) is named by its field path, all at once;
the SDK's options and relative paths become the spec the controller runs; get/describe render its status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.batch.spec import BatchSpec
from shipyard.cli.resources import batchjob_table, describe_batchjob
from shipyard.control.batch_validation import (
    ATTRIBUTES,
    FIELDS,
    batch_spec_kwargs,
    field_path,
    model_form,
    resolve_paths,
    spec_from_options,
)
from shipyard.control.client import _batch_name, read_documents
from shipyard.control.controllers.batchjob import field_message
from shipyard.control.resources import kind_of
from shipyard.control.validation import ValidationError, schema_of, validate

API = "batch.shipyard.io/v1alpha1"


def batch_job(spec: dict[str, Any], name: str = "score") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "BatchJob", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    artifact = tmp_path / "model.joblib"
    artifact.write_bytes(b"not read by validation")
    return artifact


def problems(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        validate(document)
    return {error.path: error.message for error in caught.value.errors}


def test_the_kind_and_its_aliases():
    for name in ("BatchJob", "batchjobs", "batchjob", "bj"):
        assert kind_of(name).kind == "BatchJob"
    assert kind_of("bj").api_versions == (API,)


def test_the_schema_has_every_batchspec_field_in_camel_case():
    properties = schema_of("BatchJob")["properties"]["spec"]["properties"]
    assert set(properties) == set(FIELDS)
    assert set(FIELDS.values()) == set(BatchSpec.field_names()) - {"namespace"}
    assert ATTRIBUTES["timeout_s"] == "timeoutSeconds" and ATTRIBUTES["batch_size"] == "batchSize"


def test_a_good_document_passes_and_becomes_the_engine_spec(model: Path, tmp_path: Path):
    document = batch_job({"model": str(model), "input": str(tmp_path / "in.parquet"),
                          "output": str(tmp_path / "out.csv"), "carry": ["id"], "columns": ["a", "b"],
                          "batchSize": 500, "workers": 2, "limit": 1000, "maxErrors": 0.01,
                          "outputColumns": {"predict": "label"}})
    document["metadata"]["namespace"] = "team-a"
    validated = validate(document)
    assert validated.resource.kind == "BatchJob" and validated.resource.namespace == "team-a"
    assert validated.warnings == []
    spec = BatchSpec(**batch_spec_kwargs(validated.resource.spec, "team-a"))
    assert (spec.batch_size, spec.workers, spec.limit, spec.max_errors, spec.carry, spec.namespace) == (
        500, 2, 1000, 0.01, ["id"], "team-a")
    assert spec.output_columns == {"predict": "label"} and spec.concurrency == 4  # BatchSpec's default


def test_every_problem_is_named_by_its_path_at_once(tmp_path: Path):
    found = problems(batch_job({
        "model": str(tmp_path / "missing.joblib"), "input": "in.parquet", "output": "out.dat",
        "batchSize": 0, "timeoutSeconds": 0, "maxErrors": 1.5, "columns": ["a", "a"], "carry": ["a"],
        "inputFormat": "excel", "bogus": 1, "concurency": 2,
    }))
    assert found["spec.batchSize"] == "0 is less than the minimum of 1"
    assert found["spec.timeoutSeconds"].startswith("0 is less than or equal to the minimum of 0")
    assert "'excel' is not one of" in found["spec.inputFormat"]
    assert found["spec.bogus"] == "unknown field"
    assert found["spec.concurency"] == "unknown field; did you mean 'concurrency'?"
    assert found["spec.model"].startswith(f"no file or folder '{tmp_path / 'missing.joblib'}' on this machine")
    assert "an InferenceService" in found["spec.model"] and "http(s)://" in found["spec.model"]
    assert found["spec.carry[0]"].startswith("'a' is also in spec.columns")
    # the engine's rules (shipyard.batch.spec.spec_problems) by document path, even with schema errors elsewhere
    assert found["spec.outputFormat"].startswith("cannot tell the output format from 'out.dat'")
    assert found["spec.columns"] == "names column 'a' twice"
    assert "fraction below 1" in found["spec.maxErrors"]


def test_required_fields_and_types():
    found = problems(batch_job({"input": "/data/in.csv", "output": 3}))
    assert found == {"spec.model": "required field is missing", "spec.output": "3 is not of type 'string'"}
    assert problems({"apiVersion": API, "kind": "BatchJob", "metadata": {"name": "x"}}) == {
        "spec": "required field is missing (a BatchJob needs spec.model, spec.input and spec.output)"}
    assert "apiVersion" in problems({"apiVersion": "batch/v1", "kind": "BatchJob", "metadata": {"name": "x"},
                                     "spec": {}})


def test_model_forms_and_locations(model: Path):
    assert model_form(str(model)) == "path"
    assert model_form("iris") == "service"
    assert model_form("http://127.0.0.1:8080") == "url"
    assert model_form("s3://bucket/model.joblib") == "unknown"
    assert model_form("Not_A_Name") == "unknown"
    found = problems(batch_job({"model": "s3://bucket/model.joblib", "input": "dataset://Bad/x.parquet",
                                "output": "pvc://claim/out.parquet"}))
    assert found["spec.model"].startswith("'s3://bucket/model.joblib': s3:// models are not fetched by a BatchJob")
    assert "'Bad' is not a Dataset name" in found["spec.input"]
    assert found["spec.output"].startswith("pvc:// needs Kubernetes")
    assert problems(batch_job({"model": "http://", "input": "/a.csv", "output": "/b.csv"}))["spec.model"] == \
        "'http://' names no host; expected http(s)://host:port"
    assert problems(batch_job({"model": "iris", "input": "/a.csv", "output": "/a.csv"}))["spec.output"] == \
        "is the input; write the predictions somewhere else"


def test_fields_the_models_form_ignores_are_warnings(model: Path):
    local = validate(batch_job({"model": str(model), "input": "/in.csv", "output": "/out.csv", "concurrency": 8,
                                "modelName": "m"}))
    assert {warning.path for warning in local.warnings} == {"spec.concurrency", "spec.modelName"}
    assert "loaded in-process" in local.warnings[0].message
    service = validate(batch_job({"model": "iris", "input": "/in.csv", "output": "/out.csv", "workers": 4}))
    assert [(w.path, w.message.split(";")[0]) for w in service.warnings] == [
        ("spec.workers", "ignored: the model is reached over HTTP (an InferenceService)")]


def test_sdk_options_take_either_spelling_and_unknown_ones_are_refused():
    spec = spec_from_options("iris", "in.csv", "out.csv", {"batch_size": 100, "carry": "id, ts", "maxErrors": 5,
                                                            "timeout_s": 2.5, "limit": None, "columns": ("a", "b")})
    assert spec == {"model": "iris", "input": "in.csv", "output": "out.csv", "batchSize": 100, "carry": ["id", "ts"],
                    "maxErrors": 5, "timeoutSeconds": 2.5, "columns": ["a", "b"]}
    with pytest.raises(ValueError, match="batchsize: not a batch option; did you mean 'batch_size'"):
        spec_from_options("iris", "in.csv", "out.csv", {"batchsize": 1})
    with pytest.raises(ValueError, match="namespace: not a batch option"):
        spec_from_options("iris", "in.csv", "out.csv", {"namespace": "x"})


def test_engine_fields_and_messages_become_paths():
    assert field_path("batch_size") == "spec.batchSize"
    assert field_path("columns[2]") == "spec.columns[2]"
    assert field_path("output_columns.predict") == "spec.outputColumns.predict"
    assert field_path("") == "spec"
    assert field_message("input: /x.parquet does not exist") == "spec.input: /x.parquet does not exist"
    assert field_message("model 'm' failed to load: boom") == "model 'm' failed to load: boom"


def test_relative_paths_are_taken_from_the_yaml_files_folder(tmp_path: Path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "model.joblib").write_bytes(b"x")
    (tmp_path / "jobs" / "job.yaml").write_text(yaml.safe_dump(batch_job({
        "model": "model.joblib", "input": "data/in.parquet", "output": "out/", "errors": "bad.jsonl"})) + "---\n" +
        yaml.safe_dump(batch_job({"model": "iris", "input": "s3://bucket/in.csv", "output": "/abs/out.csv"}, "two")))
    first, second = read_documents(tmp_path / "jobs" / "job.yaml")
    base = tmp_path.resolve() / "jobs"
    assert first["spec"] == {"model": str(base / "model.joblib"), "input": str(base / "data" / "in.parquet"),
                             "output": f"{base / 'out'}/", "errors": str(base / "bad.jsonl")}
    assert second["spec"] == {"model": "iris", "input": "s3://bucket/in.csv", "output": "/abs/out.csv"}
    spec = {"model": "missing.joblib", "input": "dataset://d/in.csv", "output": "o.csv"}
    resolve_paths(spec, base)
    assert spec == {"model": "missing.joblib", "input": "dataset://d/in.csv", "output": str(base / "o.csv")}


def test_default_names_are_resource_names():
    for model, start in (("/models/Churn_Model.v2.joblib", "churn-model-batch-"), ("iris", "iris-batch-"),
                         ("http://127.0.0.1:8080", "endpoint-batch-"), ("/m/2024/", "m-2024-batch-")):
        name = _batch_name(model)
        assert name.startswith(start) and len(name) <= 63
        assert validate(batch_job({"model": "iris", "input": "/a.csv", "output": "/b.csv"}, name))


def test_get_and_describe_show_progress():
    item = {"apiVersion": API, "kind": "BatchJob",
            "metadata": {"name": "score", "namespace": "default", "creationTimestamp": "2024-01-01T00:00:00Z",
                         "generation": 1},
            "spec": {"model": "iris", "input": "/in.parquet", "output": "/out.parquet", "carry": ["id"]},
            "status": {"phase": "Running", "rowsDone": 30000, "rowsTotal": 100000, "errors": 2,
                       "rowsPerSecond": 41234.5, "chunksDone": 3, "chunksTotal": 10, "errorsFile":
                       "/out.parquet.errors.jsonl", "startTime": "2024-01-01T00:00:01Z", "runs": 2,
                       "resumedChunks": 1, "conditions": [{"type": "Running", "status": "True", "reason": "Resumed",
                                                           "message": "resuming"}]}}
    lines = batchjob_table([item]).splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "ROWS", "ERRORS", "ROWS/S", "AGE"]
    assert lines[1].split()[:5] == ["score", "Running", "30000/100000", "2", "41,234"]
    wide = batchjob_table([item], wide=True).splitlines()
    assert wide[0].split()[5:8] == ["MODEL", "OUTPUT", "DURATION"]
    text = describe_batchjob({**item, "events": []})
    assert "Rows:         30000/100000 (30.0%), chunk 3/10" in text
    assert "Errors:       2 (rows in /out.parquet.errors.jsonl)" in text
    assert "Runs:         2 (resumed 1 finished chunk(s))" in text and "shipyard logs batchjob score" in text
    pending = {**item, "status": {}}
    assert batchjob_table([pending]).splitlines()[1].split()[:5] == ["score", "Pending", "0", "0", "—"]
