"""A transformer (`shipyard serve FOLDER --predictor-url`) in front of a real predictor process:
preprocess → predictor over V1, V2 and gRPC → postprocess, headers passed through, errors named."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import write_custom_model

#: preprocess multiplies by 10, the predictor (an echo model) returns that, postprocess adds one:
#: output = input * 10 + 1. preprocess also records the headers it was handed.
TRANSFORMER = """
import numpy as np

class Model:
    def preprocess(self, inputs, parameters):
        seen = parameters.get("headers", {})
        with open(SEEN, "a") as f:
            f.write(json.dumps(seen) + "\\n")
        return {"input-0": np.asarray(inputs["input-0"], dtype=np.float64) * 10}

    def postprocess(self, outputs):
        return {"output-0": np.asarray(outputs["output-0"]) + 1}
"""

ECHO = """
import numpy as np

class Model:
    def predict(self, inputs, parameters):
        if "fail" in parameters:
            raise ValueError("asked to fail")
        return {"output-0": np.asarray(inputs["input-0"], dtype=np.float64)}

    def explain(self, inputs):
        return {"explained": np.asarray(inputs["input-0"]).tolist()}
"""


@pytest.fixture
def predictor(tmp_path: Path, start_server):
    folder = write_custom_model(tmp_path / "echo", ECHO)
    return start_server(folder, "--name", "echo")


def _transformer(tmp_path: Path, start_server, predictor_url: str, protocol: str, grpc_url: str | None = None):
    seen = tmp_path / "seen.jsonl"
    source = f"import json\nSEEN = {str(seen)!r}\n" + textwrap.dedent(TRANSFORMER)
    folder = write_custom_model(tmp_path / f"transformer-{protocol}", source)
    args = [folder, "--name", "echo", "--predictor-url", predictor_url, "--predictor-protocol", protocol]
    if grpc_url:
        args += ["--predictor-grpc-url", grpc_url]
    return start_server(*args), seen


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc-v2"])
def test_round_trip_through_the_predictor(tmp_path: Path, start_server, predictor, protocol: str) -> None:
    grpc_url = f"grpc://{predictor.grpc_address}" if protocol == "grpc-v2" else None
    transformer, seen = _transformer(tmp_path, start_server, predictor.url, protocol, grpc_url)
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    headers = {"x-request-id": "req-42", "authorization": "Bearer t0ken",
               "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    answer = httpx.post(f"{transformer.url}/v2/models/echo/infer", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    assert np.allclose(np.asarray(output["data"]).reshape(output["shape"]), [[11, 21], [31, 41]])
    passed = json.loads(seen.read_text().splitlines()[-1])
    assert passed["x-request-id"] == "req-42" and passed["authorization"] == "Bearer t0ken"
    # V1 into the transformer works whatever the predictor speaks
    answer = httpx.post(f"{transformer.url}/v1/models/echo:predict", json={"instances": [[1, 1]]}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == [[11.0, 11.0]]


def test_grpc_into_the_transformer(tmp_path: Path, start_server, predictor) -> None:
    import grpc

    from shipyard.protocol.proto import inference_pb2 as pb
    from shipyard.protocol.proto.service import Stub

    transformer, seen = _transformer(tmp_path, start_server, predictor.url, "v2")
    request = pb.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 2])
    tensor.contents.fp64_contents.extend([0.5, 2.0])
    with grpc.insecure_channel(transformer.grpc_address) as channel:
        response = Stub(channel).ModelInfer(request, metadata=[("x-request-id", "grpc-7")], timeout=30)
    values = np.frombuffer(response.raw_output_contents[0], dtype="<f8")
    assert np.allclose(values, [6.0, 21.0])
    assert json.loads(seen.read_text().splitlines()[-1])["x-request-id"] == "grpc-7"


def test_predictor_errors_are_passed_on_and_the_transformer_keeps_serving(tmp_path: Path, start_server,
                                                                         predictor) -> None:
    transformer, _ = _transformer(tmp_path, start_server, predictor.url, "v2")
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 1], "data": [1]}],
            "parameters": {"fail": True}}
    answer = httpx.post(f"{transformer.url}/v2/models/echo/infer", json=body, timeout=30)
    assert answer.status_code == 500
    assert "predictor" in answer.json()["error"] and "asked to fail" in answer.json()["error"]
    ok = httpx.post(f"{transformer.url}/v2/models/echo/infer", json={"inputs": body["inputs"]}, timeout=30)
    assert ok.status_code == 200


def test_predictor_down_is_a_502_naming_it(tmp_path: Path, start_server) -> None:
    transformer, _ = _transformer(tmp_path, start_server, "http://127.0.0.1:9", "v2")
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 1], "data": [1]}]}
    answer = httpx.post(f"{transformer.url}/v2/models/echo/infer", json=body, timeout=30)
    assert answer.status_code == 502
    assert "cannot reach the predictor 'echo' at http://127.0.0.1:9" in answer.json()["error"]


def test_bad_predictor_flags_are_rejected(tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = write_custom_model(tmp_path / "t", "class Model:\n    def preprocess(self, x):\n        return x\n")
    for flags, message in ((["--predictor-url", "localhost:80"], "--predictor-url: expected http://HOST:PORT"),
                           (["--predictor-url", "http://127.0.0.1:1", "--predictor-protocol", "v3"],
                            "--predictor-protocol: expected one of v1, v2, grpc-v2")):
        done = subprocess.run([sys.executable, "-m", "shipyard", "serve", str(folder), *flags],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        assert message in done.stderr + done.stdout


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_a_transformer_forwards_explanations_of_its_preprocessed_inputs(tmp_path: Path, start_server, predictor,
                                                                        protocol: str) -> None:
    transformer, _ = _transformer(tmp_path, start_server, predictor.url, protocol)
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]}
    answer = httpx.post(f"{transformer.url}/v2/models/echo/explain", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"explained": [[10.0, 20.0]]}
    answer = httpx.post(f"{transformer.url}/v1/models/echo:explain", json={"instances": [[3.0]]}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["explained"] == [[30.0]]
