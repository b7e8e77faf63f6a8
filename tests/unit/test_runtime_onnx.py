"""The ONNX runtime: metadata from the graph and answers equal to ONNX Runtime's own, on graphs built here."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from shipyard.protocol.errors import InvalidInput, ModelFailed
from shipyard.runtimes import ModelSource, create_model
from shipyard.runtimes.onnx import ONNXModel

#: onnx may write a newer IR version than the installed onnxruntime reads; pin one both know.
IR_VERSION = 8
OPSET = [helper.make_opsetid("", 17)]

#: ONNX element type -> (V2 datatype, an example array of that type)
ELEMENT_TYPES = {
    TensorProto.BOOL: ("BOOL", np.array([True, False])),
    TensorProto.UINT8: ("UINT8", np.array([0, 255], np.uint8)),
    TensorProto.UINT16: ("UINT16", np.array([0, 65535], np.uint16)),
    TensorProto.UINT32: ("UINT32", np.array([0, 2**32 - 1], np.uint32)),
    TensorProto.UINT64: ("UINT64", np.array([0, 2**64 - 1], np.uint64)),
    TensorProto.INT8: ("INT8", np.array([-128, 127], np.int8)),
    TensorProto.INT16: ("INT16", np.array([-(2**15), 2**15 - 1], np.int16)),
    TensorProto.INT32: ("INT32", np.array([-(2**31), 2**31 - 1], np.int32)),
    TensorProto.INT64: ("INT64", np.array([-(2**63), 2**63 - 1], np.int64)),
    TensorProto.FLOAT16: ("FP16", np.array([0.5, -1.25], np.float16)),
    TensorProto.FLOAT: ("FP32", np.array([0.5, -1.25], np.float32)),
    TensorProto.DOUBLE: ("FP64", np.array([0.5, -1.25], np.float64)),
    TensorProto.STRING: ("BYTES", np.array([b"plain", "h\u00e9llo".encode()], dtype=object)),
}


def save(graph: onnx.GraphProto, path: Path, check: bool = True, opsets: list | None = None) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET + (opsets or []), ir_version=IR_VERSION)
    if check:  # the checker insists on a shape for every value, which the unranked graphs lack
        onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def tensor(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(3, 2)).astype(np.float32), "weights")
    paths = {}
    # two inputs with a dynamic batch, three outputs
    paths["multi"] = save(helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]),
         helper.make_node("MatMul", ["a", "weights"], ["projected"]),
         helper.make_node("ReduceMax", ["b"], ["row_max"], axes=[1], keepdims=0)],
        "multi",
        [tensor("a", TensorProto.FLOAT, ["batch", 3]), tensor("b", TensorProto.FLOAT, ["batch", 3])],
        [tensor("sum", TensorProto.FLOAT, ["batch", 3]), tensor("projected", TensorProto.FLOAT, ["batch", 2]),
         tensor("row_max", TensorProto.FLOAT, ["batch"])],
        initializer=[weights],
    ), root / "multi.onnx")
    # one Identity per element type
    nodes, inputs, outputs = [], [], []
    for elem_type in ELEMENT_TYPES:
        name = TensorProto.DataType.Name(elem_type).lower()
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(tensor(f"in_{name}", elem_type, [None]))
        outputs.append(tensor(f"out_{name}", elem_type, [None]))
    paths["types"] = save(helper.make_graph(nodes, "types", inputs, outputs), root / "types.onnx")
    # half precision arithmetic
    scale = numpy_helper.from_array(np.array([1.5, -2.0], np.float16), "scale")
    paths["fp16"] = save(helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])], "fp16",
        [tensor("x", TensorProto.FLOAT16, ["n", 2])], [tensor("y", TensorProto.FLOAT16, ["n", 2])],
        initializer=[scale],
    ), root / "fp16.onnx")
    # text in, text out (LabelEncoder needs no locale, unlike StringNormalizer)
    paths["strings"] = save(helper.make_graph(
        [helper.make_node("LabelEncoder", ["text"], ["upper"], domain="ai.onnx.ml", default_string="?",
                          keys_strings=["ship", "caf\u00e9", ""], values_strings=["SHIP", "CAF\u00c9", ""])],
        "strings", [tensor("text", TensorProto.STRING, ["n"])], [tensor("upper", TensorProto.STRING, ["n"])],
    ), root / "strings.onnx", opsets=[helper.make_opsetid("ai.onnx.ml", 2)])
    # an input the graph gives no shape at all
    paths["unranked"] = save(helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])], "unranked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], [tensor("y", TensorProto.FLOAT, None)],
    ), root / "unranked.onnx", check=False)
    # a tensor output next to a sequence output, which V2 cannot carry
    paths["sequence"] = save(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("SequenceConstruct", ["x", "y"], ["pair"])],
        "sequence", [tensor("x", TensorProto.FLOAT, ["n"])],
        [tensor("y", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_sequence_value_info("pair", TensorProto.FLOAT, None)],
    ), root / "sequence.onnx", check=False)
    return paths


def load(path: Path, name: str = "m", **config) -> ONNXModel:
    options = {"config": config} if config else {}
    model = create_model(ModelSource(name, "onnx", path, options=options))
    assert isinstance(model, ONNXModel)
    model.load()
    return model


def infer(model, inputs: dict, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    return asyncio.run(model.infer(inputs, outputs, {}))


def reference(path: Path, feed: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(outputs, feed)


def test_metadata_comes_from_the_graph(graphs):
    model = load(graphs["multi"], "multi")
    meta = model.metadata()
    assert meta["platform"] == "onnx"
    assert meta["inputs"] == [{"name": "a", "datatype": "FP32", "shape": [-1, 3]},
                              {"name": "b", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "sum", "datatype": "FP32", "shape": [-1, 3]},
                               {"name": "projected", "datatype": "FP32", "shape": [-1, 2]},
                               {"name": "row_max", "datatype": "FP32", "shape": [-1]}]
    assert model.default_outputs == ["sum", "projected", "row_max"]


@pytest.mark.parametrize("batch", [1, 7])
def test_several_inputs_and_outputs_match_onnxruntime_for_any_batch(graphs, batch):
    rng = np.random.default_rng(batch)
    a, b = (rng.normal(size=(batch, 3)).astype(np.float32) for _ in range(2))
    got = infer(load(graphs["multi"]), {"a": a, "b": b})
    expected = reference(graphs["multi"], {"a": a, "b": b})
    assert list(got) == ["sum", "projected", "row_max"]
    for name, want in zip(got, expected):
        np.testing.assert_array_equal(got[name], want)
        assert got[name].dtype == np.float32


def test_only_the_requested_outputs_are_fetched(graphs):
    model = load(graphs["multi"])
    calls = []
    run = model.session.run
    model.session.run = lambda names, feed: calls.append(list(names)) or run(names, feed)
    a = np.ones((2, 3), np.float32)
    got = infer(model, {"a": a, "b": a * 2}, ["row_max"])
    assert calls == [["row_max"]] and list(got) == ["row_max"]
    np.testing.assert_array_equal(got["row_max"], [2, 2])


def test_fp64_requests_are_cast_to_the_graph_datatype(graphs):
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    got = infer(load(graphs["multi"]), {"a": a, "b": a})
    np.testing.assert_array_equal(got["sum"], a * 2)


def test_every_element_type_maps_to_its_v2_datatype_and_round_trips(graphs):
    model = load(graphs["types"])
    declared = {spec.name: spec.datatype for spec in model.inputs}
    feed, expected = {}, {}
    for elem_type, (datatype, example) in ELEMENT_TYPES.items():
        name = TensorProto.DataType.Name(elem_type).lower()
        assert declared[f"in_{name}"] == datatype
        feed[f"in_{name}"], expected[f"out_{name}"] = example, example
    assert {spec.name: spec.datatype for spec in model.outputs} == {
        name.replace("in_", "out_"): datatype for name, datatype in declared.items()}
    got = infer(model, feed)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].tolist() == want.tolist(), name


def test_fp16_graph(graphs):
    model = load(graphs["fp16"])
    assert model.inputs[0].datatype == "FP16" and model.outputs[0].datatype == "FP16"
    x = np.array([[1.0, 2.0], [0.25, -3.5]], np.float16)
    got = infer(model, {"x": x})["y"]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, reference(graphs["fp16"], {"x": x})[0])
    from_fp32 = infer(model, {"x": x.astype(np.float32)})["y"]  # a JSON request carries FP32
    np.testing.assert_array_equal(from_fp32, got)


def test_string_graph_takes_and_returns_bytes(graphs):
    model = load(graphs["strings"])
    assert model.inputs[0].datatype == "BYTES" and model.outputs[0].datatype == "BYTES"
    text = np.array([b"ship", "caf\u00e9".encode(), b"", b"other"], dtype=object)
    got = infer(model, {"text": text})["upper"]
    assert got.dtype == object and all(isinstance(item, bytes) for item in got)
    expected = reference(graphs["strings"], {"text": np.array(["ship", "caf\u00e9", "", "other"], dtype=object)})[0]
    assert [item.decode() for item in got] == list(expected) == ["SHIP", "CAF\u00c9", "", "?"]
    with pytest.raises(InvalidInput, match="input 'text'.*UTF-8"):
        infer(model, {"text": np.array([b"\xff\xfe"], dtype=object)})


def test_single_input_accepts_any_tensor_name(graphs):
    got = infer(load(graphs["fp16"]), {"input-0": np.ones((1, 2), np.float32)})
    np.testing.assert_array_equal(got["y"], [[1.5, -2.0]])


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"a": np.ones((2, 4), np.float32), "b": np.ones((2, 3), np.float32)},
         r"input 'a': expected shape \[-1, 3\], got \[2, 4\]"),
        ({"a": np.ones((2, 3), np.float32)}, "missing input 'b'"),
        ({"a": np.ones((2, 3), np.float32), "b": np.array([[b"x"] * 3] * 2, dtype=object)},
         "input 'b': expected FP32, got BYTES"),
        ({"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}, r"input 'a': expected shape \[-1, 3\]"),
        ({"a": np.ones((1, 3)), "b": np.ones((1, 3)), "c": np.ones(1)}, "unknown input 'c'"),
    ],
)
def test_bad_inputs_raise_invalid_input_naming_the_input(graphs, inputs, message):
    with pytest.raises(InvalidInput, match=message):
        infer(load(graphs["multi"]), inputs)


def test_unknown_output_is_rejected(graphs):
    a = np.ones((1, 3), np.float32)
    with pytest.raises(InvalidInput, match="unknown output 'nope'.*projected"):
        infer(load(graphs["multi"]), {"a": a, "b": a}, ["nope"])


def test_mismatched_dynamic_dims_are_reported(graphs):
    # both batch dims are "batch", but ONNX Runtime only finds out when Add broadcasts
    with pytest.raises((InvalidInput, ModelFailed), match="model 'm'") as caught:
        infer(load(graphs["multi"]), {"a": np.ones((2, 3), np.float32), "b": np.ones((3, 3), np.float32)})
    assert "[ONNXRuntimeError]" not in str(caught.value) and "onnxruntime_src" not in str(caught.value)


def test_input_without_a_shape_takes_any_rank(graphs):
    model = load(graphs["unranked"])
    assert model.inputs[0].shape == ()
    for shape in [(3,), (2, 2, 2)]:
        x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        np.testing.assert_array_equal(infer(model, {"x": x})["y"], -x)


def test_non_tensor_outputs_are_left_out(graphs, caplog):
    with caplog.at_level(logging.WARNING, logger="shipyard.runtimes.onnx"):
        model = load(graphs["sequence"])
    assert [spec.name for spec in model.outputs] == ["y"]
    assert "'pair'" in caplog.text and "not a tensor" in caplog.text
    np.testing.assert_array_equal(infer(model, {"x": np.array([-1.0, 2.0], np.float32)})["y"], [0, 2])


def test_threads_setting_reaches_the_session(graphs):
    options = load(graphs["fp16"], threads=2).session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    default = load(graphs["fp16"]).session.get_session_options()
    assert default.intra_op_num_threads == 0 and default.inter_op_num_threads == 1
    with pytest.raises(ValueError, match="'threads' must be a positive integer, got 'many'"):
        load(graphs["fp16"], threads="many")


@pytest.mark.parametrize("content", [b"this is not a protobuf", b""])
def test_invalid_file_is_a_clear_load_error(tmp_path, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"cannot load .*broken\.onnx as an ONNX model") as caught:
        load(path)
    assert "[ONNXRuntimeError]" not in str(caught.value)


def test_unsupported_ir_version_is_explained(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [tensor("x", TensorProto.FLOAT, [1])],
                              [tensor("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=99)
    onnx.save(model, tmp_path / "future.onnx")
    with pytest.raises(ValueError, match=r"future\.onnx.*IR version"):
        load(tmp_path / "future.onnx")


def test_missing_onnxruntime_names_the_extra(graphs, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeError, match=r"pip install 'shipyard\[onnx\]'"):
        load(graphs["fp16"])
