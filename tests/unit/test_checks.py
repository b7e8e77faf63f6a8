"""Data checks: a package's declared inputs, columns, ranges and allowed values, through Model.validate."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from shipyard.package.checks import input_checks
from shipyard.package.config import parse_config
from shipyard.protocol.errors import InvalidInput
from shipyard.runtimes.base import Model, ModelSource, TensorSpec

COLUMNS = [{"name": "age", "min": 18, "max": 120}, "tenure", {"name": "plan", "values": [1, 2, 3]}]


class Table(Model):
    """A runtime with one FP64 [-1, 3] input, as scikit-learn's would be."""

    def load(self) -> None:
        self.inputs = [TensorSpec("input-0", "FP64", (-1, 3))]


def model(checks: str = "strict", inputs: list | None = None) -> Table:
    declared = inputs or [{"name": "customer", "datatype": "FP64", "shape": [-1, 3], "columns": COLUMNS}]
    config, _ = parse_config({"inputs": declared, "checks": checks}, "shipyard.yaml")
    table = Table(ModelSource("churn", "test", None, options={"input_checks": input_checks("churn", config)}))
    table.load()
    return table


def test_whole_tensor_under_any_name_reaches_the_runtime_input():
    checked = model().validate({"x": np.array([[30, 5, 2]])})
    assert list(checked) == ["input-0"]
    assert checked["input-0"].dtype == np.float64 and checked["input-0"].tolist() == [[30, 5, 2]]


def test_one_tensor_per_column_is_assembled_in_declared_order():
    checked = model().validate({"plan": np.array([1, 3]), "age": np.array([[20], [40]]), "tenure": np.array([1.5, 2])})
    assert checked["input-0"].tolist() == [[20, 1.5, 1], [40, 2, 3]]


@pytest.mark.parametrize(
    "tensors, fragments",
    [
        ({"age": np.array([20]), "tenure": np.array([1])}, ["missing column 'plan'", "age, tenure, plan"]),
        ({"x": np.array([[17, 1, 1]])}, ["column 'age'", "17", "row 0", "below the minimum 18"]),
        ({"x": np.array([[30, 1, 1], [130, 1, 1]])}, ["column 'age'", "130", "row 1", "above the maximum 120"]),
        ({"x": np.array([[30, 1, 4]])}, ["column 'plan'", "4", "allowed values: 1, 2, 3"]),
        ({"x": np.array([[np.nan, 1, 1]])}, ["column 'age'", "nan", "outside the allowed range"]),
        ({"x": np.array([["a", "b", "c"]], dtype=object)}, ["input 'customer'", "expected FP64, got BYTES"]),
        ({"x": np.array([[1, 2]])}, ["input 'customer'", "expected shape [-1, 3]"]),
        ({"age": np.array([20]), "tenure": np.array([1]), "plan": np.array([1, 2])}, ["different lengths"]),
        ({"x": np.array([[30, 1, 1]]), "y": np.array([1])}, ["missing input 'customer'"]),
    ],
)
def test_broken_rules_name_the_input_and_rule(tensors, fragments):
    with pytest.raises(InvalidInput) as error:
        model().validate(tensors)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)


def test_warn_mode_logs_and_serves(caplog):
    table = model("warn")
    with caplog.at_level(logging.WARNING, "shipyard.checks"):
        checked = table.validate({"x": np.array([[17, 1, 9]])})
    assert checked["input-0"].tolist() == [[17, 1, 9]]
    assert "below the minimum 18" in caplog.text and "checks: warn" in caplog.text
    assert table.input_checks.violations == 1


def test_allowed_strings_match_text_and_bytes():
    inputs = [{"name": "colour", "datatype": "BYTES", "shape": [-1], "values": ["red", "green"]}]
    text = model(inputs=inputs)
    text.inputs = [TensorSpec("colour", "BYTES", (-1,))]
    assert text.validate({"colour": np.array([b"red", "green"], dtype=object)})["colour"].tolist() == [b"red", "green"]
    with pytest.raises(InvalidInput, match="'blue' at row 1 is not one of the allowed values: red, green"):
        text.validate({"colour": np.array([b"red", b"blue"], dtype=object)})


def test_metadata_advertises_the_declared_inputs():
    assert model().metadata()["inputs"] == [{"name": "customer", "datatype": "FP64", "shape": [-1, 3]}]
