"""Package weights (fetched once over file:// and http://, checked, cached, linked) and secrets."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading

import pytest

from shipyard.package.config import PackageError, Weight
from shipyard.package.secrets import resolve_secrets
from shipyard.package.weights import materialise

BLOB = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def web(tmp_path):
    """A real HTTP server on a free port serving tmp_path/www and counting GETs."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "model.bin").write_bytes(BLOB)
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
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


def test_http_weight_is_fetched_once_verified_and_linked(tmp_path, web):
    url, hits = web
    package = tmp_path / "pkg"
    package.mkdir()
    weight = Weight(uri=f"{url}/model.bin", sha256=SHA)
    [link] = materialise(package, [weight])
    assert link == package / "data" / "model.bin" and link.is_symlink()
    assert link.read_bytes() == BLOB
    other = tmp_path / "other"
    other.mkdir()
    materialise(other, [Weight(uri=f"{url}/model.bin", sha256=SHA, path="w/m.bin")])
    materialise(package, [weight])
    assert hits == ["/model.bin"], "the cached file is shared by every package naming its sha256"
    assert (other / "w" / "m.bin").read_bytes() == BLOB


def test_wrong_sha256_fails_and_caches_nothing(tmp_path, web, home):
    url, _ = web
    wrong = "0" * 64
    with pytest.raises(PackageError, match=f"has sha256 {SHA}, but the package expects {wrong}"):
        materialise(tmp_path, [Weight(uri=f"{url}/model.bin", sha256=wrong)])
    assert not any(p.is_file() for p in (home / "cache").rglob("*"))
    assert not (tmp_path / "data" / "model.bin").exists()


def test_file_uri_and_errors(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"weights")
    package = tmp_path / "pkg"
    [link] = materialise(package, [Weight(uri=source.as_uri(), path="data/w.bin")])
    assert link.read_bytes() == b"weights"
    with pytest.raises(PackageError, match=r"weights\[0\]: cannot fetch .*missing.bin"):
        materialise(package, [Weight(uri=(tmp_path / "missing.bin").as_uri())])
    (package / "data" / "taken.bin").write_bytes(b"mine")
    with pytest.raises(PackageError, match="already exists and is not the fetched file"):
        materialise(package, [Weight(uri=source.as_uri(), path="data/taken.bin")])
    with pytest.raises(PackageError, match="stay inside the package"):
        materialise(package, [Weight(uri=source.as_uri(), path="../outside.bin")])


def test_unsupported_scheme_names_the_package_to_install(tmp_path):
    with pytest.raises(PackageError, match="nosuch://bucket/x.bin"):
        materialise(tmp_path, [Weight(uri="nosuch://bucket/x.bin")])


def test_secrets_from_environment_or_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("API_TOKEN", "from-env")
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "DB_PASSWORD").write_text("from-file\n")
    monkeypatch.setenv("SHIPYARD_SECRETS_DIR", str(folder))
    secrets = resolve_secrets(["API_TOKEN", "DB_PASSWORD"])
    assert dict(secrets) == {"API_TOKEN": "from-env", "DB_PASSWORD": "from-file"}
    assert "from-env" not in repr(secrets) and "from-file" not in repr(secrets)
    with pytest.raises(KeyError, match="secret 'OTHER' is not declared"):
        secrets["OTHER"]
    with pytest.raises(PackageError, match=r"secret 'MISSING' is not set: export MISSING=\.\.\."):
        resolve_secrets(["MISSING"])


def test_s3_weight_through_fsspec(tmp_path, s3):
    """s3:// goes through fsspec + s3fs, here against moto's S3 server on a real socket."""
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="iris/model.bin", Body=BLOB)
    [link] = materialise(tmp_path, [Weight(uri="s3://models/iris/model.bin", sha256=SHA)])
    assert link.read_bytes() == BLOB


def test_artifact_that_is_a_weight_is_fetched_before_the_format_is_told(tmp_path, artifacts):
    from shipyard.package.source import model_source

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "shipyard.yaml").write_text(
        f"name: iris\nartifact: data/model.joblib\nweights:\n  - {{uri: '{artifacts['sk_logreg'].as_uri()}', path: data/model.joblib}}\n"
    )
    source, _ = model_source(package)
    assert source.format == "sklearn" and source.path == package / "data" / "model.joblib"
    assert source.path.is_symlink()
