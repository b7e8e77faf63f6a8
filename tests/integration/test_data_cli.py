"""``shipyard data ls|status|load|clean|flight`` as a user runs them: the real command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shipyard.data.spec import DatasetConfig

DATASET = {
    "apiVersion": "data.fluid.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "shards"},
    "spec": {"mounts": [{"mountPoint": "", "name": "local", "path": "/"}]},
}


def shipyard(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_HOME": str(home), "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "shipyard", *args], env=env, capture_output=True, text=True,
                            timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """A dataset 'shards' over a local folder of 5 files; returns SHIPYARD_HOME."""
    source = tmp_path / "source"
    (source / "train").mkdir(parents=True)
    for index in range(4):
        (source / "train" / f"part-{index}.bin").write_bytes(bytes([index]) * 300_000)
    (source / "labels.csv").write_text("id,label\n1,cat\n2,dog\n")
    home = tmp_path / "home"
    document = json.loads(json.dumps(DATASET))
    document["spec"]["mounts"][0]["mountPoint"] = f"local://{source}"
    DatasetConfig.from_documents(document, None, home).save()
    return home


def test_load_then_status_then_clean(dataset: Path) -> None:
    loaded = shipyard(dataset, "data", "load", "shards", "--path", "/train/*.bin")
    assert loaded.stdout.startswith("loaded 4 files")

    listing = shipyard(dataset, "data", "ls", "shards").stdout
    rows = {line.split()[0]: line.split()[-1] for line in listing.splitlines()[1:]}
    assert rows["/train/part-0.bin"] == "yes" and rows["/labels.csv"] == "no"

    states = json.loads(shipyard(dataset, "data", "status", "shards", "-o", "json").stdout)
    assert states["stats"]["cached_bytes"] == 4 * 300_000
    assert states["cacheStates"]["cacheHitRatio"] is None  # loading is not reading: no misleading 0%

    prom = shipyard(dataset, "data", "status", "shards", "-o", "prom").stdout
    assert "shipyard_dataset_" in prom

    cleaned = shipyard(dataset, "data", "clean", "shards", "--path", "/train/part-0.bin").stdout
    assert "of 1 file(s)" in cleaned
    states = json.loads(shipyard(dataset, "data", "status", "shards", "-o", "json").stdout)
    assert states["stats"]["cached_bytes"] == 3 * 300_000


def test_errors_name_what_is_wrong(dataset: Path) -> None:
    missing = shipyard(dataset, "data", "status", "nope", check=False)
    assert missing.returncode == 1 and "nope" in missing.stderr
    bad_output = shipyard(dataset, "data", "status", "shards", "-o", "xml", check=False)
    assert bad_output.returncode == 2 and "--output" in bad_output.stderr
    nothing = shipyard(dataset, "data", "load", "shards", "--path", "/nothing/*", check=False)
    assert nothing.returncode == 1 and "'/nothing/*' matches no file" in nothing.stderr


def test_flight_serves_a_csv_through_the_cache(dataset: Path, tmp_path: Path) -> None:
    from shipyard.data.flight import read_table

    socket = tmp_path / "flight.sock"
    env = {**os.environ, "SHIPYARD_HOME": str(dataset)}
    server = subprocess.Popen([sys.executable, "-m", "shipyard", "data", "flight", "--listen",
                               f"grpc+unix://{socket}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 60
        while not socket.exists():
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the Flight server did not start"
            time.sleep(0.1)
        table = read_table(f"grpc+unix://{socket}", "shards", "/labels.csv")
        assert table.column("label").to_pylist() == ["cat", "dog"]
    finally:
        server.terminate()
        server.wait(timeout=30)
