"""spec.transformer through `shipyard up`: its own replicas in front of the predictor, reached
through the gateway over REST (V1, V2) and gRPC, with status, conditions and removal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import numpy as np
import pytest

from conftest import write_custom_model
from planeproc import PlaneProcess, isvc, kill_replicas, wait_for
from shipyard.protocol.proto import inference_pb2 as pb
from shipyard.protocol.proto.service import Stub

#: The transformer scales inputs by 10 and tags the output; it records the headers it got.
TRANSFORMER = """
import json
import os
import numpy as np

class Model:
    def preprocess(self, inputs, parameters):
        with open(os.environ["SEEN_FILE"], "a") as f:
            f.write(json.dumps(parameters.get("headers", {})) + "\\n")
        return {"input-0": np.asarray(inputs["input-0"], dtype=np.float64) * 10}

    def postprocess(self, outputs):
        return {"output-0": np.asarray(outputs["output-0"]) + 0.5}
"""

#: The predictor echoes its input (+1) so the test sees exactly what reached it.
PREDICTOR = """
import numpy as np

class Model:
    def predict(self, inputs):
        return {"output-0": np.asarray(inputs["input-0"], dtype=np.float64) + 1}
"""


@pytest.fixture(scope="module")
def plane(tmp_path_factory) -> Iterator[tuple[PlaneProcess, Path, Path]]:
    root = tmp_path_factory.mktemp("transformer")
    predictor = write_custom_model(root / "predictor", PREDICTOR)
    transformer = write_custom_model(root / "transformer", TRANSFORMER)
    running = PlaneProcess(root / "home").wait_up()
    try:
        yield running, predictor, transformer
    finally:
        running.stop()
        kill_replicas(str(predictor))
        kill_replicas(str(transformer))


def _service(name: str, predictor: Path, transformer: Path | None, seen: Path, protocol: str = "v2") -> dict:
    document = isvc(name, predictor, "custom", model={"protocolVersion": protocol})
    if transformer is not None:
        document["spec"]["transformer"] = {"model": {
            "modelFormat": {"name": "custom"}, "storageUri": str(transformer),
            "env": [{"name": "SEEN_FILE", "value": str(seen)}]}}
    return document


def _infer(gateway: str, name: str, values: list[float], **headers: str) -> np.ndarray:
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, len(values)], "data": values}]}
    answer = httpx.post(f"{gateway}/v2/models/{name}/infer", json=body, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    return np.asarray(output["data"]).reshape(output["shape"])


@pytest.mark.parametrize("protocol", ["v2", "grpc-v2"])
def test_transformer_runs_in_front_of_the_predictor(plane, tmp_path: Path, protocol: str) -> None:
    running, predictor, transformer = plane
    name = f"tf-{protocol.replace('-', '')}"
    seen = tmp_path / "seen.jsonl"
    running.apply(_service(name, predictor, transformer, seen, protocol))
    described = running.wait_ready(name, timeout=120)
    status = described["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["TransformerReady"] == "True"
    component = status["components"]["transformer"]
    assert component["latestReadyRevision"] == f"{name}-transformer-00001"
    assert component["url"] == f"http://{name}-transformer.default.example.com"
    assert status["components"]["predictor"]["latestReadyRevision"] == f"{name}-predictor-00001"

    # V2 REST: (x * 10 + 1) + 0.5, so both the transformer and the predictor ran
    headers = {"x-request-id": "abc-1", "authorization": "Bearer t0ken"}
    assert np.allclose(_infer(running.gateway, name, [1, 2], **headers), [[11.5, 21.5]])
    assert json.loads(seen.read_text().splitlines()[-1]) == headers  # passed through the gateway
    # V1 into the service
    answer = httpx.post(f"{running.gateway}/v1/models/{name}:predict", json={"instances": [[3.0]]}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == [[31.5]]
    # gRPC into the service goes through the transformer too
    request = pb.ModelInferRequest(model_name=name)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 1])
    tensor.contents.fp64_contents.append(2.0)
    with grpc.insecure_channel(running.info["gateway_grpc"]) as channel:
        response = Stub(channel).ModelInfer(request, timeout=60)
    assert np.allclose(np.frombuffer(response.raw_output_contents[0], dtype="<f8"), [21.5])
    # the predictor's own host skips the transformer
    host = f"{name}-predictor.default.example.com"
    answer = httpx.post(f"{running.gateway}/v2/models/{name}/infer", headers={"host": host}, timeout=60,
                        json={"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 1], "data": [2]}]})
    assert answer.json()["outputs"][0]["data"] == [3.0]


def test_removing_the_transformer_sends_requests_to_the_predictor(plane, tmp_path: Path) -> None:
    running, predictor, transformer = plane
    seen = tmp_path / "seen.jsonl"
    running.apply(_service("tf-removed", predictor, transformer, seen))
    running.wait_ready("tf-removed", timeout=120)
    assert np.allclose(_infer(running.gateway, "tf-removed", [1]), [[11.5]])
    running.apply(_service("tf-removed", predictor, None, seen))

    def plain() -> bool:
        return bool(np.allclose(_infer(running.gateway, "tf-removed", [1]), [[2.0]]))

    wait_for(plain, 60, "requests to skip the removed transformer")
    status = wait_for(lambda: "transformer" not in (running.describe("tf-removed") or {}).get("status", {})
                      .get("components", {"transformer": 1}) and running.describe("tf-removed")["status"],
                      30, "the transformer's status to go")
    assert not any(c["type"] == "TransformerReady" for c in status["conditions"])


def test_a_transformer_that_fails_to_start_says_why(plane, tmp_path: Path) -> None:
    running, predictor, _ = plane
    broken = write_custom_model(tmp_path / "broken", "raise RuntimeError('no transformer today')\n")
    document = _service("tf-broken", predictor, broken, tmp_path / "seen.jsonl")
    running.apply(document)

    def not_ready() -> dict | None:
        condition = running.condition("tf-broken", "TransformerReady")
        return condition if condition and "no transformer today" in condition.get("message", "") else None

    condition = wait_for(not_ready, 90, "TransformerReady to say why")
    assert condition["status"] == "False"
    assert (running.condition("tf-broken") or {}).get("status") == "False"
    # the predictor still serves through its own host
    answer = httpx.post(f"{running.gateway}/v2/models/tf-broken/infer", timeout=60,
                        headers={"host": "tf-broken-predictor.default.example.com"},
                        json={"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 1], "data": [1]}]})
    assert answer.status_code == 200, answer.text


def test_transformer_spec_errors_name_the_field(plane, tmp_path: Path) -> None:
    running, predictor, _ = plane
    document = _service("tf-bad", predictor, None, tmp_path / "seen.jsonl")
    document["spec"]["transformer"] = {"containers": [{"name": "kserve-container", "image": "me/transformer"}]}
    document["spec"]["explainer"] = {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": str(predictor)}}
    answer = httpx.post(f"{running.api}/apis/apply", json={"documents": [document]}, timeout=30)
    assert answer.status_code == 400 or answer.status_code == 422, answer.text
    text = answer.text
    assert "spec.transformer.containers" in text and "container images are not run locally" in text
    assert "spec.explainer.model.modelFormat.name" in text and "expected shap or custom" in text
    assert running.describe("tf-bad") is None
