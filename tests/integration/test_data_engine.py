"""DatasetCache against real sources (a folder, moto's S3 server, a loopback HTTP server) and real processes:
SIGKILL in the middle of a block write, four processes reading the same cold files at once."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from shipyard.data.engine import DatasetCache, SourceError
from shipyard.data.spec import DatasetConfig

KIB = 1024
BLOCK = 64 * KIB


def payload(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{seed}".encode()).digest(n)


def dataset(home: Path, mounts: list[dict], *, quota: str = "16Mi", block: str = "64Ki", name: str = "ds",
            eviction: str = "scan-resistant", ttl: str = "5m") -> DatasetConfig:
    """Resolve and save a Dataset + CacheRuntime the way the control plane does."""
    doc = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": name},
           "spec": {"mounts": mounts}}
    runtime = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "CacheRuntime", "metadata": {"name": name},
               "spec": {"runtimeClassName": "shipyard",
                        "options": {"blockSize": block, "evictionPolicy": eviction, "metadataTTL": ttl},
                        "worker": {"tieredStore": {"levels": [{"emptyDir": {"quota": quota}}]}}}}
    config = DatasetConfig.from_documents(doc, runtime, home=home)
    config.save()
    return config


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("SHIPYARD_HOME", str(folder))
    return folder


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


# -- a loopback HTTP file server with Range support and request counters


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _count(self) -> None:
        kind = "range" if "Range" in self.headers else self.command
        with self.server.lock:
            self.server.counts[kind] += 1
        time.sleep(self.server.delay)

    def do_GET(self) -> None:
        self._count()
        if self.path.startswith("/private/"):
            self.send_error(403, "Forbidden")
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        self._count()
        super().do_HEAD()

    def send_head(self):
        path = self.translate_path(self.path)
        match = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if not match or not os.path.isfile(path):
            return super().send_head()
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
            handle.seek(start)
            data = handle.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return io.BytesIO(data)


@pytest.fixture
def http_source(tmp_path):
    """(folder, base URL, server) of a threaded loopback HTTP server over a folder."""
    folder = tmp_path / "web"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(folder)))
    server.counts, server.lock, server.delay = Counter(), threading.Lock(), 0.0
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


# -- sources


def test_local_folder_listing_reading_and_several_mounts(home, tmp_path):
    import fsspec

    write_tree(tmp_path / "src", {"train/a.bin": payload(3 * BLOCK + 7, 1), "train/deep/b.bin": payload(10, 2),
                                  "readme.txt": b"hello"})
    fsspec.filesystem("memory").pipe_file(f"/{tmp_path.name}/labels.json", b'{"a": 1}')
    dataset(home, [{"mountPoint": f"local://{tmp_path / 'src'}", "name": "local", "path": "/data"},
                   {"mountPoint": f"memory://{tmp_path.name}", "name": "mem", "path": "/meta"}])
    with DatasetCache.open("ds") as cache:
        entries = cache.list()
        assert [(e.path, e.size) for e in entries] == [
            ("/data/readme.txt", 5), ("/data/train/a.bin", 3 * BLOCK + 7), ("/data/train/deep/b.bin", 10),
            ("/meta/labels.json", 8)]
        assert entries[1].url == f"file://{tmp_path / 'src'}/train/a.bin"
        assert entries[1].version.startswith("mtime:")
        assert [e.path for e in cache.list("/data/train")] == ["/data/train/a.bin", "/data/train/deep/b.bin"]
        assert [e.path for e in cache.glob("/data/**/*.bin")] == ["/data/train/a.bin", "/data/train/deep/b.bin"]
        assert cache.read("/data/train/a.bin") == payload(3 * BLOCK + 7, 1)
        assert cache.read_range("/data/train/a.bin", BLOCK - 3, BLOCK + 3) == payload(3 * BLOCK + 7, 1)[BLOCK - 3:BLOCK + 3]
        assert cache.read_range("/data/train/a.bin", 3 * BLOCK, 10**9) == payload(3 * BLOCK + 7, 1)[3 * BLOCK:]
        assert cache.read("/meta/labels.json") == b'{"a": 1}'
        assert cache.sync_metadata() == (3 * BLOCK + 7 + 10 + 5 + 8, 4)
        states = cache.stats().cache_states()
        assert states["cachedPercentage"] == f"{100 * (3 * BLOCK + 7 + 8) / (3 * BLOCK + 30):.1f}%"
        with pytest.raises(FileNotFoundError, match="/data/nope.bin: not found in dataset 'default/ds'"):
            cache.info("/data/nope.bin")
        with cache.open_file("/data/train/a.bin") as handle:
            handle.seek(-4, os.SEEK_END)
            assert handle.read() == payload(3 * BLOCK + 7, 1)[-4:]
            handle.seek(5)
            buffer = bytearray(10)
            assert handle.readinto(buffer) == 10 and bytes(buffer) == payload(3 * BLOCK + 7, 1)[5:15]


def test_s3_mount_with_secret_references(home, tmp_path, s3, monkeypatch):
    s3.create_bucket(Bucket="datasets")
    for i in range(3):
        s3.put_object(Bucket="datasets", Key=f"imgs/part-{i}.bin", Body=payload(2 * BLOCK + i, i))
    secrets = tmp_path / "secrets"
    (secrets / "s3-creds").mkdir(parents=True)
    (secrets / "s3-creds" / "id").write_text("key-id-from-a-secret-file")
    monkeypatch.setenv("SHIPYARD_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("SECRET_KEY", "secret-from-the-environment")
    creds = [{"name": "key", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "id"}}},
             {"name": "secret", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "secret-key"}}}]
    dataset(home, [{"mountPoint": "s3://datasets/imgs", "name": "imgs", "path": "/",
                    "options": {"client_kwargs.endpoint_url": os.environ["AWS_ENDPOINT_URL"]},
                    "encryptOptions": creds}])
    saved = (home / "data" / "default" / "ds" / "dataset.json").read_text()
    assert "from-a-secret-file" not in saved and "from-the-environment" not in saved
    with DatasetCache.open("ds") as cache:
        entries = cache.list()
        assert [(e.path, e.size) for e in entries] == [(f"/part-{i}.bin", 2 * BLOCK + i) for i in range(3)]
        assert all(e.version.startswith("etag:") for e in entries)
        assert all(cache.read(f"/part-{i}.bin") == payload(2 * BLOCK + i, i) for i in range(3))
        cache.reset_stats()
        assert all(cache.read(f"/part-{i}.bin") == payload(2 * BLOCK + i, i) for i in range(3))
        assert (cache.stats().hit_ratio, cache.stats().ufs_requests) == (1.0, 0)
        # a new object (new ETag): after sync_metadata the new bytes are served and the old blocks are gone
        s3.put_object(Bucket="datasets", Key="imgs/part-0.bin", Body=payload(BLOCK, 99))
        cache.sync_metadata()
        assert cache.read("/part-0.bin") == payload(BLOCK, 99)
        assert cache.stats().cached_bytes == BLOCK + (2 * BLOCK + 1) + (2 * BLOCK + 2)
        written = cache.write_file("/new/out.bin", b"via the cache")
        assert written.url == "s3://datasets/imgs/new/out.bin"
        assert s3.get_object(Bucket="datasets", Key="imgs/new/out.bin")["Body"].read() == b"via the cache"
        assert cache.read("/new/out.bin") == b"via the cache"


def test_http_source_and_warm_reads_ask_the_source_nothing(home, http_source):
    folder, url, server = http_source
    write_tree(folder, {"a.bin": payload(3 * BLOCK, 5), "sub/b.bin": payload(100, 6)})
    dataset(home, [{"mountPoint": url + "/", "name": "web", "path": "/web"}])
    with DatasetCache.open("ds") as cache:
        assert [(e.path, e.size) for e in cache.list()] == [("/web/a.bin", 3 * BLOCK), ("/web/sub/b.bin", 100)]
        assert cache.read("/web/a.bin") == payload(3 * BLOCK, 5)
        assert cache.read("/web/sub/b.bin") == payload(100, 6)
        assert server.counts["range"] == 4
    before = dict(server.counts)
    with DatasetCache.open("ds") as cache:                 # another reader, later: metadata from the index
        cache.reset_stats()
        assert cache.read("/web/a.bin") == payload(3 * BLOCK, 5)
        assert cache.list()[0].path == "/web/a.bin"
        stats = cache.stats()
        assert (stats.hit_ratio, stats.ufs_requests, stats.metadata_requests) == (1.0, 0, 0)
    assert dict(server.counts) == before                   # not a GET, not a HEAD


def test_unreachable_source_names_the_url(home):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    dataset(home, [{"mountPoint": f"http://127.0.0.1:{port}/data/", "name": "web", "path": "/web"}])
    with DatasetCache.open("ds") as cache:
        with pytest.raises(SourceError, match=rf"cannot list http://127.0.0.1:{port}/data: the source is unreachable"):
            cache.list()
        with pytest.raises(SourceError, match=rf"http://127.0.0.1:{port}/data/x.bin: the source is unreachable"):
            cache.read("/web/x.bin")


def test_access_denied_hints_at_credentials(home, http_source):
    folder, url, server = http_source
    write_tree(folder, {"private/a.bin": b"secret"})
    dataset(home, [{"mountPoint": url + "/private/", "name": "web", "path": "/"}])
    with DatasetCache.open("ds") as cache:
        with pytest.raises(SourceError, match=rf"{url}/private/a.bin: access denied .*check the mount's credentials"):
            cache.read_range("/a.bin", 0, 3)


def test_changed_local_file_serves_new_bytes_after_sync(home, tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"a.bin": payload(2 * BLOCK, 1)})
    dataset(home, [{"mountPoint": str(src), "name": "src", "path": "/"}])
    with DatasetCache.open("ds") as cache:
        assert cache.read("/a.bin") == payload(2 * BLOCK, 1)
        (src / "a.bin").write_bytes(payload(2 * BLOCK + 1, 2))
        os.utime(src / "a.bin", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        assert cache.sync_metadata() == (2 * BLOCK + 1, 1)
        assert cache.stats().cached_bytes == 0                  # the old version's blocks were dropped
        assert cache.read("/a.bin") == payload(2 * BLOCK + 1, 2)


def test_write_file_to_a_read_only_mount_names_the_mount(home, tmp_path):
    write_tree(tmp_path / "ro", {"a.txt": b"a"})
    (tmp_path / "rw").mkdir()
    dataset(home, [{"mountPoint": str(tmp_path / "ro"), "name": "frozen", "path": "/ro", "readOnly": True},
                   {"mountPoint": str(tmp_path / "rw"), "name": "scratch", "path": "/rw"}])
    with DatasetCache.open("ds") as cache:
        with pytest.raises(PermissionError, match=r"cannot write /ro/a.txt: mount 'frozen' .* is readOnly"):
            cache.write_file("/ro/a.txt", b"b")
        assert (tmp_path / "ro" / "a.txt").read_bytes() == b"a"
        cache.write_file("/rw/x/y.txt", b"one")
        assert cache.read("/rw/x/y.txt") == b"one"
        cache.write_file("/rw/x/y.txt", b"second version")     # the cached block of "one" is invalidated
        assert cache.read("/rw/x/y.txt") == b"second version"
        local = tmp_path / "upload.bin"
        local.write_bytes(payload(BLOCK + 1))
        assert cache.put_file(local, "/rw/up.bin").size == BLOCK + 1
        assert (tmp_path / "rw" / "up.bin").read_bytes() == payload(BLOCK + 1)


# -- processes

KILLED_WRITER = r"""
import os, sys, time
from pathlib import Path
from shipyard.data.cache.blocks import BlockStore
from shipyard.data.cache.index import Index
from shipyard.data.engine import DatasetCache

