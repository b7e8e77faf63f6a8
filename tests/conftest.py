"""Shared fixtures: real model artifacts written to a temporary directory, and server processes."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from serverproc import ServerProcess

# A suite started in the background by a shell without job control inherits SIGINT ignored, and so
# would every process it starts (an ignored signal stays ignored across exec): the tests that stop
# `shipyard logs -f` with Ctrl+C (SIGINT) would then wait forever. Children of a process with a
# handler start with the default disposition, as they would from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

CUSTOM_MODELS = {
    "echo": '''
        import numpy as np

        class Model:
            def __init__(self, config=None, data_dir=None, name=None):
                self.config = config
                self.data_dir = data_dir
                self.name = name

            def load(self):
                self.scale = float((self.data_dir / "scale.txt").read_text()) if (self.data_dir / "scale.txt").exists() else 1.0

            def preprocess(self, inputs):
                return {k: np.asarray(v) for k, v in inputs.items()}

            def predict(self, inputs, parameters):
                x = inputs["input-0"]
                out = {"doubled": x * 2 * self.scale}
                if parameters.get("echo_parameters"):
                    out["parameters"] = np.array([str(sorted(parameters.items()))], dtype=object)
                return out

            def postprocess(self, outputs):
                outputs["name"] = np.array([self.name], dtype=object)
                return outputs
    ''',
    "asyncecho": '''
        import asyncio
        import numpy as np

        class Model:
            def load(self):
                pass

            async def predict(self, inputs):
                await asyncio.sleep(0)
                return inputs["input-0"] + 1
    ''',
    "slow": '''
        import time

        class Model:
            def load(self):
                pass

            def predict(self, inputs, parameters):
                time.sleep(float(parameters.get("seconds", 1.5)))
                return inputs["input-0"]
    ''',
    "broken": '''
        class Model:
            def load(self):
                pass

            def predict(self, inputs):
                raise ZeroDivisionError("the model divided by zero")
    ''',
    "slowload": '''
        import time

        class Model:
            def load(self):
                time.sleep(4)

            def predict(self, inputs):
                return inputs["input-0"]
    ''',
    "typed": '''
        import numpy as np

        class Model:
            inputs = [{"name": "a", "datatype": "FP32", "shape": [-1, 2]},
                      {"name": "b", "datatype": "BYTES", "shape": [-1]}]
            outputs = [{"name": "sum", "datatype": "FP32", "shape": [-1]},
                       {"name": "upper", "datatype": "BYTES", "shape": [-1]}]

            def load(self):
                pass

            def predict(self, inputs):
                return {"sum": inputs["a"].sum(axis=1),
                        "upper": np.array([b.upper() for b in inputs["b"]], dtype=object)}
    ''',
}


def write_custom_model(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(textwrap.dedent(source))
    return folder


@pytest.fixture(scope="session")
def iris():
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory, iris) -> dict[str, Path]:
    """One artifact per runtime and artifact kind, trained on iris."""
    import joblib
    import lightgbm as lgb
    import numpy as np
    import xgboost as xgb
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = iris
    root = tmp_path_factory.mktemp("artifacts")
    paths: dict[str, Path] = {}

    paths["sk_logreg"] = root / "sk_logreg.joblib"
    joblib.dump(LogisticRegression(max_iter=1000).fit(features, labels), paths["sk_logreg"])
    paths["sk_pipeline"] = root / "sk_pipeline.pkl"
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, labels),
                paths["sk_pipeline"])
    paths["sk_linreg"] = root / "sk_linreg.pickle"
    joblib.dump(LinearRegression().fit(features[:, :3], features[:, 3]), paths["sk_linreg"])
    names = np.array(["setosa", "versicolor", "virginica"])[labels]
    paths["sk_strings"] = root / "sk_strings.joblib"
    joblib.dump(LogisticRegression(max_iter=1000).fit(features, names), paths["sk_strings"])

    paths["xgb_classifier"] = root / "xgb_classifier.json"
    xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(features, labels).save_model(paths["xgb_classifier"])
    paths["xgb_booster"] = root / "xgb_booster.ubj"
    xgb.train({"objective": "multi:softprob", "num_class": 3}, xgb.DMatrix(features, label=labels), 5).save_model(
        paths["xgb_booster"])
    paths["xgb_regressor_pkl"] = root / "xgb_regressor_pkl.joblib"
    joblib.dump(xgb.XGBRegressor(n_estimators=5).fit(features[:, :3], features[:, 3]), paths["xgb_regressor_pkl"])

    paths["lgb_booster"] = root / "lgb_booster.txt"
    lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1}, lgb.Dataset(features, labels),
              5).save_model(paths["lgb_booster"])
    paths["lgb_classifier_pkl"] = root / "lgb_classifier_pkl.joblib"
    joblib.dump(lgb.LGBMClassifier(n_estimators=5, verbose=-1).fit(features, labels), paths["lgb_classifier_pkl"])

    for name, source in CUSTOM_MODELS.items():
        paths[name] = write_custom_model(root / name, source)
    (paths["echo"] / "data").mkdir()
    (paths["echo"] / "data" / "scale.txt").write_text("1.5")
    return paths


@pytest.fixture
def start_server() -> Iterator:
    """Factory: ``start_server(*args)`` starts ``shipyard serve`` and stops it after the test."""
    servers: list[ServerProcess] = []

    def start(*args, ready: bool = True, env=None) -> ServerProcess:
        server = ServerProcess(*args, env=env)
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    """A boto3 client of moto's S3 server on a real socket, with the AWS environment pointing at it
    (so fsspec + s3fs in the code under test reach it too)."""
    pytest.importorskip("s3fs", reason="s3:// needs s3fs (pip install s3fs)")
    moto_server = pytest.importorskip("moto.server", reason="the S3 test server needs moto[server]")
    import boto3

    import s3fs

    # fsspec caches filesystems by their arguments, not by the AWS environment: an S3FileSystem made in
    # an earlier test would still talk to that test's (stopped) server.
    s3fs.S3FileSystem.clear_instance_cache()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                           "AWS_ENDPOINT_URL_S3": endpoint}.items():
            monkeypatch.setenv(key, value)
        yield boto3.client("s3", endpoint_url=endpoint)
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
