"""Arrow Flight over a real DatasetCache: a real server on a unix socket, clients in other processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

pa = pytest.importorskip("pyarrow")
flight = pytest.importorskip("pyarrow.flight")
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.json as pjson  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from shipyard.data.flight import FlightServer, normalize_location, read_table, server_stats  # noqa: E402
from shipyard.data.spec import CacheConfig, DatasetConfig, Level, Mount, dataset_root  # noqa: E402

pytestmark = pytest.mark.integration

CLIENT = """
import sys
import pyarrow as pa
from shipyard.data.flight import read_table
table = read_table(sys.argv[1], "tables", "sales.parquet")
with pa.OSFile(sys.argv[2], "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
    writer.write_table(table)
"""


def sales(rows: int, seed: int = 0) -> pa.Table:
    import numpy as np

    rng = np.random.default_rng(seed)
    return pa.table({"id": np.arange(rows, dtype=np.int64),
                     "amount": rng.normal(100, 20, rows),
                     "region": pa.array(rng.choice(["north", "south", "east", "west"], rows)),
                     "units": rng.integers(0, 50, rows, dtype=np.int32)})


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of tabular files and a dataset ``default/tables`` over it."""
    home = tmp_path / "home"
    monkeypatch.setenv("SHIPYARD_HOME", str(home))
    src = tmp_path / "src"
    (src / "parts").mkdir(parents=True)
    pq.write_table(sales(20_000), src / "sales.parquet", row_group_size=5_000)
    for i in range(3):
        pq.write_table(sales(1_000 + i, seed=i + 1), src / "parts" / f"part-{i}.parquet")
    (src / "parts" / "README.txt").write_text("not a table")
    (src / "small.csv").write_text("a,b,c\n1,x,0.5\n2,y,1.5\n3,z,\n")
    (src / "events.jsonl").write_text("\n".join(json.dumps({"n": i, "tag": f"t{i % 3}"}) for i in range(50)) + "\n")
    with pa.OSFile(str(src / "frame.arrow"), "wb") as sink, pa.ipc.new_file(sink, sales(300).schema) as writer:
        writer.write_table(sales(300, seed=9))
    root = dataset_root("tables", "default", home)
    DatasetConfig(namespace="default", name="tables", mounts=[Mount(mount_point=str(src), name="src", path="/")],
                  cache=CacheConfig(levels=[Level("SSD", str(root / "cache"), 256 * 1024 * 1024)],
                                    block_size=256 * 1024, metadata_ttl_s=0.0),
                  root=root).save()
    return src


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # tmp_path can be too long for a unix socket (107 bytes)
    folder = Path(tempfile.mkdtemp(prefix="sy-flight-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def server(source: Path, socket_dir: Path) -> Iterator[FlightServer]:
    server = FlightServer(f"grpc+unix://{socket_dir}/flight.sock", home=Path(os.environ["SHIPYARD_HOME"]))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(timeout=10)


def test_four_client_processes_read_one_table_read_once(server: FlightServer, source: Path, tmp_path: Path) -> None:
    expected = pq.read_table(source / "sales.parquet")
    outputs = [tmp_path / f"client-{i}.arrow" for i in range(4)]
    clients = [subprocess.Popen([sys.executable, "-c", CLIENT, server.location, str(out)], stderr=subprocess.PIPE)
               for out in outputs]
    for client in clients:
        _, err = client.communicate(timeout=60)
        assert client.returncode == 0, err.decode()
    for out in outputs:
        with pa.memory_map(str(out)) as stream:
            table = pa.ipc.open_file(stream).read_all()
        assert table.equals(expected)
    stats = server.stats()
    assert stats["table_loads"] == 1                       # 4 readers, one read through the cache
    assert stats["table_hits"] + stats["table_waits"] == 3
    assert stats["rows_sent"] == 4 * 20_000 and stats["errors"] == 0
    assert server_stats(server.location)["table_loads"] == 1


def test_column_projection(server: FlightServer, source: Path) -> None:
    expected = pq.read_table(source / "sales.parquet", columns=["region", "id"])
    table = read_table(server.location, "tables", "/sales.parquet", columns=["region", "id"])
    assert table.equals(expected)
    assert table.column_names == ["region", "id"]
    client = flight.connect(server.location)
    descriptor = flight.FlightDescriptor.for_command(json.dumps(
        {"path": "default/tables/sales.parquet", "columns": ["units"]}).encode())
    info = client.get_flight_info(descriptor)
    assert info.schema.names == ["units"] and info.total_records == 20_000
    assert info.total_bytes == (source / "sales.parquet").stat().st_size
    # once the whole table is in memory, projections are cut from it
    read_table(server.location, "tables", "sales.parquet")
    loads = server.stats()["table_loads"]
    assert read_table(server.location, "tables", "sales.parquet", columns=["amount"]).equals(
        pq.read_table(source / "sales.parquet", columns=["amount"]))
    assert server.stats()["table_loads"] == loads


def test_a_folder_is_one_table_with_an_endpoint_per_file(server: FlightServer, source: Path) -> None:
    files = sorted((source / "parts").glob("*.parquet"))
    expected = pa.concat_tables([pq.read_table(f) for f in files])
    client = flight.connect(server.location)
    info = client.get_flight_info(flight.FlightDescriptor.for_path("default/tables/parts"))
    assert len(info.endpoints) == 3 and info.total_records == expected.num_rows
    assert info.schema.names == expected.schema.names
    assert read_table(server.location, "tables", "parts").equals(expected)
    assert read_table(server.location, "tables", "parts/*.parquet").equals(expected)
    # a whole folder in one do_get, too
    whole = client.do_get(flight.Ticket(b"default/tables/parts")).read_all()
    assert whole.equals(expected)


def test_csv_jsonl_and_arrow_files_match_pyarrow(server: FlightServer, source: Path) -> None:
    assert read_table(server.location, "tables", "small.csv").equals(pcsv.read_csv(source / "small.csv"))
    assert read_table(server.location, "tables", "events.jsonl", columns=["tag"]).equals(
        pjson.read_json(source / "events.jsonl").select(["tag"]))
    with pa.memory_map(str(source / "frame.arrow")) as stream:
        assert read_table(server.location, "tables", "frame.arrow").equals(pa.ipc.open_file(stream).read_all())


def test_listing_names_every_tabular_file(server: FlightServer) -> None:
    client = flight.connect(server.location)
    infos = {"/".join(p.decode() for p in info.descriptor.path): info for info in client.list_flights()}
    assert sorted(infos) == ["default/tables/events.jsonl", "default/tables/frame.arrow",
                             "default/tables/parts/part-0.parquet", "default/tables/parts/part-1.parquet",
                             "default/tables/parts/part-2.parquet", "default/tables/sales.parquet",
                             "default/tables/small.csv"]
    assert infos["default/tables/sales.parquet"].total_records == 20_000
    parts = list(client.list_flights(b"default/tables/parts"))
    assert len(parts) == 3
    assert list(client.list_flights(b"default/other")) == []


def test_errors_name_what_is_wrong_and_the_server_keeps_serving(server: FlightServer, source: Path) -> None:
    with pytest.raises(KeyError, match="default/tables/missing.parquet: no such file or folder"):
        read_table(server.location, "tables", "missing.parquet")
    with pytest.raises(KeyError, match="dataset default/nosuch not found"):
        read_table(server.location, "nosuch", "x.parquet")
    with pytest.raises(ValueError, match="columns: 'price' not in default/tables/sales.parquet"):
        read_table(server.location, "tables", "sales.parquet", columns=["price"])
    with pytest.raises(ValueError, match="not a tabular file"):
        read_table(server.location, "tables", "parts/README.txt")
    client = flight.connect(server.location)
    with pytest.raises(KeyError, match="missing.parquet"):        # plain pyarrow clients see ArrowKeyError
        client.do_get(flight.Ticket(b'{"path": "default/tables/missing.parquet"}')).read_all()
    with pytest.raises(pa.ArrowInvalid, match="ticket.colums: unknown key"):
        client.do_get(flight.Ticket(b'{"path": "default/tables/sales.parquet", "colums": ["id"]}')).read_all()
    with pytest.raises(pa.ArrowInvalid, match="path: expected NAMESPACE/DATASET/path"):
        client.do_get(flight.Ticket(b"tables")).read_all()
    assert server.stats()["errors"] == 7
    # and the next request is served
    assert read_table(server.location, "tables", "sales.parquet").equals(pq.read_table(source / "sales.parquet"))


def test_a_changed_source_file_is_read_again(server: FlightServer, source: Path) -> None:
    first = read_table(server.location, "tables", "small.csv")
    (source / "small.csv").write_text("a,b,c\n10,new,2.5\n")
    stamp = time.time() + 5                                 # a clearly different mtime
    os.utime(source / "small.csv", (stamp, stamp))
    second = read_table(server.location, "tables", "small.csv")
    assert second.equals(pcsv.read_csv(source / "small.csv")) and not second.equals(first)


def test_memory_is_bounded_by_max_memory(source: Path, socket_dir: Path) -> None:
    one = pq.read_table(source / "parts" / "part-2.parquet").nbytes
    server = FlightServer("grpc://127.0.0.1:0", home=Path(os.environ["SHIPYARD_HOME"]), max_memory=int(one * 1.5))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        assert server.location.startswith("grpc://127.0.0.1:") and not server.location.endswith(":0")
        for i in range(3):
            read_table(server.location, "tables", f"parts/part-{i}.parquet")
        stats = server.stats()
        assert stats["memory_bytes"] <= int(one * 1.5) and stats["tables"] == 1 and stats["evictions"] == 2
        read_table(server.location, "tables", "sales.parquet")        # bigger than the budget: served, not kept
        assert server.stats()["tables"] == 1
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_serve_flight_process_stops_on_sigterm(source: Path, socket_dir: Path) -> None:
    sock = socket_dir / "served.sock"
    sock.write_bytes(b"")        # a leftover non-socket file is refused, not deleted
    with pytest.raises(ValueError, match="is not a socket"):
        FlightServer(f"grpc+unix://{sock}")
    sock.unlink()
    code = ("import sys; from shipyard.data.flight import serve_flight; "
            "serve_flight(sys.argv[1], ready=lambda s: print('ready', flush=True))")
    process = subprocess.Popen([sys.executable, "-c", code, f"unix://{sock}"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        assert process.stdout.readline().strip() == b"ready"
        table = read_table(f"grpc+unix://{sock}", "tables", "parts/part-0.parquet")
        assert table.equals(pq.read_table(source / "parts" / "part-0.parquet"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, process.stderr.read().decode()
        assert not sock.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_locations_are_checked() -> None:
    assert normalize_location("/tmp/x.sock") == "grpc+unix:///tmp/x.sock"
    assert normalize_location("unix:///tmp/x.sock") == "grpc+unix:///tmp/x.sock"
    assert normalize_location("127.0.0.1:8815") == "grpc://127.0.0.1:8815"
    with pytest.raises(ValueError, match="location: expected grpc\\+unix"):
        normalize_location("http://example.com")
    with pytest.raises(ValueError, match="location: expected grpc://HOST:PORT"):
        normalize_location("grpc://127.0.0.1")
    with pytest.raises(ValueError, match="longer than 107 bytes"):
        normalize_location("grpc+unix:///" + "x" * 120)
