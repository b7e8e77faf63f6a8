"""run_batch in this process: formats in and out, carried ids, chunks across files, bad rows, error limits,
stopping and resuming, worker processes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from batchdata import (
    FEATURES,
    RAISING_MODEL,
    make_frame,
    read_errors,
    read_table,
    train_classifier,
    write_model_py,
    write_table,
)
from shipyard.batch import BatchSpec, run_batch, work_dir

FORMATS = ["parquet", "csv", "jsonl"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_classifier(tmp_path_factory.mktemp("batch-model") / "model.joblib")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame(50)


def expected(model: Path, frame: pd.DataFrame) -> np.ndarray:
    return joblib.load(model).predict(frame[FEATURES].to_numpy())


@pytest.mark.parametrize("source", FORMATS)
@pytest.mark.parametrize("target", FORMATS)
def test_every_format_in_and_out_with_the_id_carried(tmp_path: Path, model: Path, frame: pd.DataFrame,
                                                     source: str, target: str):
    data = write_table(frame, tmp_path / f"in.{source}")
    output = tmp_path / f"out.{target}"
    result = run_batch(BatchSpec(model=str(model), input=str(data), output=str(output), carry=["id"], batch_size=7))
    assert result.state == "Succeeded", result.message
    assert (result.rows, result.written, result.errors, result.chunks) == (50, 50, 0, 8)
    assert result.errors_file is None and not Path(work_dir(BatchSpec("m", "i", str(output)))).exists()
    written = read_table(output)
    assert list(written.columns) == ["id", "predict"]
    assert written["id"].tolist() == frame["id"].tolist()
    assert written["predict"].tolist() == expected(model, frame).tolist()


def test_a_folder_output_holds_one_part_per_chunk(tmp_path: Path, model: Path, frame: pd.DataFrame):
    data = write_table(frame, tmp_path / "in.csv")
    result = run_batch(BatchSpec(model=str(model), input=str(data), output=str(tmp_path / "scores") + "/",
                                 output_format="parquet", carry=["id"], batch_size=20))
    assert result.state == "Succeeded", result.message
    parts = sorted(p.name for p in (tmp_path / "scores").iterdir())
    assert parts == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    written = pd.read_parquet(tmp_path / "scores")
    assert written["id"].tolist() == frame["id"].tolist()


def test_chunks_run_across_the_files_of_a_folder_in_order(tmp_path: Path, model: Path):
    first, second = make_frame(23, seed=3), make_frame(30, seed=4)
    second["id"] = [f"second-{i}" for i in range(30)]
    write_table(first, tmp_path / "rows" / "a.parquet")
    write_table(second, tmp_path / "rows" / "b.parquet")
    write_table(second, tmp_path / "rows" / "_ignored.parquet")
    result = run_batch(BatchSpec(model=str(model), input=str(tmp_path / "rows"), output=str(tmp_path / "o.jsonl"),
                                 carry=["id"], batch_size=10))
    assert result.state == "Succeeded", result.message
    assert result.chunks == 6 and result.rows == 53
    both = pd.concat([first, second], ignore_index=True)
    written = read_table(tmp_path / "o.jsonl")
    assert written["id"].tolist() == both["id"].tolist()
    assert written["predict"].tolist() == expected(model, both).tolist()


def test_limit_columns_and_progress(tmp_path: Path, model: Path, frame: pd.DataFrame):
    data = write_table(frame, tmp_path / "in.parquet")
    seen = []
    result = run_batch(BatchSpec(model=str(model), input=str(data), output=str(tmp_path / "o.csv"),
                                 columns=FEATURES, carry=["id"], batch_size=4, limit=10), progress=seen.append)
    assert result.state == "Succeeded" and result.rows == 10
    assert read_table(tmp_path / "o.csv")["id"].tolist() == frame["id"][:10].tolist()
    assert seen[0].rows_done == 0 and seen[0].rows_total == 10
    assert [(p.rows_done, p.chunks_done, p.chunks_total) for p in seen[1:]] == [(4, 1, 3), (8, 2, 3), (10, 3, 3)]


def test_a_package_with_declared_columns_and_predict_proba(tmp_path: Path, model: Path, frame: pd.DataFrame):
    package = tmp_path / "churn"
    package.mkdir()
    (package / "model.joblib").write_bytes(model.read_bytes())
    (package / "shipyard.yaml").write_text(
        "artifact: model.joblib\npredict_proba: true\n"
        "inputs:\n  - name: features\n    datatype: FP64\n    shape: [-1, 4]\n    columns: [a, b, c, d]\n")
    data = frame.assign(extra="ignored")  # not a declared column: not fed
    source = write_table(data, tmp_path / "in.parquet")
    result = run_batch(BatchSpec(model=str(package), input=str(source), output=str(tmp_path / "o.parquet"),
                                 carry=["id"], output_columns={"predict_proba_1": "score"}))
    assert result.state == "Succeeded", result.message
    written = pd.read_parquet(tmp_path / "o.parquet")
    assert list(written.columns) == ["id", "predict_proba_0", "score"]
    probabilities = joblib.load(model).predict_proba(frame[FEATURES].to_numpy())
    np.testing.assert_allclose(written["score"], probabilities[:, 1])


def test_rows_the_model_fails_on_go_to_the_errors_file(tmp_path: Path):
    model = write_model_py(tmp_path / "picky", RAISING_MODEL)
    frame = make_frame(200, seed=7)
    bad = frame.index[frame["a"] > 2.5].tolist()
    assert bad, "the data should hold rows the model refuses"
    data = write_table(frame, tmp_path / "in.parquet")
    output = tmp_path / "o.parquet"
    result = run_batch(BatchSpec(model=str(model), input=str(data), output=str(output), carry=["id"], batch_size=64))
    assert result.state == "Succeeded", result.message
    assert (result.rows, result.errors, result.written) == (200, len(bad), 200 - len(bad))
    assert result.errors_file == f"{output}.errors.jsonl"
    errors = read_errors(Path(result.errors_file))
    assert [e["row"] for e in errors] == bad
    assert [e["id"] for e in errors] == [f"row-{i}" for i in bad]
    assert all(e["reason"].startswith("model 'picky' raised ValueError: a is too large") for e in errors)
    written = pd.read_parquet(output)
    good = frame.drop(index=bad)
    assert written["id"].tolist() == good["id"].tolist()
    np.testing.assert_allclose(written["score"], good["a"] * 2 + good["b"])

    # a run without errors removes the errors file of the run before
    clean = write_table(good, tmp_path / "good.parquet")
    again = run_batch(BatchSpec(model=str(model), input=str(clean), output=str(output), carry=["id"]))
    assert again.state == "Succeeded" and again.errors == 0 and again.errors_file is None
    assert not Path(f"{output}.errors.jsonl").exists()


def test_values_that_are_not_numbers_fail_their_rows(tmp_path: Path, model: Path, frame: pd.DataFrame):
    text = frame.astype({"b": object})
    text.loc[[5, 17], "b"] = ["abc", "twelve"]
    data = write_table(text, tmp_path / "in.csv")
    result = run_batch(BatchSpec(model=str(model), input=str(data), output=str(tmp_path / "o.csv"),
                                 errors=str(tmp_path / "bad.jsonl"), carry=["id"], batch_size=16))
    assert result.state == "Succeeded" and result.errors == 2
    errors = read_errors(tmp_path / "bad.jsonl")
    assert errors == [{"row": 5, "id": "row-5", "reason": "column 'b': 'abc' is not a number"},
                      {"row": 17, "id": "row-17", "reason": "column 'b': 'twelve' is not a number"}]
    assert read_table(tmp_path / "o.csv")["id"].tolist() == frame["id"].drop(index=[5, 17]).tolist()


def test_malformed_json_lines_are_bad_rows(tmp_path: Path, model: Path):
    lines = [json.dumps({"id": f"r{i}", "a": i, "b": 1, "c": 2, "d": 3}) for i in range(6)]
    lines[2] = '{"id": "r2", "a": '
    lines[4] = "[1, 2, 3]"
    (tmp_path / "in.jsonl").write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    result = run_batch(BatchSpec(model=str(model), input=str(tmp_path / "in.jsonl"),
                                 output=str(tmp_path / "o.jsonl"), carry=["id"]))
    assert result.state == "Succeeded" and (result.rows, result.errors) == (6, 2)
    errors = read_errors(tmp_path / "o.jsonl.errors.jsonl")
    assert [e["row"] for e in errors] == [2, 4]
    assert errors[0]["reason"].startswith("line 3 is not valid JSON")
    assert errors[1]["reason"] == "line 6 is a JSON list, not an object"


def test_more_errors_than_max_errors_fail_the_run(tmp_path: Path):
    model = write_model_py(tmp_path / "picky", RAISING_MODEL)
    frame = make_frame(300, seed=7)
    bad = int((frame["a"] > 2.5).sum())
    data = write_table(frame, tmp_path / "in.parquet")
    output = tmp_path / "o.parquet"
    failed = run_batch(BatchSpec(model=str(model), input=str(data), output=str(output), carry=["id"],
                                 batch_size=50, max_errors=0))
    assert failed.state == "Failed"
    assert "rows failed, more than max_errors 0" in failed.message and "a is too large" in failed.message
    assert not output.exists() and failed.errors_file and read_errors(Path(failed.errors_file))
    # the same spec with a looser limit goes on from the recorded chunks
    loose = run_batch(BatchSpec(model=str(model), input=str(data), output=str(output), carry=["id"],
                                batch_size=50, max_errors=bad))
    assert loose.state == "Succeeded" and loose.errors == bad
    fraction = run_batch(BatchSpec(model=str(model), input=str(data), output=str(tmp_path / "f.parquet"),
                                   carry=["id"], batch_size=50, max_errors=(bad - 1) / 300))
    assert fraction.state == "Failed" and "more than max_errors" in fraction.message


def test_a_run_where_every_row_fails_is_failed(tmp_path: Path, model: Path):
    frame = pd.DataFrame({"id": ["x", "y"], "a": ["p", "q"], "b": ["r", "s"], "c": [1, 2], "d": [1, 2]})
    data = write_table(frame, tmp_path / "in.csv")
    result = run_batch(BatchSpec(model=str(model), input=str(data), output=str(tmp_path / "o.csv"), carry=["id"]))
    assert result.state == "Failed" and "all failed, so nothing was written" in result.message


def test_problems_found_while_running_name_the_field(tmp_path: Path, model: Path, frame: pd.DataFrame):
    data = write_table(frame, tmp_path / "in.parquet")
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(b"not a pickle")
    result = run_batch(BatchSpec(model=str(broken), input=str(data), output=str(tmp_path / "o.csv")))
    assert result.state == "Failed" and result.message.startswith("model: cannot load")
    result = run_batch(BatchSpec(model=str(model), input=str(data), output=str(tmp_path / "o.csv"),
                                 columns=["a", "b"]))
    assert result.state == "Failed" and result.message.startswith("columns: ") and "takes 4 features" in result.message
    result = run_batch(BatchSpec(model=str(model), input=str(data), output=str(tmp_path / "o.csv"), batch_size=0))
    assert result.state == "Failed" and result.message.startswith("batch_size: must be an integer")


@pytest.mark.parametrize("target", ["parquet", "csv", "jsonl"])
def test_stopped_then_resumed_is_the_same_as_uninterrupted(tmp_path: Path, model: Path, target: str):
    frame = make_frame(120, seed=5)
    data = write_table(frame, tmp_path / "in.parquet")
    whole = tmp_path / f"whole.{target}"
    assert run_batch(BatchSpec(model=str(model), input=str(data), output=str(whole), carry=["id"],
                               batch_size=10)).state == "Succeeded"

    resumed = tmp_path / f"resumed.{target}"
    spec = BatchSpec(model=str(model), input=str(data), output=str(resumed), carry=["id"], batch_size=10)
    stop = threading.Event()

    def stop_after_four(state) -> None:
        if state.chunks_done >= 4:
            stop.set()

    first = run_batch(spec, progress=stop_after_four, stop=stop)
    assert first.state == "Stopped" and "run it again to resume" in first.message
    assert first.chunks == 4 and not resumed.exists()
    lines: list[str] = []
    second = run_batch(spec, log=lines.append)
    assert second.state == "Succeeded" and second.resumed_chunks == 4 and second.rows == 120
    assert any(line.startswith("resuming: 4 chunk(s) done") for line in lines)
    assert resumed.read_bytes() == whole.read_bytes()


def test_a_changed_spec_starts_over(tmp_path: Path, model: Path, frame: pd.DataFrame):
    data = write_table(frame, tmp_path / "in.parquet")
    stop = threading.Event()
    output = tmp_path / "o.parquet"
    first = run_batch(BatchSpec(model=str(model), input=str(data), output=str(output), carry=["id"], batch_size=10),
                      progress=lambda state: state.chunks_done and stop.set(), stop=stop)
    assert first.state == "Stopped"
    lines: list[str] = []
    second = run_batch(BatchSpec(model=str(model), input=str(data), output=str(output), carry=["id"], batch_size=20),
                       log=lines.append)
    assert second.state == "Succeeded" and second.resumed_chunks == 0
    assert any("starting over" in line for line in lines)


def test_worker_processes_write_what_one_process_writes(tmp_path: Path, model: Path):
    frame = make_frame(400, seed=9)
    data = write_table(frame, tmp_path / "in.parquet")
    one = run_batch(BatchSpec(model=str(model), input=str(data), output=str(tmp_path / "one.csv"), carry=["id"],
                              batch_size=25))
    assert one.state == "Succeeded", one.message
    spec = BatchSpec(model=str(model), input=str(data), output=str(tmp_path / "two.csv"), carry=["id"],
                     batch_size=25, workers=2)
    stop = threading.Event()
    first = run_batch(spec, progress=lambda state: state.chunks_done >= 5 and stop.set(), stop=stop)
    assert first.state == "Stopped" and 5 <= first.chunks < 16, first.message
    spec.workers = 1  # the worker count is not part of what a run is: it resumes with another
    second = run_batch(spec)
    assert second.state == "Succeeded" and second.resumed_chunks == first.chunks, second.message
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()


def test_inputs_and_outputs_at_any_fsspec_url(s3, tmp_path: Path, model: Path, frame: pd.DataFrame):
    s3.create_bucket(Bucket="scores")
    s3.put_object(Bucket="scores", Key="in/rows.csv", Body=frame.to_csv(index=False).encode())
    file_spec = BatchSpec(model=str(model), input="s3://scores/in/", output="s3://scores/out/scores.parquet",
                          carry=["id"], batch_size=16)
    result = run_batch(file_spec)
    assert result.state == "Succeeded", result.message
    assert not Path(work_dir(file_spec)).exists()  # the work folder of a remote output is local, and gone
    body = s3.get_object(Bucket="scores", Key="out/scores.parquet")["Body"].read()
    (tmp_path / "scores.parquet").write_bytes(body)
    written = pd.read_parquet(tmp_path / "scores.parquet")
    assert written["id"].tolist() == frame["id"].tolist()
    assert written["predict"].tolist() == expected(model, frame).tolist()

    folder = run_batch(BatchSpec(model=str(model), input="s3://scores/in/rows.csv", output="s3://scores/parts/",
                                 carry=["id"], batch_size=20))
    assert folder.state == "Succeeded", folder.message
    keys = sorted(item["Key"] for item in s3.list_objects_v2(Bucket="scores", Prefix="parts/")["Contents"])
    assert keys == ["parts/part-000000.csv", "parts/part-000001.csv", "parts/part-000002.csv"]


def test_a_dataset_is_read_through_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: Path,
                                             frame: pd.DataFrame):
    import fsspec

    from shipyard.data.fs import DatasetFileSystem
    from shipyard.data.spec import DatasetConfig

    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    fsspec.register_implementation("dataset", DatasetFileSystem, clobber=True)
    source = tmp_path / "bucket"
    write_table(frame.iloc[:30], source / "customers" / "part-0.parquet")
    write_table(frame.iloc[30:], source / "customers" / "part-1.parquet")
    document = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "crm"},
                "spec": {"mounts": [{"mountPoint": f"local://{source}", "name": "src", "path": "/"}]}}
    DatasetConfig.from_documents(document, None, home=None).save()
    result = run_batch(BatchSpec(model=str(model), input="dataset://crm/customers/", output=str(tmp_path / "o.csv"),
                                 carry=["id"], batch_size=16))
    assert result.state == "Succeeded", result.message
    written = read_table(tmp_path / "o.csv")
    assert written["id"].tolist() == frame["id"].tolist()
    assert written["predict"].tolist() == expected(model, frame).tolist()


def test_chunks_that_inferred_other_types_give_one_parquet_schema(tmp_path: Path, model: Path):
    frame = make_frame(30, seed=2)
    frame["id"] = [str(i) for i in range(20)] + [f"x{i}" for i in range(20, 30)]  # CSV: int64 first, text later
    data = write_table(frame, tmp_path / "in.csv")
    output = tmp_path / "o.parquet"
    result = run_batch(BatchSpec(model=str(model), input=str(data), output=str(output), carry=["id"], batch_size=10))
    assert result.state == "Succeeded", result.message
    written = pd.read_parquet(output)
    assert written["id"].tolist() == frame["id"].tolist()
