"""IsolatedModel and its worker process, with the test venv's own python as the "environment".

No environment is built here (that needs PyPI: tests/integration/test_isolated.py); these tests
exercise the real worker process and pipes: load, signatures, predicts of every kind of tensor,
errors keeping their HTTP status, a model that prints, a worker that dies, unload.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from shipyard.protocol.errors import InvalidInput, ModelFailed
from shipyard.runtimes import create_model
from shipyard.runtimes.base import ModelSource
from shipyard.runtimes.isolated import Isolation, IsolatedModel, IsolatedModelError, portable_options

MODEL = '''
    import os
    import sys
    import numpy as np

    print("printed while importing")  # must not corrupt the protocol

    class Model:
        inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]

        def __init__(self, config=None, name=None):
            self.config = config

        def load(self):
            print("printed while loading")

        def predict(self, inputs, parameters):
            print("printed while predicting")
            if parameters.get("die"):
                sys.stderr.write("about to exit\\n")
                sys.stderr.flush()
                os._exit(3)
            if parameters.get("divide"):
                return 1 / 0
            x = inputs["x"]
            return {
                "doubled": x * 2,
                "pid": np.array([os.getpid()]),
                "label": np.array([self.config.get("label", ""), "é"], dtype=object),
                "raw": np.array([b"\\x00\\xff"], dtype=object),
                "flag": np.array([True]),
                "variable": np.array([os.environ.get("SHIPYARD_TEST_VARIABLE", "")], dtype=object),
                "pythonpath": np.array([os.environ.get("PYTHONPATH", "")], dtype=object),
                "cwd": np.array([os.getcwd()], dtype=object),
            }
'''


def source_for(folder: Path, fmt: str = "python", path: Path | None = None, **options) -> ModelSource:
    isolation = Isolation(
        reason="testing",
        environment=lambda: Path(sys.executable),
        variables={"SHIPYARD_TEST_VARIABLE": "set"},
        workdir=folder,
    )
    return ModelSource("iso", fmt, path or folder, options={"isolation": isolation, **options})


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL))
    return tmp_path


@pytest.fixture
def model(folder: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PYTHONPATH", "/server/only/path")
    loaded = create_model(source_for(folder, config={"label": "from-config"}, package=object()))
    assert isinstance(loaded, IsolatedModel)
    loaded.load()
    yield loaded
    loaded.unload()


def infer(model, x, outputs=None, **parameters):
    return asyncio.run(model.infer({"x": np.asarray(x, dtype=np.float32)}, outputs, parameters))


def test_predicts_in_another_process_with_every_kind_of_output(model, folder):
    out = infer(model, [[1, 2], [3, 4]])
    assert out["doubled"].tolist() == [[2, 4], [6, 8]] and out["doubled"].dtype == np.float32
    assert out["pid"][0] == model.worker_pid != os.getpid()
    assert out["label"].tolist() == ["from-config", "é"]
    assert out["raw"].tolist() == [b"\x00\xff"] and out["flag"].tolist() == [True]
    assert out["variable"].tolist() == ["set"], "the package's environment variables reach the worker"
    assert out["pythonpath"].tolist() == [""], "the server's PYTHONPATH does not"
    assert out["cwd"].tolist() == [str(folder)]


def test_signature_and_platform_come_from_the_worker(model):
    assert [spec.to_dict() for spec in model.inputs] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    assert model.platform == "python" and model.format == "python"
    assert not model.in_process and not model.fork_safe and not model.inline_when_fast


def test_inputs_are_checked_before_the_hop(model):
    with pytest.raises(InvalidInput, match=r"expected shape \[-1, 2\]"):
        infer(model, [1, 2, 3])


def test_model_errors_stay_500_and_request_errors_stay_400(model):
    with pytest.raises(ModelFailed, match="model 'iso' raised ZeroDivisionError: division by zero"):
        infer(model, [[1, 2]], divide=True)
    with pytest.raises(InvalidInput, match="produced no output 'nope'"):  # raised in the worker
        infer(model, [[1, 2]], outputs=["nope"])
    assert infer(model, [[1, 2]], outputs=["flag"]) == {"flag": np.array([True])}
    assert model.restarts == 0


def test_a_worker_dying_mid_request_is_reported_then_replaced(model, caplog):
    first = model.worker_pid
    with pytest.raises(ModelFailed, match=r"failed while predicting .*exit code 3; it said: .*about to exit"
                                          r".*the next request starts a new one"):
        infer(model, [[1, 2]], die=True)
    out = infer(model, [[1, 2]])
    assert model.restarts == 1 and out["pid"][0] == model.worker_pid != first


def test_a_killed_worker_is_replaced_by_the_next_request(model, caplog):
    first = model.worker_pid
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while model._worker.alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert infer(model, [[5, 6]])["doubled"].tolist() == [[10, 12]]
    assert model.restarts == 1 and model.worker_pid != first
    assert "killed by SIGKILL" in caplog.text


def test_what_the_model_prints_is_logged_with_its_name(model, caplog):
    caplog.set_level(logging.INFO, logger="shipyard.runtimes.isolated")
    infer(model, [[1, 2]])
    deadline = time.monotonic() + 5
    while "printed while predicting" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "isolated worker of model 'iso': printed while predicting" in caplog.text


def test_unload_stops_the_worker(model):
    process = model._worker.process
    model.unload()
    assert process.poll() == 0, "the worker exits at end of input"
    with pytest.raises(ModelFailed, match="unloaded"):
        infer(model, [[1, 2]])


def test_a_model_that_fails_to_load_says_why(tmp_path):
    (tmp_path / "model.py").write_text("import shipyard_no_such_module\n")
    model = IsolatedModel(source_for(tmp_path))
    with pytest.raises(IsolatedModelError, match="ModuleNotFoundError: No module named 'shipyard_no_such_module'"):
        model.load()
    assert not model._worker.alive()


def test_a_worker_that_cannot_start_is_reported_with_its_stderr(tmp_path):
    """An environment without Shipyard's link: the worker module cannot even be imported."""
    base_python = Path(getattr(sys, "_base_executable", "") or Path(sys.base_prefix) / "bin" / "python3")
    isolation = Isolation("testing", environment=lambda: base_python, workdir=tmp_path)
    model = IsolatedModel(ModelSource("iso", "python", tmp_path, options={"isolation": isolation}))
    with pytest.raises(IsolatedModelError, match=r"failed while loading it .*exit code 1; it said: .*"
                                                 r"No module named 'shipyard'"):
        model.load()


