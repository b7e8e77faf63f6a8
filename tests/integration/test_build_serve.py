"""A build context's entrypoint serves the copied package (docker is not here, so run the same command directly)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest

from conftest import CUSTOM_MODELS, write_custom_model
from shipyard.package.build import build_context

pytestmark = pytest.mark.integration


def instruction(dockerfile: Path, keyword: str) -> list[str]:
    """The JSON (exec form) arguments of an ENTRYPOINT or HEALTHCHECK ... CMD instruction."""
    text = dockerfile.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith(keyword))
    return json.loads(line[line.index("["):])


def serve_like_the_image(start_server, out: Path, env: dict[str, str] | None = None):
    """Start the image's ENTRYPOINT with the package path mapped into OUT and free loopback ports."""
    command = instruction(out / "Dockerfile", "ENTRYPOINT")
    assert command[:2] == ["shipyard", "serve"] and command[2].startswith("/models/")
    args = [str(out / command[2].lstrip("/")), *command[3:]]
    replace = {"--host": "127.0.0.1", "--http-port": "0", "--grpc-port": "0"}
    args = [replace.get(args[index - 1], arg) if index else arg for index, arg in enumerate(args)]
    return start_server(*args, env=env)


def healthcheck_passes(out: Path, url: str) -> bool:
    """Run the image's HEALTHCHECK command against the server's real port."""
    command = instruction(out / "Dockerfile", "HEALTHCHECK")  # HEALTHCHECK --... CMD ["python", "-c", ...]
    assert command[:2] == ["python", "-c"] and ":8080/" in command[2]
    script = command[2].replace(":8080/", f":{url.rsplit(':', 1)[1]}/")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30).returncode == 0


def test_the_built_sklearn_package_serves(tmp_path, artifacts, start_server, iris, monkeypatch):
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    package = tmp_path / "flowers"
    package.mkdir()
    (package / "model.joblib").write_bytes(artifacts["sk_logreg"].read_bytes())
    (package / "shipyard.yaml").write_text("name: flowers\nformat: sklearn\nartifact: model.joblib\n")
    out = tmp_path / "context"
    build_context(package, out)
    server = serve_like_the_image(start_server, out, env={"SHIPYARD_HOME": str(tmp_path / "home")})
    assert healthcheck_passes(out, server.url)
    rows = iris[0][:3]
    body = {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]}
    response = httpx.post(f"{server.url}/v2/models/flowers/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    expected = joblib.load(artifacts["sk_logreg"]).predict(rows)
    assert response.json()["outputs"][0]["data"] == expected.tolist()


def test_the_built_custom_package_with_weights_and_a_secret_serves(tmp_path, start_server):
    home = tmp_path / "home"
    scale = tmp_path / "scale.txt"
    scale.write_text("1.5")
    package = write_custom_model(tmp_path / "echo", CUSTOM_MODELS["echo"])
    (package / "shipyard.yaml").write_text(
        f"name: echo\nformat: python\nweights: [{{uri: '{scale.as_uri()}', path: data/scale.txt}}]\n"
        "secrets: [API_TOKEN]\n"
    )
    out = tmp_path / "context"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHIPYARD_HOME", str(home))
        build_context(package, out)
    assert (out / "models/echo/data/scale.txt").is_symlink()
    # The secret is given at run time, as `docker run -e API_TOKEN=...` does.
    server = serve_like_the_image(start_server, out, env={"SHIPYARD_HOME": str(home), "API_TOKEN": "t0ken"})
    data = np.array([1.0, 2.0, 4.0])
    body = {"inputs": [{"name": "input-0", "shape": [3], "datatype": "FP64", "data": data.tolist()}]}
    response = httpx.post(f"{server.url}/v2/models/echo/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
    assert outputs["doubled"] == (data * 2 * 1.5).tolist()  # the weight reached the model
