"""The ``shipyard`` command as a user runs it: help, predict, and the Python SDK against a server."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from shipyard.client import InferenceClient, InferenceServerError, ServerUnreachable


def shipyard(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def server(artifacts):
    from serverproc import running

    with running(artifacts["sk_logreg"], "--name", "iris") as process:
        yield process


@pytest.mark.parametrize("command", [[], ["serve"], ["predict"], ["version"]])
def test_help_reads_well(command):
    result = shipyard(*command, "--help")
    assert result.returncode == 0
    assert "Usage" in result.stdout


def test_no_arguments_shows_help():
    result = shipyard()
    assert "serve" in result.stdout + result.stderr and "predict" in result.stdout + result.stderr


def test_predict_with_bare_rows_v2_and_v1(server, tmp_path):
    result = shipyard("predict", "iris", "--url", server.url, "-d", "[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["outputs"][0]["data"] == [0, 2]
    result = shipyard("predict", "iris", "--url", server.url, "--v1", "-d", '{"instances": [[6.7, 3.0, 5.2, 2.3]]}')
    assert json.loads(result.stdout) == {"predictions": [2]}
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                               "data": [5.1, 3.5, 1.4, 0.2]}], "outputs": [{"name": "predict_proba"}]}))
    result = shipyard("predict", "iris", "--url", server.url, "-d", f"@{request}")
    assert json.loads(result.stdout)["outputs"][0]["shape"] == [1, 3]


def test_predict_errors_are_clear(server, tmp_path):
    result = shipyard("predict", "iris", "--url", server.url, "-d", "[[1, 2")
    assert result.returncode == 1 and "not valid JSON" in result.stderr
    result = shipyard("predict", "iris", "--url", server.url, "-d", "[[1, 2, 3]]")
    assert result.returncode == 1 and "400" in result.stderr and "expected shape [-1, 4]" in result.stderr
    result = shipyard("predict", "nope", "--url", server.url, "-d", "[[1, 2, 3, 4]]")
    assert result.returncode == 1 and "404" in result.stderr
    result = shipyard("predict", "iris", "--url", server.url, "-d", '{"instances": [[1, 2, 3, 4]]}')
    assert result.returncode == 1 and "--v1" in result.stderr
    result = shipyard("predict", "iris", "--url", server.url, "-d", f"@{tmp_path / 'missing.json'}")
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_predict_without_a_server_says_how_to_start_one():
    result = shipyard("predict", "iris", "--url", "http://127.0.0.1:9", "-d", "[[1, 2, 3, 4]]")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr and "shipyard serve" in result.stderr


def test_sdk_infer_ready_metadata(server, iris):
    features, _ = iris
    with InferenceClient(server.url) as client:
        assert client.live() and client.ready() and client.ready("iris") and not client.ready("nope")
        assert client.metadata()["name"] == "shipyard"
        assert client.metadata("iris")["inputs"][0]["shape"] == [-1, 4]
        out = client.infer("iris", {"input-0": features[:3]}, outputs=["predict", "predict_proba"], request_id="r1")
        assert out["predict"].dtype == np.int64 and out["predict"].shape == (3,)
        assert out["predict_proba"].shape == (3, 3)
        assert client.predict_v1("iris", features[:2].tolist()) == [0, 0]
        with pytest.raises(InferenceServerError) as error:
            client.infer("iris", {"input-0": features[:1, :2]})
        assert error.value.status == 400 and "expected shape" in error.value.message
    with pytest.raises(ServerUnreachable, match="shipyard serve"):
        InferenceClient("http://127.0.0.1:9").metadata()
