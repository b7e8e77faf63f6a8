"""Columns to tensors (how a chunk feeds each kind of model) and outputs back to columns; isolating bad rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shipyard.batch.errors import BatchError, RowFailure
from shipyard.batch.frames import Frame
from shipyard.batch.predictors import Prediction, isolate, split_model_url
from shipyard.batch.tensors import make_plan, output_columns, to_tensors
from shipyard.runtimes.base import TensorSpec

MATRIX = TensorSpec("input-0", "FP64", (-1, 3))
COLUMNS = ["id", "a", "b", "c"]


def test_an_estimator_gets_the_columns_stacked_in_order():
    plan = make_plan([MATRIX], {}, COLUMNS, ["id"], None)
    assert plan.mode == "matrix" and plan.features == ("a", "b", "c")
    frame = pd.DataFrame({"id": ["x", "y"], "a": [1, 2], "b": [3.5, 4.5], "c": [5, 6]})
    tensors = to_tensors(plan, Frame(frame), bad := {})
    assert bad == {}
    np.testing.assert_array_equal(tensors["input-0"], [[1, 3.5, 5], [2, 4.5, 6]])
    assert tensors["input-0"].dtype == np.float64

    chosen = make_plan([MATRIX], {}, COLUMNS, ["id"], ["c", "b", "a"])
    assert chosen.features == ("c", "b", "a")


def test_the_wrong_number_of_columns_names_the_option():
    with pytest.raises(BatchError) as caught:
        make_plan([MATRIX], {}, ["a", "b"], [], None)
    assert caught.value.field == "columns" and "takes 3 features per row" in str(caught.value)
    with pytest.raises(BatchError, match="no column 'zz'"):
        make_plan([MATRIX], {}, COLUMNS, [], ["a", "b", "zz"])


def test_declared_columns_are_the_default():
    plan = make_plan([TensorSpec("features", "FP32", (-1, 2))], {"features": ["b", "a"]}, COLUMNS, [], None)
    assert plan.mode == "matrix" and plan.features == ("b", "a") and plan.input.name == "features"
    with pytest.raises(BatchError, match="takes columns b, z"):
        make_plan([TensorSpec("features", "FP32", (-1, 2))], {"features": ["b", "z"]}, COLUMNS, [], None)


def test_inputs_named_after_columns_get_one_tensor_each():
    specs = [TensorSpec("a", "INT64", (-1,)), TensorSpec("b", "BYTES", (-1,))]
    plan = make_plan(specs, {}, COLUMNS, ["id"], None)
    assert plan.mode == "columns" and plan.features == ("a", "b")
    tensors = to_tensors(plan, Frame(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})), {})
    assert tensors["a"].dtype == np.int64 and list(tensors["b"]) == ["x", "y"]


def test_no_signature_gets_every_column_not_carried():
    plan = make_plan([], {}, COLUMNS, ["id"], None)
    assert plan.mode == "columns" and plan.features == ("a", "b", "c")


def test_a_text_model_takes_one_column():
    spec = TensorSpec("text", "BYTES", (-1,))
    plan = make_plan([spec], {}, ["id", "review"], ["id"], None)
    assert plan.mode == "vector" and plan.features == ("review",)
    with pytest.raises(BatchError, match="takes one value per row"):
        make_plan([spec], {}, ["id", "title", "review"], ["id"], None)


def test_a_column_of_lists_becomes_a_matrix():
    plan = make_plan([TensorSpec("x", "FP32", (-1, 3))], {}, ["id", "vector"], ["id"], None)
    frame = pd.DataFrame({"id": [1, 2], "vector": [[1, 2, 3], [4, 5, 6]]})
    tensors = to_tensors(plan, Frame(frame), {})
    assert tensors["x"].shape == (2, 3) and tensors["x"].dtype == np.float32


def test_values_that_are_not_numbers_fail_their_row_only():
    plan = make_plan([MATRIX], {}, COLUMNS, ["id"], None)
    frame = pd.DataFrame({"id": ["x", "y", "z"], "a": ["1", "oops", "3"], "b": [1.0, 2.0, np.nan], "c": [1, 2, 3]})
    bad: dict[int, str] = {}
    tensors = to_tensors(plan, Frame(frame), bad)
    assert bad == {1: "column 'a': 'oops' is not a number"}
    assert tensors["input-0"][0].tolist() == [1.0, 1.0, 1.0]
    assert np.isnan(tensors["input-0"][2, 1])  # NaN is the model's to judge


def test_integer_inputs_refuse_fractions_and_missing_values():
    plan = make_plan([TensorSpec("n", "INT32", (-1,))], {}, ["n"], [], None)
    bad: dict[int, str] = {}
    tensors = to_tensors(plan, Frame(pd.DataFrame({"n": [1.0, 2.5, np.nan]})), bad)
    assert sorted(bad) == [1, 2] and "not a whole number" in bad[1] and "is missing" in bad[2]
    assert tensors["n"].dtype == np.int32 and tensors["n"][0] == 1


def test_outputs_become_columns():
    columns = output_columns({"predict": np.array([0, 1]), "predict_proba": np.array([[0.9, 0.1], [0.2, 0.8]]),
                              "label": np.array([b"no", b"yes"], dtype=object)},
                             {"predict_proba_1": "score", "label": "answer"})
    assert list(columns) == ["predict", "predict_proba_0", "score", "answer"]
    assert list(columns["answer"]) == ["no", "yes"]
    nested = output_columns({"embedding": np.zeros((2, 2, 2))})
    assert nested["embedding"][0] == [[0.0, 0.0], [0.0, 0.0]]


def test_isolate_halves_until_the_bad_rows_stand_alone():
    calls: list[int] = []
    values = np.arange(100, dtype=float)
    bad_rows = {7, 63}

    def call(tensors, rows):
        calls.append(rows)
        x = tensors["x"]
        broken = [int(v) for v in x if int(v) in bad_rows]
        if broken:
            raise RowFailure(f"row value {broken[0]} is bad")
        return {"y": x * 2}

    result = Prediction()
    isolate(call, {"x": values}, np.arange(100) + 1000, result)
    ok, outputs = result.merged()
    assert result.errors == [(1007, "row value 7 is bad"), (1063, "row value 63 is bad")]
    assert ok.tolist() == [i + 1000 for i in range(100) if i not in bad_rows]
    assert outputs["y"].tolist() == [i * 2.0 for i in range(100) if i not in bad_rows]
    assert len(calls) < 40  # not one call per row


def test_a_model_answering_the_wrong_number_of_rows_fails_them():
    result = Prediction()
    isolate(lambda tensors, rows: {"y": np.float64(1.0)}, {"x": np.zeros(3)}, np.arange(3), result)
    assert [position for position, _ in result.errors] == [0, 1, 2]
    assert result.errors[0][1] == "the model's output 'y' has a single value for 1 input rows"


def test_model_urls():
    assert split_model_url("http://127.0.0.1:8080/") == ("http://127.0.0.1:8080", None)
    assert split_model_url("http://h:1/v2/models/iris/infer") == ("http://h:1", "iris")
