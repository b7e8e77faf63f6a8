"""examples.yaml: parsing (errors name the example and the key), requests from shorthand, and comparing answers."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import yaml

from shipyard.package.examples import (
    Example,
    ExamplesError,
    Tensor,
    Tolerance,
    compare,
    first_mismatch,
    parse_examples,
    read_examples,
    request_tensors,
)

IRIS_SIGNATURE = [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]


def parse(text: str) -> list[Example]:
    return parse_examples(yaml.safe_load(textwrap.dedent(text)), "examples.yaml")


def test_shorthand_and_full_forms():
    setosa, typed = parse("""
        - name: setosa
          inputs:
            input-0: [[5.1, 3.5, 1.4, 0.2]]
          outputs:
            predict: [0]
        - name: typed
          inputs:
            a: {datatype: FP32, shape: [2, 2], data: [1, 2, 3, 4]}
            b: ["x", "y"]
          parameters: {top_k: 2}
          outputs:
            label: {datatype: BYTES, shape: [2], data: ["X", "Y"]}
          tolerance: {abs: 0.1}
    """)
    assert setosa.inputs["input-0"].values.shape == (1, 4) and setosa.inputs["input-0"].datatype is None
    assert setosa.outputs is not None and setosa.outputs["predict"].values.tolist() == [0]
    assert setosa.tolerance == Tolerance(1e-6, 1e-5)
    a = typed.inputs["a"]
    assert (a.datatype, a.shape, a.values.tolist()) == ("FP32", (2, 2), [[1, 2], [3, 4]])
    assert typed.parameters == {"top_k": 2} and typed.tolerance == Tolerance(abs=0.1, rel=1e-5)
    assert typed.outputs is not None and typed.outputs["label"].values.tolist() == ["X", "Y"]


def test_an_example_without_outputs_only_has_to_succeed():
    (example,) = parse("""
        - name: smoke
          inputs: {x: [1, 2]}
    """)
    assert example.outputs is None
    assert first_mismatch(example, {}) is None


@pytest.mark.parametrize("text, message", [
    ("{name: a}", "examples.yaml: expected a list of examples (each with name and inputs), got a dict"),
    ("", "got an empty file"),
    ("- [1, 2]", "example #1: expected a mapping with name and inputs, got a list"),
    ("- inputs: {x: [1]}", "example #1: has no name; every example needs a name"),
    ("- {name: 3, inputs: {x: [1]}}", "example #1: has name = 3"),
    ("- {name: a, inputs: {x: [1]}}\n- {name: a, inputs: {x: [2]}}", "example #2: name 'a' is used twice"),
    ("- {name: a}", "example 'a': inputs: missing"),
    ("- {name: a, inputs: {}}", "example 'a': inputs: is empty"),
    ("- {name: a, inputs: [1, 2]}", "example 'a': inputs: expected a mapping of tensor name to data, got a list"),
    ("- {name: a, inputs: {x: [1]}, output: {y: [1]}}", "example 'a': output: unknown key (did you mean 'outputs'?)"),
    ("- {name: a, inputs: {x: [[1, 2], [3]]}}", "example 'a': inputs.x: data must be a rectangular list"),
    ("- {name: a, inputs: {x: [1, 'b']}}", "example 'a': inputs.x: mixes numbers and strings"),
    ("- {name: a, inputs: {x: [1, null]}}", "example 'a': inputs.x[1] = None: expected numbers, booleans or strings"),
    ("- {name: a, inputs: {x: [{k: 1}]}}", "example 'a': inputs.x[0] = {'k': 1}: expected numbers"),
    ("- {name: a, inputs: {x: {datatype: FP32, data: [1]}}}",
     "example 'a': inputs.x: the full form needs datatype, shape and data; missing shape"),
    ("- {name: a, inputs: {x: {datatype: FLOAT, shape: [1], data: [1]}}}",
     "example 'a': inputs.x.datatype = 'FLOAT': expected one of BOOL"),
    ("- {name: a, inputs: {x: {datatype: FP16, shape: [1], data: [1]}}}", "example 'a': inputs.x.datatype = FP16"),
    ("- {name: a, inputs: {x: {datatype: FP32, shape: [-1, 2], data: [1, 2]}}}",
     "example 'a': inputs.x.shape = [-1, 2]: expected a list of non-negative integers"),
    ("- {name: a, inputs: {x: {datatype: FP32, shape: [2, 2], data: [1, 2]}}}",
     "example 'a': inputs.x: shape [2, 2] needs 4 values but data has 2"),
    ("- {name: a, inputs: {x: {datatype: INT64, shape: [1], data: [1.5]}}}",
     "example 'a': inputs.x.data: datatype INT64 needs integers, got fractional numbers"),
    ("- {name: a, inputs: {x: {datatype: BYTES, shape: [1], data: [1]}}}",
     "example 'a': inputs.x.data: datatype BYTES needs strings, got integers"),
    ("- {name: a, inputs: {x: {datatype: FP32, shape: [1], data: [1], dtype: FP32}}}",
     "example 'a': inputs.x.dtype: unknown key (did you mean 'datatype'?)"),
    ("- {name: a, inputs: {x: [1]}, parameters: [1]}", "example 'a': parameters: expected a mapping"),
    ("- {name: a, inputs: {x: [1]}, outputs: [1]}", "example 'a': outputs: expected a mapping"),
    ("- {name: a, inputs: {x: [1]}, outputs: {y: [[1], [2, 3]]}}",
     "example 'a': outputs.y: data must be a rectangular list"),
    ("- {name: a, inputs: {x: [1]}, tolerance: 0.1}", "example 'a': tolerance: expected a mapping like {abs"),
    ("- {name: a, inputs: {x: [1]}, tolerance: {abs: -1}}", "example 'a': tolerance.abs = -1: expected a number"),
    ("- {name: a, inputs: {x: [1]}, tolerance: {relative: 1}}", "example 'a': tolerance.relative: unknown key"),
    ("- {name: a, inputs: {1: [1]}}", "example 'a': inputs: tensor names must be text, got 1"),
])
def test_errors_name_the_example_and_the_key(text, message):
    with pytest.raises(ExamplesError) as caught:
        parse(text)
    assert str(caught.value).startswith("examples.yaml: ")
    assert message in str(caught.value)


def test_read_examples_says_how_to_write_a_missing_file(tmp_path):
    with pytest.raises(ExamplesError, match="has no examples.yaml") as caught:
        read_examples(tmp_path)
    assert "- name:" in str(caught.value) and "shipyard package" in str(caught.value)
    (tmp_path / "examples.yaml").write_text("- name: a\n  inputs: {x: [1, 2}\n")
    with pytest.raises(ExamplesError, match="is not valid YAML"):
        read_examples(tmp_path)
    (tmp_path / "examples.yaml").write_text("- name: a\n  inputs: {x: [1, 2]}\n")
    assert [e.name for e in read_examples(tmp_path)] == ["a"]


def test_shorthand_takes_datatype_and_shape_from_the_signature():
    (example,) = parse("""
        - name: rows
          inputs: {features: [[5, 3, 1, 0]]}
    """)
    (tensor,) = request_tensors(example, IRIS_SIGNATURE)
    assert (tensor.name, tensor.datatype, tensor.shape, tensor.data) == ("features", "FP64", [1, 4], [5, 3, 1, 0])
    (flat,) = parse("- {name: flat, inputs: {input-0: [6.3, 3.3, 6.0, 2.5]}}")
    assert request_tensors(flat, IRIS_SIGNATURE)[0].shape == [1, 4]  # one row of a [-1, 4] input
    (fixed,) = parse("- {name: img, inputs: {input-0: [1, 2, 3, 4, 5, 6]}}")
    assert request_tensors(fixed, [{"name": "input-0", "datatype": "UINT8", "shape": [2, 3]}])[0].shape == [2, 3]


def test_without_a_signature_the_data_decides():
    (example,) = parse("""
        - name: free
          inputs: {a: [[1, 2]], b: [0.5], c: ["x"], d: [true]}
    """)
    tensors = {t.name: t for t in request_tensors(example, [])}
    assert [(t.datatype, t.shape) for t in tensors.values()] == [("INT64", [1, 2]), ("FP64", [1]), ("BYTES", [1]),
                                                                ("BOOL", [1])]
    assert tensors["c"].data == ["x"] and tensors["d"].data == [True]


def test_full_form_keeps_its_datatype_and_shape():
    (example,) = parse("- {name: f, inputs: {input-0: {datatype: FP32, shape: [1, 4], data: [[1, 2, 3, 4]]}}}")
    (tensor,) = request_tensors(example, IRIS_SIGNATURE)
    assert (tensor.datatype, tensor.shape, tensor.data) == ("FP32", [1, 4], [1, 2, 3, 4])


def expected(values, datatype=None) -> Tensor:
    array = np.array(values)
    return Tensor("y", array, datatype, array.shape if datatype else None)


def test_numeric_outputs_compare_within_the_tolerance():
    got = np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32)  # float32 of decimals: ~1e-9 off
    assert compare(got, expected([[0.1, 0.2], [0.3, 0.4]]), Tolerance()) is None
    assert compare(got, expected([[0.1, 0.2], [0.3, 0.41]]), Tolerance()) == \
        "[1, 1]: got 0.4000000059604645, expected 0.41"
    assert compare(got, expected([[0.1, 0.2], [0.3, 0.41]]), Tolerance(abs=0.02, rel=0)) is None
    assert compare(got, expected([[0.1, 0.2], [0.3, 0.404]]), Tolerance(abs=0, rel=0.02)) is None
    assert compare(np.array([np.nan, 1.0]), expected([float("nan"), 1.0]), Tolerance()) is None


def test_integers_booleans_and_strings_compare_exactly():
    assert compare(np.array([1000000, 2]), expected([1000001, 2]), Tolerance(rel=0.1)) == \
        "[0]: got 1000000, expected 1000001"
    assert compare(np.array([True, False]), expected([1, 0]), Tolerance()) is None
    labels = np.array([b"setosa", b"virginica"], dtype=object)
    assert compare(labels, expected(["setosa", "virginica"]), Tolerance()) is None
    assert compare(labels, expected(["setosa", "versicolor"]), Tolerance()) == \
        "[1]: got 'virginica', expected 'versicolor'"
    assert compare(labels, expected([0, 1]), Tolerance()) == ": got strings ('setosa'), expected integers"
    assert compare(np.array([1.5]), expected(["a"]), Tolerance()) == ": got numbers (1.5), expected strings"


def test_shape_and_datatype_must_match():
    assert compare(np.array([[1, 2]]), expected([1, 2]), Tolerance()) == ": shape [1, 2], expected [2]"
    float32 = np.array([1.0], dtype=np.float32)
    assert compare(float32, expected([1.0], "FP64"), Tolerance()) == ": datatype FP32, expected FP64"
    assert compare(np.array([1.0]), expected([1.0], "FP64"), Tolerance()) is None


def test_first_mismatch_names_the_output():
    (example,) = parse("""
        - name: two
          inputs: {x: [1]}
          outputs: {a: [1], b: [2, 3]}
    """)
    assert first_mismatch(example, {"a": np.array([1]), "b": np.array([2, 3]), "extra": np.array([0])}) is None
    assert first_mismatch(example, {"a": np.array([1]), "b": np.array([2, 4])}) == "output 'b'[1]: got 4, expected 3"
    assert first_mismatch(example, {"a": np.array([1])}) == "no output 'b'; the model returned: a"
