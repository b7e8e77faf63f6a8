"""SlowSource: the throttled loopback HTTP file server the data-cache benchmark reads from (real sockets)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import fsspec
import pytest

from shipyard.data.slow_source import SlowSource, fetch_stats, parse_bandwidth


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "train" / "deep").mkdir(parents=True)
    (root / "a.bin").write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    (root / "train" / "x 1.bin").write_bytes(b"x" * 3000)
    (root / "train" / "deep" / "y.txt").write_bytes(b"hello\n")
    (root / "empty.bin").write_bytes(b"")
    return root


def request(source: SlowSource, method: str, path: str, headers: dict[str, str] | None = None):
    connection = http.client.HTTPConnection(source.host, source.port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_get_whole_file_and_ranges(tree: Path) -> None:
    data = (tree / "a.bin").read_bytes()
    with SlowSource(tree, latency_ms=0, bandwidth=None) as source:
        status, headers, body = request(source, "GET", "/a.bin")
        assert (status, body, headers["Content-Length"]) == (200, data, str(len(data)))
        assert headers["Accept-Ranges"] == "bytes"

        status, headers, body = request(source, "GET", "/a.bin", {"Range": "bytes=100-199"})
        assert (status, body, headers["Content-Range"]) == (206, data[100:200], f"bytes 100-199/{len(data)}")
        status, _, body = request(source, "GET", "/a.bin", {"Range": "bytes=10000-"})
        assert (status, body) == (206, data[10000:])
        status, _, body = request(source, "GET", "/a.bin", {"Range": "bytes=-40"})
        assert (status, body) == (206, data[-40:])
        status, _, body = request(source, "GET", "/a.bin", {"Range": "bytes=10000-99999"})  # end clipped
        assert (status, body) == (206, data[10000:])
        status, headers, _ = request(source, "GET", "/a.bin", {"Range": f"bytes={len(data)}-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
        status, _, body = request(source, "GET", "/a.bin", {"Range": "bytes=0-1,5-6"})  # multi-range: ignored
        assert (status, body) == (200, data)

        stats = source.stats()
        assert stats["ranges"]["/a.bin"] == [[0, len(data)], [100, 200], [10000, len(data)], [len(data) - 40, len(data)],
                                             [10000, len(data)], [0, len(data)]]
        assert stats["range_gets"] == 4 and stats["gets"] == 7
        assert stats["bytes_sent"] == sum(end - start for start, end in stats["ranges"]["/a.bin"])


def test_head_and_missing_files(tree: Path) -> None:
    with SlowSource(tree, latency_ms=0, bandwidth=None) as source:
        status, headers, body = request(source, "HEAD", "/train/x%201.bin")
        assert (status, body, headers["Content-Length"]) == (200, b"", "3000")
        assert headers["ETag"].startswith('"') and "GMT" in headers["Last-Modified"]
        assert request(source, "GET", "/nope.bin")[0] == 404
        assert request(source, "GET", "/../../etc/passwd")[0] == 404
        assert request(source, "GET", "/%2e%2e/%2e%2e/etc/passwd")[0] == 404
        status, headers, body = request(source, "GET", "/empty.bin")
        assert (status, body, headers["Content-Length"]) == (200, b"", "0")
        stats = source.stats()
        assert stats["heads"] == 1 and stats["not_found"] == 3 and stats["bytes_sent"] == 0


def test_etag_changes_when_the_file_changes(tree: Path) -> None:
    path = tree / "a.bin"
    with SlowSource(tree, latency_ms=0, bandwidth=None) as source:
        first = request(source, "HEAD", "/a.bin")[1]["ETag"]
        assert request(source, "HEAD", "/a.bin")[1]["ETag"] == first  # stable while unchanged
        stat = path.stat()
        path.write_bytes(b"z" * stat.st_size)  # same size, new content and mtime
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        second = request(source, "HEAD", "/a.bin")[1]["ETag"]
        assert second != first
        path.write_bytes(b"short")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same mtime, other size
        assert request(source, "HEAD", "/a.bin")[1]["ETag"] not in (first, second)


def test_fsspec_http_lists_finds_and_reads(tree: Path) -> None:
    with SlowSource(tree, latency_ms=1, bandwidth=None) as source:
        fs = fsspec.filesystem("http", skip_instance_cache=True)
        found = fs.find(source.url)
        base = source.url
        assert found == [f"{base}/a.bin", f"{base}/empty.bin", f"{base}/train/deep/y.txt", f"{base}/train/x%201.bin"]
        listing = fs.ls(f"{base}/train/", detail=True)
        assert {(e["name"], e["type"]) for e in listing} == {(f"{base}/train/deep/", "directory"),
                                                              (f"{base}/train/x%201.bin", "file")}
        assert fs.cat_file(f"{base}/train/x%201.bin") == b"x" * 3000
        assert fs.cat_file(f"{base}/a.bin", start=5, end=9) == bytes([5, 6, 7, 8])
        info = fs.info(f"{base}/a.bin")
        assert info["size"] == 10240 and "ETag" in info
        with fs.open(f"{base}/a.bin", block_size=1024) as handle:  # seekable random access via ranges
            handle.seek(5000)
            assert handle.read(10) == (tree / "a.bin").read_bytes()[5000:5010]
        assert source.stats()["listings"] >= 3


def test_stats_over_http_and_reset(tree: Path) -> None:
    with SlowSource(tree, latency_ms=0, bandwidth=None) as source:
        request(source, "GET", "/a.bin", {"Range": "bytes=0-9"})
        remote = fetch_stats(source.url)
        assert remote["requests"] == 1 and remote["range_gets"] == 1 and remote["bytes_sent"] == 10
        assert remote["ranges"] == {"/a.bin": [[0, 10]]}
        assert fetch_stats(source.url)["requests"] == 1  # reading the counters is not counted
        after = fetch_stats(source.url, reset=True)
        assert after["requests"] == 0 and after["ranges"] == {} and source.stats()["bytes_sent"] == 0
        with urllib.request.urlopen(source.url + "/_stats") as response:
            assert response.headers["Content-Type"] == "application/json"
            assert json.loads(response.read())["requests"] == 0


def test_latency_is_paid_before_every_request(tree: Path) -> None:
    with SlowSource(tree, latency_ms=60, bandwidth=None) as source:
        started = time.monotonic()
        for _ in range(3):
            request(source, "HEAD", "/a.bin")
        assert time.monotonic() - started >= 3 * 0.060 * 0.9


def test_one_bandwidth_budget_shared_by_all_connections(tmp_path: Path) -> None:
    size, files, cap = 384 * 1024, 4, 4 * 2**20
    for index in range(files):
        (tmp_path / f"f{index}.bin").write_bytes(os.urandom(size))
    with SlowSource(tmp_path, latency_ms=0, bandwidth=cap) as source:
        results: list[bytes] = []

        def fetch(index: int) -> None:
            results.append(request(source, "GET", f"/f{index}.bin")[2])

        threads = [threading.Thread(target=fetch, args=(index,)) for index in range(files)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    assert sorted(len(body) for body in results) == [size] * files
    # Parallel connections together stay near the cap (loose: a slow machine only lowers the rate).
    assert files * size / elapsed <= 1.5 * cap


def test_many_clients_connecting_at_once(tree: Path) -> None:
    # socketserver's default listen backlog (5) drops SYNs when 16+ readers connect at once, and the
    # kernel retries them after 1 s: parallel readers then see 1 s stalls. The backlog must be large.
    from shipyard.data.slow_source import _Server

    assert _Server.request_queue_size >= 128
    with SlowSource(tree, latency_ms=5, bandwidth=None) as source:
        bodies: list[bytes] = []
        threads = [threading.Thread(target=lambda: bodies.append(request(source, "GET", "/a.bin")[2]))
                   for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert bodies == [(tree / "a.bin").read_bytes()] * 32
        assert source.stats()["gets"] == 32


def test_a_reader_hanging_up_mid_body_is_not_an_error(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(2 * 2**20))
    with SlowSource(tmp_path, latency_ms=0, bandwidth=2 * 2**20) as source:
        client = socket.create_connection((source.host, source.port), timeout=10)
        client.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        client.close()
        deadline = time.monotonic() + 20
        while source._connections and time.monotonic() < deadline:  # the handler thread notices and ends
            time.sleep(0.05)
        assert not source._connections
        assert request(source, "GET", "/big.bin", {"Range": "bytes=0-9"})[0] == 206  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_bad_arguments_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root: expected an existing folder"):
        SlowSource(tmp_path / "missing")
    with pytest.raises(ValueError, match="latency_ms"):
        SlowSource(tmp_path, latency_ms=-1)
    with pytest.raises(ValueError, match="port"):
        SlowSource(tmp_path, port=70000)
    with pytest.raises(ValueError, match="bandwidth: expected bytes per second"):
        parse_bandwidth("fast")
    with pytest.raises(RuntimeError, match="not started"):
        SlowSource(tmp_path).url
    assert parse_bandwidth("32MiB") == parse_bandwidth("32Mi") == parse_bandwidth("32MiB/s") == 32 * 2**20
    assert parse_bandwidth("0") is None and parse_bandwidth(None) is None and parse_bandwidth(1e6) == 1e6


def test_stop_closes_keep_alive_connections(tree: Path) -> None:
    source = SlowSource(tree, latency_ms=0, bandwidth=None).start()
    connection = http.client.HTTPConnection(source.host, source.port, timeout=5)
    connection.request("GET", "/train/deep/y.txt")
    assert connection.getresponse().read() == b"hello\n"  # the connection stays open (HTTP/1.1)
    url = source.url
    source.stop()
    with pytest.raises((OSError, http.client.HTTPException)):
        connection.request("GET", "/train/deep/y.txt")
        connection.getresponse().read()
    connection.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/a.bin", timeout=2)


def test_command_line(tree: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "shipyard.data.slow_source", str(tree), "--latency-ms", "1",
                                "--bandwidth", "64MiB"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "serving" in line and "64.0 MiB/s" in line, line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "/train/deep/y.txt", timeout=10) as response:
            assert response.read() == b"hello\n"
        assert fetch_stats(url)["gets"] == 1
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    bad = subprocess.run([sys.executable, "-m", "shipyard.data.slow_source", str(tree), "--bandwidth", "fast"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "bandwidth: expected bytes per second" in bad.stderr
