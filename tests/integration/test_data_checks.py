"""A package's signature enforced through every protocol of a real server, and its secrets,
environment variables and weights given to the model at load."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import textwrap
import threading

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serverproc import ServerProcess, running

pytestmark = pytest.mark.integration

SIGNATURE = """
inputs:
  - name: flower
    datatype: FP64
    shape: [-1, 4]
    columns:
      - {name: sepal_length, min: 0, max: 10}
      - sepal_width
      - petal_length
      - {name: petal_width, min: 0}
"""
ROW = [5.1, 3.5, 1.4, 0.2]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

SECRET_MODEL = '''
import os
import numpy as np

class Model:
    def __init__(self, data_dir, secrets):
        self.data_dir, self.secrets = data_dir, secrets

    def load(self):
        self.weights = (self.data_dir / "weights.bin").read_bytes()

    def predict(self, inputs):
        return {"token": np.array([self.secrets["API_TOKEN"]], dtype=object),
                "mode": np.array([os.environ["MODE"]], dtype=object),
                "weights": np.array([self.weights.decode()], dtype=object)}
'''


@pytest.fixture(scope="module")
def weights_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "weights.bin").write_bytes(b"w" * 1000)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/weights.bin"
    server.shutdown()


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory, weights_url):
    root = tmp_path_factory.mktemp("checks")
    for name, mode in (("strict", "strict"), ("lenient", "warn")):
        folder = root / name
        folder.mkdir()
        shutil.copy(artifacts["sk_logreg"], folder / "model.joblib")
        (folder / "shipyard.yaml").write_text(f"name: {name}\nchecks: {mode}\n{SIGNATURE}")
    secret = root / "secret"
    secret.mkdir()
    (secret / "model.py").write_text(textwrap.dedent(SECRET_MODEL))
    digest = hashlib.sha256(b"w" * 1000).hexdigest()
    (secret / "shipyard.yaml").write_text(
        "name: secret\nsecrets: [API_TOKEN]\nenvironment_variables: {MODE: fast}\n"
        f"weights:\n  - {{uri: '{weights_url}', sha256: {digest}, path: data/weights.bin}}\n"
    )
    home = root / "home"
    with running(root / "strict", root / "lenient", secret,
                 env={"API_TOKEN": "s3cr3t", "SHIPYARD_HOME": str(home)}) as process:
        yield process


def v2(server, model, body):
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)


def test_metadata_shows_the_declared_input(server):
    meta = httpx.get(f"{server.url}/v2/models/strict").json()
    assert meta["inputs"] == [{"name": "flower", "datatype": "FP64", "shape": [-1, 4]}]


def test_rest_json_whole_tensor_and_columns(server):
    whole = v2(server, "strict", {"inputs": [{"name": "flower", "datatype": "FP64", "shape": [1, 4], "data": ROW}]})
    assert whole.status_code == 200, whole.text
    columns = v2(server, "strict", {"inputs": [
        {"name": name, "datatype": "FP64", "shape": [1], "data": [value]} for name, value in zip(COLUMNS, ROW)
    ]})
    assert columns.status_code == 200, columns.text
    assert columns.json()["outputs"] == whole.json()["outputs"]


@pytest.mark.parametrize(
    "inputs, fragments",
    [
        ([{"name": "flower", "datatype": "FP64", "shape": [1, 4], "data": [11, 3.5, 1.4, 0.2]}],
         ["column 'sepal_length'", "above the maximum 10"]),
        ([{"name": n, "datatype": "FP64", "shape": [1], "data": [1.0]} for n in COLUMNS[:3]],
         ["missing column 'petal_width'"]),
        ([{"name": "flower", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}], ["expected shape [-1, 4]"]),
        ([{"name": "flower", "datatype": "BYTES", "shape": [1, 4], "data": ["a", "b", "c", "d"]}],
         ["input 'flower'", "expected FP64, got BYTES"]),
    ],
)
def test_rest_json_rejections_name_input_and_rule(server, inputs, fragments):
    response = v2(server, "strict", {"inputs": inputs})
    assert response.status_code == 400
    for fragment in fragments:
        assert fragment in response.json()["error"]
    lenient = v2(server, "lenient", {"inputs": inputs})
    if "above the maximum" in fragments[-1]:
        assert lenient.status_code == 200, "checks: warn serves a request that breaks a range"


def test_v1_records_are_columns(server):
    record = dict(zip(COLUMNS, ROW))
    ok = httpx.post(f"{server.url}/v1/models/strict:predict", json={"instances": [record, record]})
    assert ok.status_code == 200 and ok.json()["predictions"] == [0, 0]
    bad = httpx.post(f"{server.url}/v1/models/strict:predict", json={"instances": [{**record, "petal_width": -1}]})
    assert bad.status_code == 400 and "below the minimum 0" in bad.json()["error"]


def test_binary_rest_rejection(server):
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = httpclient.InferInput("flower", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, -3.0]]), binary_data=True)
    with pytest.raises(InferenceServerException, match="petal_width.*below the minimum 0"):
        client.infer("strict", [tensor])
    tensor.set_data_from_numpy(np.array([ROW]), binary_data=True)
    assert client.infer("strict", [tensor]).as_numpy("predict").tolist() == [0]


def test_grpc_rejection_and_columns(server):
    client = grpcclient.InferenceServerClient(server.grpc_address)
    bad = grpcclient.InferInput("flower", [1, 4], "FP64")
    bad.set_data_from_numpy(np.array([[12.0, 3.5, 1.4, 0.2]]))
    with pytest.raises(InferenceServerException, match="sepal_length.*above the maximum 10") as error:
        client.infer("strict", [bad])
    assert "INVALID_ARGUMENT" in str(error.value.status())
    columns = []
    for name, value in zip(COLUMNS, ROW):
        column = grpcclient.InferInput(name, [1], "FP64")
        column.set_data_from_numpy(np.array([value]))
        columns.append(column)
    assert client.infer("strict", columns).as_numpy("predict").tolist() == [0]
    client.close()


def test_secrets_environment_and_weights_reach_the_model(server):
    response = v2(server, "secret", {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}]})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs == {"token": ["s3cr3t"], "mode": ["fast"], "weights": ["w" * 1000]}
    index = httpx.post(f"{server.url}/v2/repository/index").text
    assert "s3cr3t" not in index


def test_missing_secret_stops_start_up_with_how_to_set_it(artifacts, tmp_path):
    folder = tmp_path / "needs"
    folder.mkdir()
    (folder / "model.py").write_text("class Model:\n    def predict(self, x):\n        return x\n")
    (folder / "shipyard.yaml").write_text("secrets: [NOT_SET_ANYWHERE]\n")
    process = ServerProcess(artifacts["sk_logreg"], folder, env={"SHIPYARD_HOME": str(tmp_path / "home")})
    try:
        assert process.process.wait(60) == 1
    finally:
        process.stop()
    assert "model 'needs' failed to load" in process.output
    assert "secret 'NOT_SET_ANYWHERE' is not set: export NOT_SET_ANYWHERE=..." in process.output
