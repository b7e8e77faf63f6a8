"""shipyard.yaml: the schema, its published JSON Schema, and errors that name the key, value and rule."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from shipyard.package.config import PackageError, json_schema, parse_config, requirements_of

DOCS_SCHEMA = Path(__file__).parents[2] / "docs" / "shipyard.schema.json"

FULL = """
name: churn
version: 3
description: Churn classifier
format: sklearn
artifact: model.joblib
inputs:
  - name: features
    datatype: FP64
    shape: [-1, 3]
    columns:
      - {name: age, min: 18, max: 120}
      - tenure
      - {name: plan, values: [1, 2, 3]}
outputs:
  - {name: predict, datatype: INT64, shape: [-1]}
checks: warn
max_batch_size: 32
max_latency_ms: 2
python_version: 3.11
requirements: [scikit-learn==1.5.2]
system_packages: [libgomp1]
environment_variables: {DEBUG: true, WORKERS: 2, MODE: fast}
secrets: [API_TOKEN]
resources: {cpu: 2, memory: 4Gi, gpu: 1}
weights:
  - uri: https://example.com/weights/model.bin
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    path: data/model.bin
isolate: auto
"""


def test_full_config_parses_with_types():
    config, warnings = parse_config(yaml.safe_load(FULL), "shipyard.yaml")
    assert warnings == []
    assert config.version == "3" and config.python_version == "3.11"
    assert config.environment_variables == {"DEBUG": "true", "WORKERS": "2", "MODE": "fast"}
    assert config.resources.cpu == "2" and config.resources.gpu == 1
    assert config.inputs[0].columns[0].min == 18 and config.inputs[0].columns[1] == "tenure"
    assert config.weights[0].path == "data/model.bin"


def test_published_schema_is_generated_from_the_code():
    assert DOCS_SCHEMA.is_file(), "run: python -m shipyard.package.schema > docs/shipyard.schema.json"
    assert json.loads(DOCS_SCHEMA.read_text()) == json_schema(), (
        "docs/shipyard.schema.json is stale; regenerate it: python -m shipyard.package.schema > docs/shipyard.schema.json"
    )


def test_schema_accepts_the_full_example_and_rejects_a_typo():
    schema = json_schema()
    document = yaml.safe_load(FULL)
    document["version"], document["python_version"] = "3", "3.11"
    document["environment_variables"] = {k: str(v) for k, v in document["environment_variables"].items()}
    document["resources"]["cpu"] = "2"
    jsonschema.validate(document, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"resources": {"cpus": "2"}}, schema)


@pytest.mark.parametrize(
    "raw, fragments",
    [
        ({"max_batch_size": "x"}, ["max_batch_size = 'x'", "int"]),
        ({"max_batch_size": 0}, ["max_batch_size = 0", "at least 1"]),
        ({"resources": {"cpu": "lots"}}, ["resources.cpu = 'lots'", "regex"]),
        ({"resources": {"cpus": 2}}, ["resources", "unknown key `cpus`"]),
        ({"inputs": [{"name": "a", "datatype": "FP33", "shape": [-1]}]}, ["inputs[0].datatype = 'FP33'", "FP32"]),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 3], "columns": ["x", "y"]}]},
         ["inputs[0].columns", "[-1, 2]"]),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "min": 5, "max": 1}]}, ["min 5", "max 1"]),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1]}, {"name": "a", "datatype": "FP32", "shape": [-1]}]},
         ["inputs[1].name = 'a'", "unique"]),
        ({"weights": [{"uri": "x", "sha256": "abc"}]}, ["weights[0].sha256 = 'abc'"]),
        ({"checks": "loud"}, ["checks = 'loud'", "strict, warn"]),
        ({"isolate": "yes"}, ["isolate = 'yes'", "auto, always, never"]),
        ({"secrets": ["has space"]}, ["secrets[0] = 'has space'"]),
        ({"requirements": ["a"], "requirements_file": "r.txt"}, ["not both"]),
        ({"python_version": "2.7"}, ["python_version = '2.7'"]),
        ({"name": "a b"}, ["name = 'a b'", "not allowed"]),
    ],
)
def test_bad_values_name_key_value_and_rule(raw, fragments):
    with pytest.raises(PackageError) as error:
        parse_config(raw, "pkg/shipyard.yaml")
    message = str(error.value)
    assert message.startswith("pkg/shipyard.yaml: ")
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_top_level_key_warns_with_a_suggestion():
    _, warnings = parse_config({"requirments": ["x"]}, "shipyard.yaml")
    assert warnings == ["shipyard.yaml: key 'requirments' is not used by this version of Shipyard (did you mean 'requirements'?)"]


def test_requirements_from_key_file_or_none(tmp_path):
    config, _ = parse_config({}, "x")
    assert requirements_of(config, tmp_path) == []
    (tmp_path / "requirements.txt").write_text("# pinned\nsix==1.16.0  # why\n\nnumpy>=1.24\n")
    assert requirements_of(config, tmp_path) == ["six==1.16.0", "numpy>=1.24"]
    config, _ = parse_config({"requirements": ["a==1"]}, "x")
    assert requirements_of(config, tmp_path) == ["a==1"]
    config, _ = parse_config({"requirements_file": "other.txt"}, "x")
    with pytest.raises(PackageError, match="other.txt"):
        requirements_of(config, tmp_path)