def test_an_estimator_works_isolated_and_keeps_its_rules(artifacts, iris):
    """A built-in format: its predict_proba parameter is decided in the worker."""
    features, _ = iris
    model = IsolatedModel(source_for(artifacts["sk_logreg"].parent, "sklearn", artifacts["sk_logreg"]))
    assert model.batchable, "batchable like the runtime it wraps"
    model.load()
    try:
        rows = features[:3].astype(np.float64)
        labels = asyncio.run(model.infer({"input-0": rows}, None, {}))
        probabilities = asyncio.run(model.infer({"input-0": rows}, None, {"predict_proba": True}))
    finally:
        model.unload()
    assert list(labels) == ["predict"] and labels["predict"].tolist() == [0, 0, 0]
    assert list(probabilities) == ["predict_proba"] and probabilities["predict_proba"].shape == (3, 3)


def test_only_json_data_options_cross_to_the_worker():
    options = {"config": {"when": __import__("datetime").date(2024, 1, 2)}, "concurrency": 2, "package": object(),
               "package_dir": Path("/x"), "isolation": object(), "other": object(), "secrets": {"TOKEN": "v"}}
    assert portable_options(options) == {"config": {"when": "2024-01-02"}, "concurrency": 2, "secrets": {"TOKEN": "v"}}


def test_a_source_without_an_isolation_is_refused(tmp_path):
    with pytest.raises(TypeError, match="must be an Isolation"):
        IsolatedModel(ModelSource("iso", "python", tmp_path, options={"isolation": "yes"}))
