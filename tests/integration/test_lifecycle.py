"""Starting, readiness while loading, draining on SIGTERM/SIGINT, and startup failures."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from serverproc import ServerProcess

BODY = {"inputs": [{"name": "input-0", "shape": [1], "datatype": "FP32", "data": [1.0]}]}


def test_model_still_loading_is_503_then_ready(start_server, artifacts):
    server = start_server(artifacts["slowload"], ready=False)
    url = server.wait_listening()
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    ready = httpx.get(f"{url}/v2/health/ready")
    assert ready.status_code == 503 and "slowload" in ready.json()["error"]
    model_ready = httpx.get(f"{url}/v2/models/slowload/ready")
    assert model_ready.status_code == 503 and "still loading" in model_ready.json()["error"]
    infer = httpx.post(f"{url}/v2/models/slowload/infer", json=BODY)
    assert infer.status_code == 503 and "not ready" in infer.json()["error"]
    server.wait_ready()
    assert httpx.post(f"{url}/v2/models/slowload/infer", json=BODY).status_code == 200


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_requests_then_exits_0(start_server, artifacts, signum):
    server = start_server(artifacts["slow"])
    results = {}

    def call():
        body = {**BODY, "parameters": {"seconds": 1.5}}
        results["response"] = httpx.post(f"{server.url}/v2/models/slow/infer", json=body, timeout=30)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)
    server.process.send_signal(signum)
    thread.join(30)
    assert results["response"].status_code == 200
    assert results["response"].json()["outputs"][0]["data"] == [1.0]
    assert server.wait_exit(30) == 0
    assert "Stopped." in server.output
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/v2/health/live", timeout=2)


def run_serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shipyard", "serve", *args, "--http-port", "0"],
                          capture_output=True, text=True, timeout=timeout)


def test_missing_path_is_a_clear_error(tmp_path):
    result = run_serve(str(tmp_path / "nothing.joblib"))
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "nothing.joblib" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_format_guess_is_impossible_to_miss(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model\n")
    result = run_serve(str(text))
    assert result.returncode == 1 and "not a LightGBM text model" in result.stderr
    garbage = tmp_path / "model.joblib"
    garbage.write_bytes(b"\x00\x01garbage")
    result = run_serve(str(garbage))
    assert result.returncode == 1
    assert "not a readable pickle or joblib file" in result.stderr and "Traceback" not in result.stderr
    json_file = tmp_path / "config.json"
    json_file.write_text('{"a": 1}')
    result = run_serve(str(json_file))
    assert result.returncode == 1 and "not an XGBoost model" in result.stderr
    unknown = tmp_path / "weights.bin"
    unknown.write_bytes(b"\x13\x37")
    result = run_serve(str(unknown))
    assert result.returncode == 1 and "cannot tell the model format" in result.stderr


def test_pickle_without_predict_fails_to_load_with_reason(tmp_path):
    import joblib

    joblib.dump({"weights": [1, 2, 3]}, tmp_path / "dict.joblib")
    result = run_serve(str(tmp_path / "dict.joblib"))
    assert result.returncode == 1
    assert "failed to load" in result.stderr and "dict" in result.stderr and "predict()" in result.stderr


def test_port_in_use_is_a_clear_error(artifacts):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "shipyard", "serve", str(artifacts["sk_logreg"]), "--http-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "--http-port" in result.stderr


def test_bad_cli_arguments(artifacts):
    result = run_serve(str(artifacts["sk_logreg"]), "--name", "a", "--name", "b")
    assert result.returncode == 1 and "--name" in result.stderr
    result = run_serve(str(artifacts["sk_logreg"]), "--name", "bad name!")
    assert result.returncode == 1 and "not allowed" in result.stderr
    result = run_serve(str(artifacts["sk_logreg"]), str(artifacts["sk_logreg"]))
    assert result.returncode == 1 and "name them apart" in result.stderr
    result = run_serve(str(artifacts["sk_logreg"]), "--max-request-size", "lots")
    assert result.returncode == 2 and "64MiB" in result.stderr


def test_several_models_and_names(start_server, artifacts):
    server = start_server(artifacts["sk_logreg"], artifacts["lgb_booster"], "--name", "iris", "--name", "gbm")
    assert httpx.get(f"{server.url}/v1/models").json() == {"models": ["iris", "gbm"]}
    assert "model 'iris' (sklearn, version 1) ready" in server.output
    assert f"{server.url}/v2/models/gbm/infer" in server.output
