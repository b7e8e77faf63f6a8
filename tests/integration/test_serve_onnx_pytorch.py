"""ONNX and PyTorch models served by a real ``shipyard serve`` answer what onnxruntime and torch give directly."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from serverproc import ServerProcess, running

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")]

IR_VERSION = 8  # onnx may write a newer IR version than the installed onnxruntime reads
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]], np.float32)

EAGER_MODEL = '''
    import torch

    class Model:
        """An eager module rebuilt from its code and a state_dict in data/."""

        def __init__(self, data_dir):
            self.data_dir = data_dir

        def load(self):
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
            self.net.load_state_dict(torch.load(self.data_dir / "weights.pt"))
            self.net.eval()

        def predict(self, inputs):
            logits = self.net(torch.from_numpy(inputs["input-0"]).float())
            return {"probabilities": logits.softmax(dim=1),
                    "grad_enabled": torch.tensor([torch.is_grad_enabled()])}
'''


class Classifier(torch.nn.Module):
    """One input, a tuple of (probabilities, label)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    def forward(self, x: torch.Tensor):
        probabilities = self.net(x).softmax(dim=1)
        return probabilities, probabilities.argmax(dim=1)


class Embedder(torch.nn.Module):
    """One input, a dict of outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor):
        embedding = self.proj(x)
        return {"embedding": embedding, "norm": embedding.norm(dim=1)}


def save_onnx(graph: onnx.GraphProto, path: Path, *opsets: tuple[str, int]) -> Path:
    imports = [helper.make_opsetid("", 17)] + [helper.make_opsetid(domain, v) for domain, v in opsets]
    model = helper.make_model(graph, opset_imports=imports, ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def mxnet_style_mlp(path: Path) -> Path:
    """What ``mx.onnx.export_model`` writes for a small Gluon MLP: input ``data``, Gemm/Relu/softmax nodes."""
    rng = np.random.default_rng(7)
    params = {
        "dense0_weight": rng.normal(size=(8, 4)).astype(np.float32),
        "dense0_bias": rng.normal(size=8).astype(np.float32),
        "dense1_weight": rng.normal(size=(3, 8)).astype(np.float32),
        "dense1_bias": rng.normal(size=3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["data", "dense0_weight", "dense0_bias"], ["dense0_fwd"], transB=1,
                         name="dense0_fwd"),
        helper.make_node("Relu", ["dense0_fwd"], ["relu0_fwd"], name="relu0_fwd"),
        helper.make_node("Gemm", ["relu0_fwd", "dense1_weight", "dense1_bias"], ["dense1_fwd"], transB=1,
                         name="dense1_fwd"),
        helper.make_node("Softmax", ["dense1_fwd"], ["softmax0_output"], axis=1, name="softmax0"),
    ]
    graph = helper.make_graph(
        nodes, "mxnet_converted_model",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("softmax0_output", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(value, name) for name, value in params.items()],
    )
    return save_onnx(graph, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    paths: dict[str, Path] = {}

    weights = numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2), "weights")
    paths["onnx_multi"] = save_onnx(helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("MatMul", ["a", "weights"], ["projected"])],
        "multi",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("projected", TensorProto.FLOAT, ["batch", 2])],
        initializer=[weights],
    ), root / "onnx_multi.onnx")
    paths["onnx_text"] = save_onnx(helper.make_graph(
        [helper.make_node("LabelEncoder", ["species"], ["code"], domain="ai.onnx.ml",
                          keys_strings=["setosa", "virginica"], values_int64s=[0, 2], default_int64=-1)],
        "text", [helper.make_tensor_value_info("species", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("code", TensorProto.INT64, ["n"])],
    ), root / "onnx_text.onnx", ("ai.onnx.ml", 2))
    paths["mxnet_mlp"] = mxnet_style_mlp(root / "mxnet_mlp.onnx")
    scale = numpy_helper.from_array(np.array([0.5, -2.0], np.float16), "scale")
    paths["onnx_fp16"] = save_onnx(helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])], "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n", 2])], initializer=[scale],
    ), root / "onnx_fp16.onnx")

    eager = root / "eager_torch"
    (eager / "data").mkdir(parents=True)
    (eager / "model.py").write_text(textwrap.dedent(EAGER_MODEL))
    torch.save(Classifier().net.state_dict(), eager / "data" / "weights.pt")
    (eager / "shipyard.yaml").write_text("format: pytorch\nthreads: 1\n")
    paths["eager_torch"] = eager

    package = root / "ts_package"
    package.mkdir()
    torch.jit.script(Classifier().eval()).save(str(package / "model.pt"))
    (package / "shipyard.yaml").write_text(textwrap.dedent("""\
        name: iris_torchscript
        format: pytorch
        artifact: model.pt
        threads: 1
        inputs:
          - {name: measurements, datatype: FP32, shape: [-1, 4]}
        outputs:
          - {name: probabilities, datatype: FP32, shape: [-1, 3]}
          - {name: label, datatype: INT64, shape: [-1]}
    """))
    paths["ts_package"] = package

    batch = torch.export.Dim("batch")
    program = torch.export.export(Embedder().eval(), (torch.randn(3, 4),), dynamic_shapes={"x": {0: batch}})
    paths["embedder"] = root / "embedder.pt2"
    torch.export.save(program, str(paths["embedder"]))
    return paths


@pytest.fixture(scope="module")
def server(models):
    with running(*(models[name] for name in
                              ["onnx_multi", "onnx_text", "onnx_fp16", "mxnet_mlp", "eager_torch", "ts_package",
                               "embedder"])) as process:
        yield process


def v2(server, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict:
    body: dict = {"inputs": [
        {"name": name, "shape": list(array.shape), "datatype": datatype(array),
         "data": [item.decode() if isinstance(item, bytes) else item for item in array.ravel().tolist()]}
        for name, array in inputs.items()
    ]}
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {out["name"]: out for out in response.json()["outputs"]}


def datatype(array: np.ndarray) -> str:
    return {"f": "FP32", "i": "INT64", "O": "BYTES"}[array.dtype.kind]


def as_array(output: dict) -> np.ndarray:
    return np.asarray(output["data"]).reshape(output["shape"])


def metadata(server, model: str) -> dict:
    return httpx.get(f"{server.url}/v2/models/{model}", timeout=10).json()


def run_onnx(path: Path, feed: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(outputs, feed)


def test_onnx_metadata_and_several_inputs_and_outputs(server, models):
    meta = metadata(server, "onnx_multi")
    assert meta["platform"] == "onnx"
    assert meta["inputs"] == [{"name": "a", "datatype": "FP32", "shape": [-1, 4]},
                              {"name": "b", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["sum", "projected"]
    b = ROWS[::-1].copy()
    got = v2(server, "onnx_multi", {"a": ROWS, "b": b})
    expected = run_onnx(models["onnx_multi"], {"a": ROWS, "b": b})
    for (name, output), want in zip(got.items(), expected):
        assert output["datatype"] == "FP32" and output["shape"] == list(want.shape)
        np.testing.assert_allclose(as_array(output), want, rtol=1e-6)
    subset = v2(server, "onnx_multi", {"a": ROWS[:1], "b": b[:1]}, outputs=["projected"])
    assert list(subset) == ["projected"] and subset["projected"]["shape"] == [1, 2]


def test_onnx_string_input_over_json(server, models):
    species = np.array([b"virginica", b"setosa", b"unknown"], dtype=object)
    got = v2(server, "onnx_text", {"species": species})["code"]
    expected = run_onnx(models["onnx_text"], {"species": np.array(["virginica", "setosa", "unknown"])})[0]
    assert got["datatype"] == "INT64" and got["data"] == expected.tolist() == [2, 0, -1]


def test_onnx_bad_input_is_400_naming_the_input(server):
    body = {"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
                       {"name": "b", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    response = httpx.post(f"{server.url}/v2/models/onnx_multi/infer", json=body, timeout=10)
    assert response.status_code == 400 and "input 'a': expected shape [-1, 4], got [1, 3]" in response.json()["error"]


def binary_infer(server, model: str, inputs: dict[str, tuple[str, np.ndarray]], output: str) -> np.ndarray:
    """A binary-extension request (raw tensor bytes after the JSON header) asking for one output as binary."""
    header = {"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                          "parameters": {"binary_data_size": array.nbytes}}
                         for name, (datatype, array) in inputs.items()],
              "outputs": [{"name": output, "parameters": {"binary_data": True}}]}
    encoded = json.dumps(header).encode()
    content = encoded + b"".join(array.tobytes() for _, array in inputs.values())
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", content=content, timeout=30,
                          headers={"Inference-Header-Content-Length": str(len(encoded)),
                                   "Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    described = json.loads(response.content[:length])["outputs"][0]
    dtype = {"FP16": np.float16, "FP32": np.float32}[described["datatype"]]
    return np.frombuffer(response.content[length:], dtype).reshape(described["shape"])


def test_fp16_onnx_graph_over_the_binary_extension(server, models):
    x = np.array([[1.0, 2.0], [-0.25, 8.0]], np.float16)
    got = binary_infer(server, "onnx_fp16", {"x": ("FP16", x)}, "y")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, run_onnx(models["onnx_fp16"], {"x": x})[0])


def test_binary_request_into_a_torch_export_program(server, models):
    rows = np.tile(ROWS, (2, 1))
    got = binary_infer(server, "embedder", {"x": ("FP32", rows)}, "embedding")
    with torch.inference_mode():
        expected = torch.export.load(str(models["embedder"])).module()(torch.from_numpy(rows))["embedding"]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5)


def test_mxnet_model_served_through_its_onnx_export(server, models):
    meta = metadata(server, "mxnet_mlp")
    assert meta["inputs"] == [{"name": "data", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "softmax0_output", "datatype": "FP32", "shape": [-1, 3]}]
    expected = run_onnx(models["mxnet_mlp"], {"data": ROWS})[0]
    got = v2(server, "mxnet_mlp", {"data": ROWS})["softmax0_output"]
    np.testing.assert_allclose(as_array(got), expected, rtol=1e-5)
    v1 = httpx.post(f"{server.url}/v1/models/mxnet_mlp:predict", json={"instances": ROWS.tolist()}, timeout=10)
    assert v1.status_code == 200
    np.testing.assert_allclose(v1.json()["predictions"], expected, rtol=1e-5)


def test_eager_pytorch_package_with_model_py(server, models):
    net = Classifier().net
    net.load_state_dict(torch.load(models["eager_torch"] / "data" / "weights.pt"))
    with torch.inference_mode():
        expected = net(torch.from_numpy(ROWS)).softmax(dim=1).numpy()
    got = v2(server, "eager_torch", {"input-0": ROWS})
    np.testing.assert_allclose(as_array(got["probabilities"]), expected, rtol=1e-5)
    assert got["grad_enabled"]["data"] == [False]  # predict ran under torch.inference_mode()
    v1 = httpx.post(f"{server.url}/v1/models/eager_torch:predict", json={"instances": ROWS[:1].tolist()}, timeout=10)
    assert v1.status_code == 200 and len(v1.json()["predictions"]) == 1


def test_torchscript_package_with_declared_signature(server, models):
    meta = metadata(server, "iris_torchscript")
    assert meta["platform"] == "pytorch"
    assert meta["inputs"] == [{"name": "measurements", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                               {"name": "label", "datatype": "INT64", "shape": [-1]}]
    module = torch.jit.load(str(models["ts_package"] / "model.pt"))
    with torch.inference_mode():
        probabilities, label = module(torch.from_numpy(ROWS))
    got = v2(server, "iris_torchscript", {"measurements": ROWS})
    np.testing.assert_allclose(as_array(got["probabilities"]), probabilities.numpy(), rtol=1e-5)
    assert got["label"]["datatype"] == "INT64" and got["label"]["data"] == label.tolist()
    only_label = v2(server, "iris_torchscript", {"measurements": ROWS}, outputs=["label"])
    assert list(only_label) == ["label"]
    v1 = httpx.post(f"{server.url}/v1/models/iris_torchscript:predict", json={"instances": ROWS.tolist()},
                    timeout=10)
    np.testing.assert_allclose(v1.json()["predictions"], probabilities.numpy(), rtol=1e-5)


def test_torch_export_program_with_dynamic_batch(server, models):
    meta = metadata(server, "embedder")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 2]},
                               {"name": "norm", "datatype": "FP32", "shape": [-1]}]
    module = torch.export.load(str(models["embedder"])).module()
    for rows in [ROWS[:1], np.tile(ROWS, (5, 1))]:
        with torch.inference_mode():
            expected = module(torch.from_numpy(np.ascontiguousarray(rows)))
        got = v2(server, "embedder", {"x": rows})
        assert got["embedding"]["shape"] == [len(rows), 2]
        np.testing.assert_allclose(as_array(got["embedding"]), expected["embedding"].numpy(), rtol=1e-5)
        np.testing.assert_allclose(as_array(got["norm"]), expected["norm"].numpy(), rtol=1e-5)
    wrong = httpx.post(f"{server.url}/v2/models/embedder/infer", timeout=10, json={
        "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    assert wrong.status_code == 400 and "input 'x': expected shape [-1, 4]" in wrong.json()["error"]


def test_corrupt_onnx_file_fails_to_load_and_exits_1(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07definitely not a protobuf model" * 3)
    process = ServerProcess(corrupt)
    try:
        assert process.wait_exit(60) == 1, process.output
    finally:
        process.stop()
    assert "model 'corrupt' failed to load" in process.output
    assert "corrupt.onnx as an ONNX model" in process.output and "Traceback" not in process.output
