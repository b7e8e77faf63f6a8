"""The fsspec protocol dataset://: pandas and pyarrow read a dataset through its cache."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest

from shipyard.data.engine import DatasetCache
from shipyard.data.fs import DatasetFileSystem, open_cache
from shipyard.data.spec import DatasetConfig, DatasetNotFound

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("SHIPYARD_HOME", str(folder))
    fsspec.register_implementation("dataset", DatasetFileSystem, clobber=True)
    return folder


@pytest.fixture
def source(tmp_path, home) -> Path:
    """A folder mounted at / of dataset "tables" (block size 16 KiB); dataset "frozen" is a readOnly mount."""
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "keep.txt").write_text("keep")
    frame = pd.DataFrame({"id": range(5000), "label": [f"class-{i % 7}" for i in range(5000)],
                          "score": [i / 3 for i in range(5000)]})
    frame.to_parquet(src / "train" / "part-0.parquet", row_group_size=1000)
    frame.to_csv(src / "train" / "part-0.csv", index=False)
    (src / "notes.txt").write_bytes(b"0123456789" * 100)
    doc = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "tables"},
           "spec": {"mounts": [{"mountPoint": f"local://{src}", "name": "src", "path": "/"}]}}
    runtime = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "CacheRuntime", "metadata": {"name": "tables"},
               "spec": {"runtimeClassName": "shipyard", "options": {"blockSize": "16Ki"}}}
    DatasetConfig.from_documents(doc, runtime, home=None).save()
    frozen = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "frozen"},
              "spec": {"mounts": [{"mountPoint": f"local://{tmp_path / 'ro'}", "name": "ro", "readOnly": True}]}}
    DatasetConfig.from_documents(frozen, None, home=None).save()
    return src


def fetches() -> tuple[int, int]:
    stats = open_cache("tables").stats()
    return stats.ufs_requests, stats.metadata_requests


def test_pandas_and_pyarrow_read_through_the_cache(source):
    expected = pd.read_parquet(source / "train" / "part-0.parquet")
    first = pd.read_parquet("dataset://tables/train/part-0.parquet")
    pd.testing.assert_frame_equal(first, expected)
    assert fetches()[0] > 0
    before = fetches()
    again = pd.read_parquet("dataset://tables/train/part-0.parquet", columns=["label"])
    pd.testing.assert_frame_equal(again, expected[["label"]])
    fs = fsspec.filesystem("dataset")
    table = pq.read_table("dataset://tables/train/part-0.parquet", filesystem=fs)   # pyarrow needs filesystem=
    assert table.num_rows == 5000
    assert fetches() == before                         # second read: nothing asked of the source

    csv = pd.read_csv("dataset://tables/train/part-0.csv")
    pd.testing.assert_frame_equal(csv, expected)
    before = fetches()
    pd.testing.assert_frame_equal(pd.read_csv("dataset://tables/train/part-0.csv"), expected)
    assert fetches() == before


def test_listing_info_find_glob(source):
    fs = fsspec.filesystem("dataset")
    assert fs.ls("dataset://tables/", detail=False) == ["tables/notes.txt", "tables/train"]
    assert fs.ls("", detail=False) == ["frozen", "tables"]
    assert fs.info("dataset://tables/notes.txt")["size"] == 1000
    assert fs.info("dataset://tables/train")["type"] == "directory"
    assert fs.find("dataset://tables/train") == ["tables/train/part-0.csv", "tables/train/part-0.parquet"]
    assert fs.glob("dataset://tables/**/*.parquet") == ["tables/train/part-0.parquet"]
    assert fs.glob("dataset://tables/*.txt") == ["tables/notes.txt"]
    assert fs.exists("dataset://tables/train/part-0.csv") and not fs.exists("dataset://tables/nope.csv")
    with pytest.raises(FileNotFoundError, match="dataset://tables/nope.csv: no such file"):
        fs.info("dataset://tables/nope.csv")
    with pytest.raises(DatasetNotFound, match="dataset 'missing' not found"):
        fs.info("dataset://missing/x")


def test_open_seek_cat_ranges_and_write(source, tmp_path):
    fs = fsspec.filesystem("dataset")
    data = (source / "notes.txt").read_bytes()
    with fs.open("dataset://tables/notes.txt", "rb") as handle:
        assert handle.seekable()
        handle.seek(995)
        assert handle.read() == data[995:]
        handle.seek(10)
        assert handle.read(5) == data[10:15]
        assert handle.tell() == 15
    assert fs.cat_file("dataset://tables/notes.txt", start=100, end=120) == data[100:120]
    assert fs.cat_file("dataset://tables/notes.txt", start=-3) == data[-3:]
    with fsspec.open("dataset://tables/out/result.txt", "wb") as handle:
        handle.write(b"written through dataset://")
    assert (source / "out" / "result.txt").read_bytes() == b"written through dataset://"
    assert fs.cat("dataset://tables/out/result.txt") == b"written through dataset://"
    frame = pd.DataFrame({"x": [1, 2, 3]})
    frame.to_parquet("dataset://tables/out/frame.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(source / "out" / "frame.parquet"), frame)
    with pytest.raises(PermissionError, match="mount 'ro'"):
        fs.pipe_file("dataset://frozen/ro/keep.txt", b"overwrite")
    assert (tmp_path / "ro" / "keep.txt").read_text() == "keep"


def test_namespace_storage_option(source, home, tmp_path):
    config = DatasetConfig.load("tables")
    config.namespace = "team-b"
    config.root = home / "data" / "team-b" / "tables"
    config.cache.levels[0].path = str(config.root / "cache")
    config.save()
    fs = fsspec.filesystem("dataset", namespace="team-b")
    assert fs.cat_file("dataset://tables/notes.txt", 0, 4) == b"0123"
    with DatasetCache.open("tables", namespace="team-b") as cache:
        assert cache.stats().ufs_requests == 1
    assert os.environ["SHIPYARD_HOME"] == str(home)
