"""BatchSpec's rules (shared by the CLI, BatchJob documents and the SDK), and what the input tells before a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchdata import make_frame, train_classifier, write_table
from shipyard.batch import BatchSpec, input_problems, parse_max_errors, spec_problems
from shipyard.batch.manifest import work_dir
from shipyard.batch.spec import default_errors, error_budget, format_from_name


def spec(**changes) -> BatchSpec:
    return BatchSpec(**{"model": "m.joblib", "input": "in.parquet", "output": "out.parquet", **changes})


def fields(problems: list[tuple[str, str]]) -> list[str]:
    return [field for field, _ in problems]


def test_a_plain_spec_has_no_problem():
    assert spec_problems(spec()) == []
    assert spec_problems(spec(output="scores/", carry=["id"], columns=["a", "b"], max_errors=0.01)) == []


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"batch_size": 0}, "batch_size", "at least 1, got 0"),
    ({"batch_size": True}, "batch_size", "integer"),
    ({"workers": 0}, "workers", "at least 1"),
    ({"limit": 0}, "limit", "at least 1"),
    ({"concurrency": 0}, "concurrency", "at least 1"),
    ({"request_rows": -1}, "request_rows", "at least 1"),
    ({"retries": -1}, "retries", "at least 0"),
    ({"timeout_s": 0}, "timeout_s", "above 0"),
    ({"max_errors": -1}, "max_errors", "count of rows"),
    ({"max_errors": 2.5}, "max_errors", "fraction below 1"),
    ({"input_format": "xlsx"}, "input_format", "unknown format 'xlsx'; expected one of: parquet, csv, jsonl"),
    ({"output_format": "orc"}, "output_format", "unknown format 'orc'"),
    ({"output": "scores.txt"}, "output_format", "cannot tell the output format"),
    ({"input": ""}, "input", "is required"),
    ({"model": " "}, "model", "is required"),
    ({"output": "in.parquet"}, "output", "is the input"),
    ({"columns": []}, "columns", "names no column"),
    ({"columns": ["a", "a"]}, "columns", "names column 'a' twice"),
    ({"carry": "id"}, "carry", "list of column names"),
    ({"output_columns": {"predict": "id"}, "carry": ["id"]}, "output_columns", "'id' is a carried column"),
    ({"output_columns": {"p": "x", "q": "x"}}, "output_columns", "column 'x'"),
    ({"namespace": ""}, "namespace", "namespace"),
])
def test_each_rule_names_its_field(changes, field, words):
    problems = spec_problems(spec(**changes))
    assert field in fields(problems), problems
    assert any(words in message for key, message in problems if key == field), problems


def test_format_aliases_and_suffixes():
    assert spec_problems(spec(input_format="ndjson", output_format="PQ")) == []
    assert format_from_name("s3://b/x/part-1.parquet") == "parquet"
    assert format_from_name("rows.ndjson") == "jsonl"
    assert format_from_name("folder/") is None
    assert spec_problems(spec(output="scores/")) == []  # a folder takes the input's format


def test_max_errors_parsing_and_budget():
    assert parse_max_errors("100") == 100
    assert parse_max_errors("0.05") == 0.05
    assert parse_max_errors("5%") == 0.05
    assert parse_max_errors("3.0") == 3
    with pytest.raises(ValueError, match="count or a fraction"):
        parse_max_errors("many")
    assert error_budget(None, 10) == float("inf")
    assert error_budget(0.1, 1000) == 100
    assert error_budget(5, 1000) == 5


def test_default_errors_file_and_work_dir(tmp_path: Path):
    assert default_errors("out/scores.parquet") == "out/scores.parquet.errors.jsonl"
    assert default_errors("scores/") == "scores.errors.jsonl"
    assert work_dir(spec(output=str(tmp_path / "s.parquet"))) == str(tmp_path / "s.parquet.shipyard-batch")
    assert work_dir(spec(output=str(tmp_path / "scores") + "/")) == str(tmp_path / "scores" / "_shipyard-batch")


def test_input_problems_read_the_input(tmp_path: Path):
    model = train_classifier(tmp_path / "m.joblib")
    data = write_table(make_frame(5), tmp_path / "in.parquet")
    good = spec(model=str(model), input=str(data), output=str(tmp_path / "o.parquet"), carry=["id"])
    assert input_problems(good) == []

    missing = input_problems(spec(model=str(model), input=str(tmp_path / "nope.parquet"), output="o.csv"))
    assert missing and missing[0][0] == "input" and "does not exist" in missing[0][1]

    unknown = input_problems(BatchSpec(model=str(model), input=str(data), output="o.csv", columns=["a", "zz"]))
    assert unknown[0][0] == "columns" and "no column 'zz'" in unknown[0][1] and "it has: id, a, b, c, d" in unknown[0][1]

    carry = input_problems(BatchSpec(model=str(model), input=str(data), output="o.csv", carry=["key"]))
    assert carry[0][0] == "carry"

    (tmp_path / "rows.dat").write_text("a,b\n1,2\n")
    untold = input_problems(BatchSpec(model=str(model), input=str(tmp_path / "rows.dat"), output="o.csv"))
    assert untold[0][0] == "input_format" and "give the format" in untold[0][1]


def test_input_problems_for_a_model_that_is_not_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))  # no control plane runs there
    data = write_table(make_frame(5), tmp_path / "in.csv")
    problems = input_problems(BatchSpec(model="no-such-model", input=str(data), output=str(tmp_path / "o.csv")))
    assert problems[0][0] == "model"
    assert "does not exist" in problems[0][1] and "shipyard up" in problems[0][1]


def test_a_folder_input_needs_files_of_one_format(tmp_path: Path):
    folder = tmp_path / "rows"
    write_table(make_frame(3), folder / "x.csv")
    write_table(make_frame(3), folder / "y.parquet")
    problems = input_problems(BatchSpec(model="m.joblib", input=str(folder), output="o.csv"))
    assert problems[0][0] == "input_format" and "several formats" in problems[0][1]
    empty = tmp_path / "empty"
    empty.mkdir()
    problems = input_problems(BatchSpec(model="m.joblib", input=str(empty), output="o.csv"))
    assert problems[0][0] == "input" and "holds no input file" in problems[0][1]
