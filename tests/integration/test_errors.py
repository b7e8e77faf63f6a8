"""Every error path returns its status with {"error": ...}, and the server keeps serving."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time

import httpx
import pytest

from serverproc import ServerProcess

ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def server(artifacts):
    process = ServerProcess(artifacts["sk_logreg"], artifacts["broken"], artifacts["slow"],
                            "--name", "iris", "--max-request-size", "2KiB")
    try:
        process.wait_listening()
        _wait_model(process.url, "iris")
        yield process
    finally:
        process.stop()


def _wait_model(url: str, name: str) -> None:
    for _ in range(600):
        if httpx.get(f"{url}/v2/models/{name}/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"model {name} never became ready")


def infer_body(datatype="FP32", shape=(1, 4), data=ROW, name="input-0") -> dict:
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": data}]}


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"], body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]


@pytest.fixture(autouse=True)
def still_serving(server):
    """After every error test, the server still answers a good request."""
    yield
    good = httpx.post(f"{server.url}/v2/models/iris/infer", json=infer_body(), timeout=10)
    assert good.status_code == 200, good.text
    assert server.process.poll() is None


def post(server, path, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=30, **kwargs)


@pytest.mark.parametrize(
    "content, fragments",
    [
        (b"{not json", ["malformed JSON"]),
        (b"", ["empty"]),
        (b'{"inputs": "x"}', ["$.inputs"]),
        (b'[1, 2]', ["Expected `object`"]),
    ],
)
def test_malformed_bodies_are_400(server, content, fragments):
    assert_error(post(server, "/v2/models/iris/infer", content=content), 400, *fragments)


@pytest.mark.parametrize(
    "body, fragments",
    [
        (infer_body(datatype="BYTES", data=["a", "b", "c", "d"]), ["input-0", "expected FP64", "BYTES"]),
        (infer_body(datatype="FP32", data=["a", "b", "c", "d"]), ["input-0", "FP32", "numbers"]),
        (infer_body(shape=(1, 3), data=ROW[:3]), ["input-0", "expected shape [-1, 4]", "[1, 3]"]),
        (infer_body(shape=(2, 4)), ["input-0", "needs 8 elements", "has 4"]),
        (infer_body(shape=(4,)), ["for one row send shape [1, 4]"]),
        (infer_body(datatype="FP16"), ["FP16", "binary"]),
        (infer_body(datatype="FP8"), ["unknown datatype 'FP8'"]),
        ({"inputs": []}, ["missing input 'input-0'"]),
        ({"inputs": [infer_body()["inputs"][0], infer_body(name="extra")["inputs"][0]]}, ["unknown input 'extra'"]),
        ({**infer_body(), "outputs": [{"name": "logits"}]}, ["unknown output 'logits'", "predict_proba"]),
    ],
)
def test_bad_inputs_are_400_and_name_the_problem(server, body, fragments):
    assert_error(post(server, "/v2/models/iris/infer", json=body), 400, *fragments)


def test_bad_v1_bodies_are_400(server):
    assert_error(post(server, "/v1/models/iris:predict", json={"rows": [ROW]}), 400, "instances")
    assert_error(post(server, "/v1/models/iris:predict", json={"instances": "x"}), 400, "must be a list")
    assert_error(post(server, "/v1/models/iris:predict", json={"instances": [ROW[:3]]}), 400, "shape")
    assert_error(post(server, "/v1/models/iris:predict", json={"instances": [{"a": 1}]}), 400, "input-0")


def test_unknown_model_version_and_route_are_404(server):
    assert_error(post(server, "/v2/models/nope/infer", json=infer_body()), 404, "model 'nope' not found", "iris")
    assert_error(post(server, "/v2/models/iris/versions/7/infer", json=infer_body()), 404, "no version '7'")
    assert_error(httpx.get(f"{server.url}/v2/models/nope"), 404, "nope")
    assert_error(post(server, "/v1/models/nope:predict", json={"instances": [ROW]}), 404, "nope")
    assert_error(httpx.get(f"{server.url}/v3/everything"), 404, "no route")


def test_wrong_method_is_405(server):
    assert_error(httpx.get(f"{server.url}/v2/models/iris/infer"), 405, "use POST")
    assert_error(httpx.delete(f"{server.url}/v2/health/live"), 405, "use GET")


def test_body_over_limit_is_413(server):
    big = infer_body(shape=(200, 4), data=[ROW] * 200)
    assert_error(post(server, "/v2/models/iris/infer", json=big), 413, "limit of 2048 bytes", "--max-request-size")


def test_chunked_body_over_limit_is_413(server):
    def chunks():
        for _ in range(10):
            yield b" " * 1000

    response = post(server, "/v2/models/iris/infer", content=chunks())
    assert_error(response, 413, "limit")


def test_model_that_raises_is_500_with_exception_type(server):
    response = post(server, "/v2/models/broken/infer", json=infer_body())
    assert_error(response, 500, "ZeroDivisionError", "the model divided by zero", "broken")


def raw_exchange(url: str, payload: bytes, read_until: bytes = b"", timeout: float = 10) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
            if read_until and data.count(read_until) >= 1 and data.endswith(b"}"):
                break
        return data


def test_malformed_http_is_400(server):
    answer = raw_exchange(server.url, b"THIS IS NOT HTTP\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b'"error"' in answer


def test_pipelined_requests_are_answered_in_order(server):
    get = lambda path: f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()  # noqa: E731
    payload = get("/v2/models/iris") + get("/v2/models/nope") + get("/v2/health/live") + \
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(server.url, payload)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"404", b"200", b"200"], answer


def test_chunked_request_body_and_expect_continue(server):
    body = b'{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:20], body[20:])) + b"0\r\n\r\n"
    payload = (b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n" + chunked)
    answer = raw_exchange(server.url, payload)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b'"predict"' in answer
    # curl sends Expect: 100-continue for bodies over 1 KiB; the server must answer it.
    curl = subprocess.run(
        ["curl", "-s", "-H", "Expect: 100-continue", "-X", "POST", f"{server.url}/v2/models/iris/infer",
         "--data-binary", body.decode() + " " * 1500, "-w", "\n%{http_code}"],
        capture_output=True, text=True, timeout=30,
    )
    assert curl.stdout.rstrip().endswith("200"), curl.stdout + curl.stderr


def test_health_answers_while_a_slow_predict_runs(server):
    _wait_model(server.url, "slow")
    result = {}

    def slow_call():
        body = {**infer_body(), "parameters": {"seconds": 2.0}}
        result["response"] = post(server, "/v2/models/slow/infer", json=body)

    thread = threading.Thread(target=slow_call)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    for _ in range(5):
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
        assert httpx.post(f"{server.url}/v2/models/iris/infer", json=infer_body(), timeout=5).status_code == 200
    health_seconds = time.monotonic() - started
    assert thread.is_alive(), "the slow predict should still be running"
    thread.join()
    assert result["response"].status_code == 200
    assert health_seconds < 1.5  # ten quick requests finished well inside the 2 s predict
