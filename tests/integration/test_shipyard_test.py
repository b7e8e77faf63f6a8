"""``shipyard test DIR`` as a user runs it: examples in process and through a real server (REST, gRPC)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import pytest
import yaml

pytestmark = pytest.mark.integration

PATHS = ("in-process", "rest", "grpc")
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5], [5.9, 3.0, 4.2, 1.5]]

TYPED_MODEL = '''
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
'''


def shipyard_test(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shipyard", "test", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})


def write(folder: Path, examples: list[dict] | str) -> Path:
    text = textwrap.dedent(examples) if isinstance(examples, str) else yaml.safe_dump(examples, sort_keys=False)
    (folder / "examples.yaml").write_text(text)
    return folder


@pytest.fixture(scope="module")
def iris_package(artifacts, tmp_path_factory) -> tuple[Path, object]:
    """A scikit-learn package (no examples yet) and the estimator, to compute expected answers with."""
    folder = tmp_path_factory.mktemp("iris")
    shutil.copy(artifacts["sk_logreg"], folder / "model.joblib")
    (folder / "shipyard.yaml").write_text("name: iris\nformat: sklearn\nartifact: model.joblib\n")
    return folder, joblib.load(artifacts["sk_logreg"])


def verbose_answers(stdout: str) -> dict[tuple[str, str], str]:
    """``--verbose`` blocks: (example, path) -> the outputs printed for it."""
    answers, key = {}, None
    for line in stdout.splitlines():
        found = re.match(r"^(\S+) on (in-process|rest|grpc):$", line)
        if found:
            key = (found.group(1), found.group(2))
            answers[key] = ""
        elif key and line.startswith("  "):
            answers[key] += line.strip() + "\n"
        else:
            key = None
    return answers


def test_wrong_expectations_fail_on_every_path_and_the_paths_agree(iris_package):
    folder, estimator = iris_package
    labels = estimator.predict(ROWS).tolist()
    probabilities = estimator.predict_proba(ROWS[:1]).tolist()
    write(folder, [
        {"name": "batch", "inputs": {"input-0": ROWS}, "outputs": {"predict": labels}},
        {"name": "one-flat-row", "inputs": {"input-0": ROWS[1]}, "outputs": {"predict": labels[1:2]}},
        {"name": "proba", "inputs": {"input-0": ROWS[:1]}, "outputs": {"predict_proba": probabilities},
         "tolerance": {"abs": 1e-9, "rel": 1e-7}},
        {"name": "wrong", "inputs": {"input-0": ROWS}, "outputs": {"predict": [labels[0], labels[1], 1 - labels[2]]}},
        {"name": "no-expectation", "inputs": {"input-0": {"datatype": "FP64", "shape": [1, 4], "data": ROWS[2]}}},
    ])
    result = shipyard_test(folder, "--verbose")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    for example in ("batch", "one-flat-row", "proba", "no-expectation"):
        row = next(line for line in out.splitlines() if line.startswith(f"│ {example} "))
        assert row.count("pass") == 3 and "FAIL" not in row, row
    wrong = next(line for line in out.splitlines() if line.startswith("│ wrong "))
    mismatch = f"output 'predict'[2]: got {labels[2]}, expected {1 - labels[2]}"
    assert wrong.count("FAIL " + mismatch) == 3, out
    assert "1 of 5 example(s) failed: wrong" in out
    answers = verbose_answers(out)
    for example in ("batch", "proba", "no-expectation"):
        seen = {answers[(example, path)] for path in PATHS}
        assert len(seen) == 1 and seen.pop(), (example, answers)
    assert "Stopped." in out  # the test server was stopped with SIGTERM and drained


def test_passing_examples_exit_0_with_a_table(tmp_path):
    folder = tmp_path / "typed"
    folder.mkdir()
    (folder / "model.py").write_text(textwrap.dedent(TYPED_MODEL))
    write(folder, """
        - name: shorthand
          inputs:
            a: [[0.1, 0.2], [1, 2]]       # FP32 [2, 2] from the model's metadata
            b: ["abc", "x"]
          outputs:
            sum: [0.3, 3]
            upper: ["ABC", "X"]
        - name: full-form
          inputs:
            a: {datatype: FP32, shape: [1, 2], data: [0.5, 0.25]}
            b: {datatype: BYTES, shape: [1], data: ["q"]}
          outputs:
            sum: {datatype: FP32, shape: [1], data: [0.75]}
            upper: ["Q"]
    """)
    result = shipyard_test(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"example\s+┃ in-process\s+┃ rest\s+┃ grpc", result.stdout)
    for example in ("shorthand", "full-form"):
        row = next(line for line in result.stdout.splitlines() if line.startswith(f"│ {example} "))
        assert row.count("pass") == 3
    assert "All 2 example(s) passed on in-process, rest, grpc" in result.stdout

    write(folder, "- name: odd\n  inputs: {a: [[1, 2, 3]], b: ['x']}\n")
    result = shipyard_test(folder, "--only", "in-process")
    assert result.returncode == 1
    assert "FAIL HTTP 400: input 'a': expected shape [-1, 2], got [1, 3]" in result.stdout
    header = next(line for line in result.stdout.splitlines() if "┃ example" in line)
    assert "in-process" in header and "rest" not in header and "grpc" not in header  # one path, no server


def test_a_bad_package_or_examples_file_exits_2(tmp_path):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "model.py").write_text(textwrap.dedent(TYPED_MODEL))
    result = shipyard_test(folder)
    assert result.returncode == 2
    assert "has no examples.yaml" in result.stderr and "- name:" in result.stderr

    write(folder, "- name: first\n  inputs: {a: [[1, 2]]}\n  outputs: {sum: {datatype: FP32, data: [3]}}\n")
    result = shipyard_test(folder)
    assert result.returncode == 2
    assert "example 'first': outputs.sum: the full form needs datatype, shape and data; missing shape" in result.stderr

    (folder / "model.py").write_text("class Model:\n    def load(self):\n        raise OSError('weights missing')\n"
                                     "    def predict(self, inputs):\n        return inputs\n")
    write(folder, "- name: first\n  inputs: {a: [[1, 2]]}\n")
    result = shipyard_test(folder)
    assert result.returncode == 2
    assert "model 'pkg' failed to load: OSError: weights missing" in result.stderr

    result = shipyard_test(folder, "--only", "rest")  # the server's failure, with its output
    assert result.returncode == 2
    assert "the test server (shipyard serve) exited with code 1" in result.stderr
    assert "weights missing" in result.stderr

    result = shipyard_test(tmp_path / "missing")
    assert result.returncode == 2 and "is not a folder" in result.stderr
