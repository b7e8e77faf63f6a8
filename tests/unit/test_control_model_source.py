"""InferenceService predictors -> ``shipyard serve`` arguments: both predictor forms, the flags, storageUri
over local paths, file://, http:// (archives unpacked, fetched once) and s3:// folders, and every error by field."""

from __future__ import annotations

import http.server
import io
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from shipyard.control.model_source import ModelSourceError, models_cache, serve_command


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def model_dir(tmp_path, artifacts) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(artifacts["sk_logreg"], folder / "model.joblib")
    return folder


@pytest.fixture
def web(tmp_path):
    """A real HTTP server serving tmp_path/www, counting GETs."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, hits
    server.shutdown()


def model(uri, name="sklearn", **fields):
    return {"model": {"modelFormat": {"name": name}, "storageUri": str(uri), **fields}}


def test_model_form_maps_every_predictor_field(model_dir):
    predictor = {**model(model_dir, protocolVersion="v2", runtime="kserve-sklearnserver",
                         env=[{"name": "OMP_NUM_THREADS", "value": 1}, {"name": "TOKEN", "valueFrom": {}}]),
                 "batcher": {"maxBatchSize": 32, "maxLatency": 5}, "containerConcurrency": 8, "timeout": 30,
                 "resources": {"limits": {"cpu": "1"}}}
    command = serve_command("sklearn-iris", predictor)
    assert command.argv == [str(model_dir), "--name", "sklearn-iris", "--max-batch-size", "32",
                            "--max-latency-ms", "5", "--max-queue", "8"]
    assert (command.protocol, command.timeout_s, command.format) == ("v2", 30.0, "sklearn")
    assert command.env == {"OMP_NUM_THREADS": "1", "OTEL_SERVICE_NAME": "sklearn-iris-predictor"}
    assert command.warnings == [
        "spec.predictor.model.runtime: 'kserve-sklearnserver' is ignored; Shipyard serves every format with its own runtime",
        "spec.predictor.model.env[1].valueFrom: not honoured locally; set 'value' instead",
    ]


def test_legacy_framework_field_and_file_uri(model_dir):
    command = serve_command("iris", {"sklearn": {"storageUri": model_dir.as_uri()}})
    assert command.argv == [str(model_dir), "--name", "iris"] and command.protocol == "v1"
    assert serve_command("iris", {"sklearn": {"storageUri": str(model_dir)}, "runtime": "shipyard"}).warnings == []


def test_custom_format_takes_a_package_or_a_model_py_folder(tmp_path, artifacts, model_dir):
    package = tmp_path / "pkg"
    package.mkdir()
    shutil.copy(artifacts["sk_logreg"], package / "model.joblib")
    (package / "shipyard.yaml").write_text("name: iris\nartifact: model.joblib\n")
    assert serve_command("iris", model(package, "custom")).format == "sklearn"
    assert serve_command("iris", model(package, "sklearn")).argv[0] == str(package)
    assert serve_command("echo", model(artifacts["echo"], "custom")).format == "python"
    with pytest.raises(ModelSourceError, match=r"^spec.predictor.model.modelFormat.name: 'custom' needs a Shipyard "
                       r"package \(shipyard.yaml\) or a folder with model.py, but .* is a sklearn model"):
        serve_command("iris", model(model_dir, "custom"))


@pytest.mark.parametrize("predictor, message", [
    ({"containers": [{"image": "x"}]}, "spec.predictor.containers: custom containers are not supported locally; "
     "use a Shipyard package: modelFormat custom + storageUri pointing at it"),
    ({"tensorflow": {"storageUri": "/m"}}, "spec.predictor.tensorflow: is not served by Shipyard"),
    ({}, "spec.predictor: needs 'model' (modelFormat + storageUri) or a framework field"),
    ({"model": {"storageUri": "/m"}}, "spec.predictor.model.modelFormat.name: is required"),
    (model("/m", "pmml"), "spec.predictor.model.modelFormat.name: 'pmml' is not served by Shipyard as a predictor; "
     "expected one of sklearn, xgboost, lightgbm, onnx, pytorch, huggingface, custom, detector"),
    ({"model": {"modelFormat": {"name": "sklearn"}}}, "spec.predictor.model.storageUri: is required"),
    (model("models/iris"), "spec.predictor.model.storageUri: 'models/iris' is relative; give an absolute path"),
    (model("/no/such/model"), "spec.predictor.model.storageUri: '/no/such/model' does not exist"),
    (model("/m", protocolVersion="v3"), "spec.predictor.model.protocolVersion: 'v3' is not one of v1, v2, grpc-v1"),
    (model("/m", storageUris=[{"uri": "/m"}]), "spec.predictor.model.storageUri: storageUris and storage are not"),
])
def test_errors_name_the_field(predictor, message):
    with pytest.raises(ModelSourceError) as caught:
        serve_command("iris", predictor)
    assert str(caught.value).startswith(message), str(caught.value)


def test_flag_values_are_checked(model_dir):
    with pytest.raises(ModelSourceError, match=r"^spec.predictor.batcher.maxBatchSize: expected an integer >= 1, got 0"):
        serve_command("iris", {**model(model_dir), "batcher": {"maxBatchSize": 0}})
    with pytest.raises(ModelSourceError, match=r"^spec.predictor.timeout: expected an integer >= 1, got 'soon'"):
        serve_command("iris", {**model(model_dir), "timeout": "soon"})


def test_declared_format_must_match_the_artifact(model_dir):
    with pytest.raises(ModelSourceError, match=r"^spec.predictor.model.modelFormat.name: says 'xgboost', but .*model "
                       r"is a sklearn model"):
        serve_command("iris", model(model_dir, "xgboost"))
    with pytest.raises(ModelSourceError, match=r"^spec.predictor.xgboost: says 'xgboost'"):
        serve_command("iris", {"xgboost": {"storageUri": str(model_dir)}})
    empty = model_dir.parent / "empty"
    empty.mkdir()
    with pytest.raises(ModelSourceError, match=r"^spec.predictor.model.storageUri: .*empty holds no model"):
        serve_command("iris", model(empty))


def test_http_archive_is_fetched_once_and_unpacked(web, artifacts):
    url, root, hits = web
    with tarfile.open(root / "model.tar.gz", "w:gz") as tar:
        tar.add(artifacts["sk_logreg"], arcname="iris/model.joblib")
    first = serve_command("iris", model(f"{url}/model.tar.gz"))
    path = Path(first.argv[0])
    assert path.parent.parent == models_cache() and path.name == "iris" and (path / "model.joblib").is_file()
    second = serve_command("iris", model(f"{url}/model.tar.gz"))
    assert second.argv == first.argv and hits == ["/model.tar.gz"]  # cached: one download
    assert not any(p.name.endswith(".part") for p in models_cache().iterdir())


def test_http_single_file_and_zip(web, artifacts):
    url, root, hits = web
    shutil.copy(artifacts["xgb_classifier"], root / "model.json")
    command = serve_command("iris", {"xgboost": {"storageUri": f"{url}/model.json"}})
    assert Path(command.argv[0]).name == "model.json" and command.format == "xgboost"
    with zipfile.ZipFile(root / "model.zip", "w") as zipped:
        zipped.write(artifacts["sk_logreg"], "model.joblib")
    assert Path(serve_command("iris", model(f"{url}/model.zip")).argv[0]).name == "model.joblib"


def test_unsafe_archive_and_missing_url_change_nothing(web):
    url, root, _ = web
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("../../escape.joblib", b"x")
    (root / "evil.zip").write_bytes(buffer.getvalue())
    with pytest.raises(ModelSourceError, match=r"evil.zip: member '../../escape.joblib' would unpack outside its folder"):
        serve_command("iris", model(f"{url}/evil.zip"))
    with pytest.raises(ModelSourceError, match=r"^spec.predictor.model.storageUri: cannot fetch .*/absent.joblib: HTTP 404"):
        serve_command("iris", model(f"{url}/absent.joblib"))
    assert not models_cache().exists() or list(models_cache().iterdir()) == []


def test_s3_folder_through_fsspec(s3, artifacts):
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="sklearn/iris/model.joblib", Body=artifacts["sk_logreg"].read_bytes())
    command = serve_command("iris", model("s3://models/sklearn/iris"))
    path = Path(command.argv[0])
    assert path.name == "model.joblib" and path.read_bytes() == artifacts["sk_logreg"].read_bytes()
    with pytest.raises(ModelSourceError, match=r"s3://models/nothing does not exist"):
        serve_command("iris", model("s3://models/nothing"))
