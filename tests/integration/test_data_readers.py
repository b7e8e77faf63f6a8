"""Libraries that know nothing of Shipyard read a dataset through its cache by URL: Hugging Face datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.data.engine import DatasetCache
from shipyard.data.spec import DatasetConfig

datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")


def test_hugging_face_datasets_reads_dataset_urls_through_the_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    source = tmp_path / "source"
    source.mkdir()
    pd.DataFrame({"x": [1, 2, 3], "y": ["a", "b", "c"]}).to_parquet(source / "part-0.parquet")
    pd.DataFrame({"x": [4], "y": ["d"]}).to_parquet(source / "part-1.parquet")
    DatasetConfig.from_documents({
        "apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "tables"},
        "spec": {"mounts": [{"mountPoint": f"local://{source}", "name": "local", "path": "/"}]},
    }, None).save()

    table = datasets.load_dataset("parquet", data_files="dataset://tables/part-0.parquet", split="train")
    assert table["y"][:] == ["a", "b", "c"]
    streamed = datasets.load_dataset("parquet", data_files="dataset://tables/*.parquet", split="train",
                                     streaming=True)
    assert sorted(row["x"] for row in streamed) == [1, 2, 3, 4]

    with DatasetCache.open("tables") as cache:
        stats = cache.stats()
    assert stats.miss_bytes > 0  # the bytes came through the cache, not around it
    size = sum(path.stat().st_size for path in source.iterdir())
    assert stats.ufs_bytes <= size  # each block fetched from the source at most once
