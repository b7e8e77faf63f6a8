"""The model repository: --model-repository, --load-on-request, and load/unload over REST."""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import pytest

ROW = [5.1, 3.5, 1.4, 0.2]
BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}


@pytest.fixture
def repository(tmp_path, artifacts):
    """iris (file), gbm (KServe folder), custom (model.py), versioned (Triton layout 1/ and 3/), broken pickle."""
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(artifacts["sk_logreg"], root / "iris.joblib")
    (root / "gbm").mkdir()
    shutil.copy(artifacts["lgb_booster"], root / "gbm" / "model.txt")
    shutil.copytree(artifacts["asyncecho"], root / "custom")
    for version in ("1", "3"):
        (root / "versioned" / version).mkdir(parents=True)
        shutil.copy(artifacts["sk_logreg"], root / "versioned" / version / "model.joblib")
    (root / "README.md").write_text("not a model")
    return root


def index(url, **body):
    response = httpx.post(f"{url}/v2/repository/index", json=body or None)
    assert response.status_code == 200, response.text
    return {row["name"]: row for row in response.json()}


def test_repository_serves_every_model(start_server, repository):
    server = start_server("--model-repository", repository)
    rows = index(server.url)
    assert set(rows) == {"iris", "gbm", "custom", "versioned"}
    assert all(row["state"] == "READY" for row in rows.values())
    assert rows["versioned"]["version"] == "3"  # the highest Triton version folder
    assert httpx.post(f"{server.url}/v2/models/versioned/versions/3/infer", json=BODY).status_code == 200
    assert httpx.post(f"{server.url}/v2/models/versioned/versions/1/infer", json=BODY).status_code == 404
    assert httpx.post(f"{server.url}/v2/models/gbm/infer", json=BODY).json()["outputs"][0]["shape"] == [1, 3]


def test_unload_then_load(start_server, repository):
    server = start_server("--model-repository", repository)
    url = server.url
    assert httpx.post(f"{url}/v2/repository/models/iris/unload").json() == {"name": "iris", "unload": True}
    assert index(url)["iris"] == {"name": "iris", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
    assert "iris" not in index(url, ready=True)
    refused = httpx.post(f"{url}/v2/models/iris/infer", json=BODY)
    assert refused.status_code == 503 and "unloaded" in refused.json()["error"]
    assert httpx.get(f"{url}/v2/models/iris/ready").status_code == 503
    assert httpx.post(f"{url}/v2/repository/models/iris/load").json() == {"name": "iris", "load": True}
    assert httpx.post(f"{url}/v2/models/iris/infer", json=BODY).status_code == 200


def test_load_on_request_starts_empty_and_loads_by_name(start_server, repository):
    server = start_server("--model-repository", repository, "--load-on-request")
    url = server.url
    assert index(url) == {}
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert httpx.post(f"{url}/v2/repository/models/iris/load").status_code == 200
    assert httpx.post(f"{url}/v2/models/iris/infer", json=BODY).status_code == 200
    assert set(index(url)) == {"iris"}
    missing = httpx.post(f"{url}/v2/repository/models/nothing/load")
    assert missing.status_code == 404 and str(repository) in missing.json()["error"]


def test_failed_reload_keeps_the_old_model_serving(start_server, repository):
    server = start_server("--model-repository", repository)
    (repository / "iris.joblib").write_bytes(b"\x80broken")
    failed = httpx.post(f"{server.url}/v2/repository/models/iris/load")
    assert failed.status_code == 400 and "failed to load model 'iris'" in failed.json()["error"]
    assert httpx.post(f"{server.url}/v2/models/iris/infer", json=BODY).status_code == 200
    assert index(server.url)["iris"]["state"] == "READY"


def test_load_with_files_and_config(start_server, artifacts, repository):
    server = start_server(artifacts["sk_logreg"], "--name", "iris")
    content = base64.b64encode(artifacts["sk_logreg"].read_bytes()).decode()
    parameters = {"file:model.joblib": content, "config": json.dumps({"predict_proba": True})}
    loaded = httpx.post(f"{server.url}/v2/repository/models/flowers/load", json={"parameters": parameters})
    assert loaded.status_code == 200, loaded.text
    answer = httpx.post(f"{server.url}/v2/models/flowers/infer", json=BODY).json()
    assert [o["name"] for o in answer["outputs"]] == ["predict_proba"]
    bad = httpx.post(f"{server.url}/v2/repository/models/x/load", json={"parameters": {"file:m.joblib": "%%%"}})
    assert bad.status_code == 400 and "base64" in bad.json()["error"]
    escape = httpx.post(f"{server.url}/v2/repository/models/x/load",
                        json={"parameters": {"file:../../etc/evil.joblib": content}})
    assert escape.status_code == 400 and "outside" in escape.json()["error"]
    assert httpx.post(f"{server.url}/v2/repository/index", content=b"[1]").status_code == 400
    assert httpx.post(f"{server.url}/v2/repository/models/iris/unload").status_code == 200
    assert httpx.post(f"{server.url}/v2/repository/models/nope/unload").status_code == 404


def test_bad_repository_arguments(tmp_path):
    import subprocess
    import sys

    def serve(*args):
        return subprocess.run([sys.executable, "-m", "shipyard", "serve", *args, "--http-port", "0", "--grpc-port",
                               "0"], capture_output=True, text=True, timeout=60)

    result = serve("--model-repository", str(tmp_path / "missing"))
    assert result.returncode == 1 and "is not a directory" in result.stderr
    result = serve("--load-on-request")
    assert result.returncode == 2 and "--model-repository" in result.stderr
    result = serve()
    assert result.returncode == 2 and "MODEL" in result.stderr
