"""``shipyard batch`` as a real process: formats, bad options, a run killed half-way and resumed, bad rows,
and endpoint runs against ``shipyard serve`` and a deployed InferenceService."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from batchdata import (
    FEATURES,
    RAISING_MODEL,
    SLOW_MODEL,
    make_frame,
    manifest_chunks,
    read_errors,
    read_table,
    train_classifier,
    write_model_py,
    write_table,
)
from planeproc import PlaneProcess, isvc
from shipyard.batch import BatchSpec, run_batch, work_dir

pytestmark = pytest.mark.integration
BATCH = [sys.executable, "-m", "shipyard", "batch"]


def shipyard_batch(*args: str | Path, env: dict[str, str] | None = None,
                   timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BATCH, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_classifier(tmp_path_factory.mktemp("batch-cli") / "churn.joblib")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame(300, seed=11)


def predictions(model: Path, frame: pd.DataFrame) -> list[int]:
    return joblib.load(model).predict(frame[FEATURES].to_numpy()).tolist()


@pytest.mark.parametrize(("source", "target"), [("parquet", "csv"), ("csv", "jsonl"), ("jsonl", "parquet")])
def test_formats_in_and_out(tmp_path: Path, model: Path, frame: pd.DataFrame, source: str, target: str):
    data = write_table(frame, tmp_path / f"in.{source}")
    output = tmp_path / f"scores.{target}"
    done = shipyard_batch(model, "--input", data, "--output", output, "--carry", "id", "--batch-size", "64")
    assert done.returncode == 0, done.stderr
    assert "Succeeded" in done.stdout and "300" in done.stdout and "rows/s" in done.stdout
    written = read_table(output)
    assert written["id"].tolist() == frame["id"].tolist()
    assert written["predict"].tolist() == predictions(model, frame)


@pytest.mark.parametrize(("args", "option", "words"), [
    (["--format", "xlsx"], "--format", "unknown format 'xlsx'"),
    (["--batch-size", "0"], "--batch-size", "at least 1, got 0"),
    (["--input", "{tmp}/missing.parquet"], "--input", "does not exist"),
    (["--columns", "a,b,zz"], "--columns", "no column 'zz'"),
    (["--columns", "a,b"], "--columns", "takes 4 features per row"),
    (["--carry", "key"], "--carry", "no column 'key'"),
    (["--max-errors", "lots"], "--max-errors", "is not a count or a fraction"),
    (["--output", "{tmp}/scores.txt"], "--output-format", "cannot tell the output format"),
    (["--rename", "predict"], "--rename", "OUTPUT=COLUMN"),
    (["--workers", "0"], "--workers", "at least 1"),
])
def test_bad_options_exit_2_naming_the_option(tmp_path: Path, model: Path, frame: pd.DataFrame, args: list[str],
                                              option: str, words: str):
    data = write_table(frame, tmp_path / "in.parquet")
    base = {"--input": str(data), "--output": str(tmp_path / "o.parquet")}
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    for flag in ("--input", "--output"):
        if flag not in extra:
            extra += [flag, base[flag]]
    done = shipyard_batch(model, *extra)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert option in done.stderr and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_input_option_is_named(tmp_path: Path, model: Path):
    done = shipyard_batch(model, "--output", tmp_path / "o.parquet")
    assert done.returncode == 2 and "--input is required" in done.stderr


@pytest.mark.parametrize("target", ["parquet", "csv"])
def test_a_run_killed_half_way_resumes_to_the_same_output(tmp_path: Path, target: str):
    slow = write_model_py(tmp_path / "slow", SLOW_MODEL.format(sleep=0.1))
    frame = make_frame(300, seed=13)
    data = write_table(frame, tmp_path / "in.parquet")
    whole = tmp_path / f"whole.{target}"
    uninterrupted = run_batch(BatchSpec(model=str(slow), input=str(data), output=str(whole), carry=["id"],
                                        batch_size=10))
    assert uninterrupted.state == "Succeeded", uninterrupted.message

    output = tmp_path / f"killed.{target}"
    work = work_dir(BatchSpec(model=str(slow), input=str(data), output=str(output)))
    args = [slow, "-i", data, "-o", output, "--carry", "id", "--batch-size", "10", "-q"]
    process = subprocess.Popen([*BATCH, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while manifest_chunks(work) < 2:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no chunk was recorded in time"
        time.sleep(0.02)
    assert process.poll() is None  # 30 chunks of 0.1 s: far from done
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    done_before = manifest_chunks(work)
    assert 2 <= done_before < 30 and not output.exists()

    resumed = shipyard_batch(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and f"{done_before} chunk(s) done before" in resumed.stdout
    assert output.read_bytes() == whole.read_bytes()
    assert read_table(output)["id"].tolist() == frame["id"].tolist()
    assert not Path(work).exists()


def test_ctrl_c_stops_after_the_chunk_in_flight_and_the_same_command_resumes(tmp_path: Path):
    slow = write_model_py(tmp_path / "slow", SLOW_MODEL.format(sleep=0.1))
    data = write_table(make_frame(200, seed=17), tmp_path / "in.csv")
    output = tmp_path / "o.jsonl"
    work = work_dir(BatchSpec(model=str(slow), input=str(data), output=str(output)))
    args = [slow, "-i", data, "-o", output, "--carry", "id", "--batch-size", "10"]
    process = subprocess.Popen([*BATCH, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while manifest_chunks(work) < 1:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Stopped" in stdout and "run it again to resume" in stderr
    again = shipyard_batch(*args)
    assert again.returncode == 0, again.stderr
    assert len(read_table(output)) == 200


def test_bad_rows_go_to_the_errors_file_unless_max_errors_is_crossed(tmp_path: Path):
    picky = write_model_py(tmp_path / "picky", RAISING_MODEL)
    frame = make_frame(300, seed=7)
    bad = frame.index[frame["a"] > 2.5].tolist()
    data = write_table(frame, tmp_path / "in.jsonl")
    output = tmp_path / "o.csv"
    done = shipyard_batch(picky, "-i", data, "-o", output, "--carry", "id", "--batch-size", "50")
    assert done.returncode == 0, done.stderr
    errors = read_errors(Path(f"{output}.errors.jsonl"))
    assert [e["row"] for e in errors] == bad and all("a is too large" in e["reason"] for e in errors)
    assert "errors file" in done.stdout
    assert len(read_table(output)) == 300 - len(bad)

    over = shipyard_batch(picky, "-i", data, "-o", tmp_path / "p.csv", "--carry", "id", "--batch-size", "50",
                          "--max-errors", str(len(bad) - 1))
    assert over.returncode == 1
    assert f"more than max_errors {len(bad) - 1}" in over.stderr and "Failed" in over.stdout


def test_an_endpoint_run_against_shipyard_serve(tmp_path: Path, model: Path, frame: pd.DataFrame, start_server):
    server = start_server(model)
    data = write_table(frame, tmp_path / "in.parquet")
    output = tmp_path / "o.parquet"
    done = shipyard_batch(server.url, "-i", data, "-o", output, "--carry", "id", "--batch-size", "100",
                          "--request-rows", "32", "--concurrency", "3")
    assert done.returncode == 0, done.stderr
    written = pd.read_parquet(output)
    assert written["id"].tolist() == frame["id"].tolist()
    assert written["predict"].tolist() == predictions(model, frame)


def test_an_endpoint_isolates_rows_the_server_refuses(tmp_path: Path, start_server):
    picky = write_model_py(tmp_path / "picky", RAISING_MODEL)
    server = start_server(picky)
    frame = make_frame(120, seed=7)
    bad = frame.index[frame["a"] > 2.5].tolist()
    data = write_table(frame, tmp_path / "in.csv")
    output = tmp_path / "o.jsonl"
    done = shipyard_batch(f"{server.url}/v2/models/picky", "-i", data, "-o", output, "--carry", "id",
                          "--request-rows", "16")
    assert done.returncode == 0, done.stderr
    errors = read_errors(Path(f"{output}.errors.jsonl"))
    assert [e["row"] for e in errors] == bad
    assert all("a is too large" in e["reason"] for e in errors)
    written = read_table(output)
    good = frame.drop(index=bad)
    np.testing.assert_allclose(written["score"], good["a"] * 2 + good["b"])


def test_an_endpoint_that_is_gone_fails_the_run(tmp_path: Path, model: Path, frame: pd.DataFrame):
    data = write_table(frame, tmp_path / "in.parquet")
    done = shipyard_batch("http://127.0.0.1:9", "--model-name", "churn", "-i", data, "-o", tmp_path / "o.csv",
                          "--retries", "1")
    assert done.returncode == 1 and "cannot reach http://127.0.0.1:9" in done.stderr


def test_a_deployed_inference_service(tmp_path: Path, model: Path, frame: pd.DataFrame):
    home = tmp_path / "home"
    plane = PlaneProcess(home).wait_up()
    try:
        plane.apply(isvc("churn", model))
        plane.wait_ready("churn", timeout=120)
        data = write_table(frame, tmp_path / "in.csv")
        output = tmp_path / "scores.parquet"
        done = shipyard_batch("churn", "-i", data, "-o", output, "--carry", "id", env={"SHIPYARD_HOME": str(home)})
        assert done.returncode == 0, (done.stderr, plane.output)
        written = pd.read_parquet(output)
        assert written["id"].tolist() == frame["id"].tolist()
        assert written["predict"].tolist() == predictions(model, frame)
    finally:
        plane.stop()
