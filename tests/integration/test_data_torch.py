"""CachedDataset: a real DatasetCache over a local folder, real DataLoaders (threads and worker processes)."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from shipyard.data.engine import DatasetCache  # noqa: E402
from shipyard.data.spec import CacheConfig, DatasetConfig, Level, Mount, dataset_root  # noqa: E402
from shipyard.data.torch import CachedDataset, PrefetchSampler, raw_bytes  # noqa: E402
from shipyard.quantity import QuantityError  # noqa: E402

pytestmark = pytest.mark.integration

KiB = 1024


def make_dataset(home: Path, source: Path, name: str, sizes: list[int], seed: int = 0) -> dict[str, bytes]:
    """Files ``/f000.bin``... of the given sizes under ``source``, a dataset over them; path -> bytes."""
    rng = random.Random(seed)
    source.mkdir(parents=True)
    files: dict[str, bytes] = {}
    for i, size in enumerate(sizes):
        header = f"sample {i:03d}|".encode()
        data = (header + rng.randbytes(max(0, size - len(header))))[:size]
        (source / f"f{i:03d}.bin").write_bytes(data)
        files[f"/f{i:03d}.bin"] = data
    root = dataset_root(name, "default", home)
    DatasetConfig(namespace="default", name=name, mounts=[Mount(mount_point=str(source), name="src", path="/")],
                  cache=CacheConfig(levels=[Level("SSD", str(root / "cache"), 64 * 1024 * KiB)], block_size=16 * KiB),
                  root=root).save()
    return files


def with_path(data: bytes, path: str) -> tuple[str, bytes]:
    return path, data


def as_list(batch: list) -> list:
    return batch


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("SHIPYARD_HOME", str(home))
    return home


@pytest.fixture
def samples(home: Path, tmp_path: Path) -> dict[str, bytes]:
    rng = random.Random(1)
    return make_dataset(home, tmp_path / "src", "samples", [rng.randint(1, 40) * KiB + rng.randint(0, 999)
                                                             for _ in range(40)])


def test_epoch_in_sampler_order_with_prefetch_then_warm_epoch(samples: dict[str, bytes]) -> None:
    dataset = CachedDataset("samples", decode=with_path, prefetch=8)
    assert len(dataset) == 40 and dataset.paths == sorted(samples)
    # a shuffled order with repeats (a sampler with replacement): each draw gets its own sample
    order = list(range(40))
    random.Random(7).shuffle(order)
    order += [order[0], 5, 5, order[-1]]
    got = [item for batch in dataset.loader(batch_size=6, sampler=order, collate_fn=as_list) for item in batch]
    assert [path for path, _ in got] == [dataset.paths[i] for i in order]
    assert all(data == samples[path] for path, data in got)
    stats = dataset.loader_stats()
    assert stats["samples"] == len(order)
    assert stats["prefetched"] == len(order) and stats["direct"] == 0   # every sample came from a prefetch
    assert stats["epochs"] == 1 and stats["epoch_seconds"] > 0 and stats["samples_per_s"] > 0
    assert stats["wait_p50_ms"] is not None and stats["wait_p99_ms"] >= stats["wait_p50_ms"]
    assert stats["bytes_read"] == sum(len(samples[dataset.paths[i]]) for i in order)
    assert stats["bytes_in_flight"] == 0 and dataset.bytes_in_flight == 0

    cache = dataset.cache
    cache.flush()
    cold = cache.stats()
    assert cold.ufs_requests > 0
    # second epoch, shuffled by the loader itself: served from the cache, no request to the source
    generator = torch.Generator().manual_seed(3)
    expected = list(torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(3)))
    got = [item for batch in dataset.loader(batch_size=5, shuffle=True, generator=generator, collate_fn=as_list)
           for item in batch]
    assert [path for path, _ in got] == [dataset.paths[i] for i in expected]
    assert all(data == samples[path] for path, data in got)
    cache.flush()
    warm = cache.stats()
    assert warm.ufs_requests == cold.ufs_requests and warm.ufs_bytes == cold.ufs_bytes
    assert warm.hits > cold.hits
    assert warm.hit_bytes >= cold.hit_bytes + sum(len(data) for data in samples.values())
    assert dataset.loader_stats()["epochs"] == 2
    dataset.close()


def test_bytes_in_flight_never_exceed_the_budget(home: Path, tmp_path: Path) -> None:
    sizes = [24 * KiB] * 30 + [150 * KiB] + [24 * KiB] * 9     # one file bigger than the whole budget
    files = make_dataset(home, tmp_path / "src", "budget", sizes)
    budget = 100 * KiB
    dataset = CachedDataset("budget", prefetch=16, max_bytes_in_flight="100Ki")
    seen: list[int] = []
    order = list(range(len(sizes)))
    random.Random(2).shuffle(order)
    out = []
    for batch in dataset.loader(batch_size=4, sampler=order, collate_fn=as_list):
        seen.append(dataset.bytes_in_flight)
        out.extend(batch)
    assert out == [files[dataset.paths[i]] for i in order]
    stats = dataset.loader_stats()
    assert max(seen) <= budget
    assert stats["peak_bytes_in_flight"] <= budget
    assert stats["peak_bytes_in_flight"] >= 3 * 24 * KiB        # it did prefetch several files at once
    assert stats["direct"] == 1 and stats["prefetched"] == len(sizes) - 1   # the 150 KiB file was read directly
    assert dataset.bytes_in_flight == 0


def test_stopping_early_releases_prefetches_and_next_epoch_is_complete(samples: dict[str, bytes]) -> None:
    dataset = CachedDataset("samples", prefetch=8)
    loader = dataset.loader(batch_size=4, collate_fn=as_list)
    iterator = iter(loader)
    first = next(iterator)
    assert first == [samples[p] for p in dataset.paths[:4]]
    assert dataset.bytes_in_flight > 0          # the next files are already on their way
    del iterator                                # the epoch is abandoned
    got = [item for batch in loader for item in batch]
    assert got == [samples[p] for p in dataset.paths]
    assert dataset.bytes_in_flight == 0
    assert dataset.loader_stats()["epochs"] == 1


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_two_worker_processes(samples: dict[str, bytes], context: str) -> None:
    cache = DatasetCache.open("samples")
    dataset = CachedDataset(cache, decode=with_path, prefetch=8, max_bytes_in_flight="96Ki")
    loader = dataset.loader(batch_size=8, num_workers=2, collate_fn=as_list, multiprocessing_context=context)
    got = [item for batch in loader for item in batch]
    assert [path for path, _ in got] == dataset.paths
    assert all(data == samples[path] for path, data in got)
    stats = dataset.loader_stats()          # counted by the workers, seen by the main process
    assert stats["samples"] == 40 and stats["prefetched"] == 40
    assert stats["epochs"] == 1 and stats["samples_per_s"] > 0
    assert stats["processes"] == 2                          # both workers, each in its own row
    assert 0 < stats["peak_bytes_in_flight"] <= 48 * KiB    # each of 2 workers gets half of the budget
    # the workers' own caches flushed their counters when they exited
    before = cache.stats()
    assert before.ufs_requests > 0 and before.misses > 0
    if context == "fork":    # (spawning workers again costs seconds: once is enough for spawn)
        assert [path for batch in loader for path, _ in batch] == dataset.paths
        after = cache.stats()        # a second epoch is all hits
        assert after.ufs_requests == before.ufs_requests and after.hits >= before.hits + 40
        assert dataset.loader_stats()["epochs"] == 2
    cache.close()


def test_pickles_without_its_cache_and_reopens_it(samples: dict[str, bytes]) -> None:
    dataset = CachedDataset("samples", paths=["/f00*.bin", "/f031.bin"], decode=with_path)
    assert dataset.paths == [f"/f00{i}.bin" for i in range(10)] + ["/f031.bin"]
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy[10] == ("/f031.bin", samples["/f031.bin"])
    assert copy[-1] == copy[10]
    assert copy.__getitems__([3, 1]) == [("/f003.bin", samples["/f003.bin"]), ("/f001.bin", samples["/f001.bin"])]
    copy.close()
    dataset.close()


def test_plain_dataloader_reads_each_batch_concurrently(samples: dict[str, bytes]) -> None:
    dataset = CachedDataset("samples", paths="/", prefetch=4)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=as_list)
    assert [item for batch in loader for item in batch] == [samples[p] for p in dataset.paths]
    stats = dataset.loader_stats()
    assert stats["prefetched"] == 40 and stats["epochs"] == 0 and stats["samples_per_s"] > 0


def test_a_failed_read_raises_for_its_sample(samples: dict[str, bytes], tmp_path: Path) -> None:
    dataset = CachedDataset("samples", prefetch=8)
    (tmp_path / "src" / "f002.bin").unlink()       # listed, then gone from the source
    with pytest.raises(OSError, match="f002.bin"):
        for _ in dataset.loader(batch_size=4, collate_fn=as_list):
            pass
    assert dataset[3] == samples["/f003.bin"]      # the dataset still works


def test_bad_arguments_name_what_was_expected(samples: dict[str, bytes]) -> None:
    with pytest.raises(ValueError, match="paths: no files match"):
        CachedDataset("samples", paths="/nothing/*.bin")
    with pytest.raises(TypeError, match="decode: expected a callable"):
        CachedDataset("samples", decode=b"not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefetch: expected an integer >= 0"):
        CachedDataset("samples", prefetch=-1)
    with pytest.raises(QuantityError, match="max_bytes_in_flight"):
        CachedDataset("samples", max_bytes_in_flight="lots")
    with pytest.raises(ValueError, match="max_bytes_in_flight: expected a positive size"):
        CachedDataset("samples", max_bytes_in_flight=0)
    with pytest.raises(TypeError, match="cache_or_name"):
        CachedDataset(42)  # type: ignore[arg-type]
    with pytest.raises(LookupError, match="missing"):
        CachedDataset("missing")
    with pytest.raises(FileNotFoundError, match="/nope.bin"):
        CachedDataset("samples", paths=["/nope.bin"])
    dataset = CachedDataset("samples", decode=raw_bytes)
    with pytest.raises(IndexError, match="index: 40 is out of range"):
        dataset[40]
    with pytest.raises(ValueError, match="shuffle"):
        dataset.loader(shuffle=True, sampler=[0, 1])
    with pytest.raises(ValueError, match="batch_size"):
        dataset.loader(batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        dataset.loader(num_workers=-1)
    with pytest.raises(TypeError, match="dataset: expected a CachedDataset"):
        PrefetchSampler([0, 1], [b"a", b"b"])  # type: ignore[arg-type]