phase, marker = sys.argv[1], Path(sys.argv[2])

def stop_here():
    marker.write_text(str(os.getpid()))
    time.sleep(60)

if phase == "tmp":
    def half_written(tmp, data):
        with open(tmp, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            stop_here()
    BlockStore._write_tmp = staticmethod(half_written)
else:
    Index.insert_block = lambda self, row: stop_here()   # renamed into place, not indexed yet
DatasetCache.open("ds").read("/a.bin")
"""


@pytest.mark.parametrize("phase, swept", [("tmp", {"tmp": 1, "files": 0, "rows": 0}),
                                          ("rename", {"tmp": 0, "files": 1, "rows": 0})])
def test_sigkill_mid_write_leaves_no_corrupt_block(home, tmp_path, phase, swept):
    src = tmp_path / "src"
    write_tree(src, {"a.bin": payload(BLOCK, 3)})
    config = dataset(home, [{"mountPoint": str(src), "name": "src", "path": "/"}])
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, phase, str(marker)], env=os.environ.copy())
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert child.poll() is None, "the writer exited early"
        assert time.monotonic() < deadline, "the writer never reached the write"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    tier = Path(config.cache.levels[0].path)
    leftovers = list((tier / "tmp").iterdir()) + [p for p in (tier / "blocks").rglob("*") if p.is_file()]
    assert len(leftovers) == 1
    with DatasetCache.open("ds") as cache:
        assert cache.swept == swept
        assert [p for p in (tier / "blocks").rglob("*") if p.is_file()] == []
        assert list((tier / "tmp").iterdir()) == []
        assert not cache.is_cached("/a.bin")
        assert cache.read("/a.bin") == payload(BLOCK, 3)
        assert cache.stats().corrupt_blocks == 0


READER = r"""
import hashlib, json, random, sys, time
from pathlib import Path
from shipyard.data.engine import DatasetCache

ready, go, out, seed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
cache = DatasetCache.open("ds")
names = [e.path for e in cache.list()]
random.Random(seed).shuffle(names)
ready.write_text("ok")
while not go.exists():
    time.sleep(0.005)
digests = {}
for name in names:
    ranges = [(name, start, start + 40_000) for start in range(0, cache.info(name).size, 40_000)]
    digests[name] = hashlib.sha256(b"".join(cache.read_ranges(ranges, max_concurrency=4))).hexdigest()
cache.close()
out.write_text(json.dumps(digests))
"""


def test_four_processes_fetch_each_cold_block_once(home, tmp_path, http_source):
    folder, url, server = http_source
    server.delay = 0.01
    files = {f"shard-{i}.bin": payload(3 * BLOCK + 1000 * i, i) for i in range(6)}
    write_tree(folder, files)
    dataset(home, [{"mountPoint": url + "/", "name": "web", "path": "/"}])
    with DatasetCache.open("ds") as cache:
        cache.sync_metadata()                     # the listing is shared through the index
    go = tmp_path / "go"
    children = []
    for i in range(4):
        args = [str(tmp_path / f"ready-{i}"), str(go), str(tmp_path / f"out-{i}.json"), str(i)]
        children.append(subprocess.Popen([sys.executable, "-c", READER, *args], env=os.environ.copy()))
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{i}").exists() for i in range(4)):
        assert all(c.poll() is None for c in children) and time.monotonic() < deadline
        time.sleep(0.01)
    go.write_text("go")
    assert [c.wait(timeout=90) for c in children] == [0, 0, 0, 0]
    expected = {f"/{name}": hashlib.sha256(data).hexdigest() for name, data in files.items()}
    for i in range(4):
        assert json.loads((tmp_path / f"out-{i}.json").read_text()) == expected
    unique_blocks = sum(-(-len(data) // BLOCK) for data in files.values())      # 23
    assert server.counts["range"] == unique_blocks
    with DatasetCache.open("ds") as cache:
        stats = cache.stats()
        assert (stats.ufs_requests, stats.corrupt_blocks, stats.misses) == (unique_blocks, 0, unique_blocks)
        assert stats.hits > 0 and stats.cached_bytes == sum(len(d) for d in files.values())


_PARENT: list[DatasetCache] = []


def _read_inherited(name: str) -> str:
    return hashlib.sha256(_PARENT[0].read(name)).hexdigest()


def _read_pickled(args: tuple[DatasetCache, str]) -> str:
    cache, name = args
    return hashlib.sha256(cache.read(name)).hexdigest()


def test_forked_and_pickled_caches_in_worker_processes(home, http_source):
    """Like PyTorch DataLoader workers: forked children inherit the parent's DatasetCache (with its
    connection, HTTP client and flusher thread); a pickled one reopens the dataset."""
    import multiprocessing

    folder, url, server = http_source
    files = {f"s{i}.bin": payload(2 * BLOCK + i, i) for i in range(4)}
    write_tree(folder, files)
    dataset(home, [{"mountPoint": url + "/", "name": "web", "path": "/"}])
    cache = DatasetCache.open("ds")
    _PARENT[:] = [cache]
    assert cache.read("/s0.bin") == files["s0.bin"]
    cache.list()
    expected = [hashlib.sha256(files[f"s{i}.bin"]).hexdigest() for i in range(4)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(_read_inherited, [f"/s{i}.bin" for i in range(4)] * 2) == expected * 2
    with multiprocessing.get_context("forkserver").Pool(2) as pool:
        assert pool.map(_read_pickled, [(cache, f"/s{i}.bin") for i in range(4)]) == expected
    assert server.counts["range"] == sum(-(-len(d) // BLOCK) for d in files.values())
    assert cache.read("/s3.bin") == files["s3.bin"]
    stats = cache.stats()
    assert stats.ufs_requests == server.counts["range"] and stats.hits > 0
    cache.close()
    _PARENT.clear()
