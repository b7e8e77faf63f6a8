"""Data operations on real datasets (local-folder mounts), real files and real subprocesses:
load, the OnEvent watcher, migrate with checksums, process (python, bash, SQL, memoized) and clean."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from shipyard.data.engine import DatasetCache
from shipyard.data.operations import (
    Endpoint,
    OperationError,
    ProcessSpec,
    SourceWatcher,
    make_processor_from_func,
    process_key,
    run_clean,
    run_load,
    run_migrate,
    run_process,
)
from shipyard.data.spec import DatasetConfig

KB = 1024


class Lines(list):
    """A ``log`` callable that keeps the lines."""

    def __call__(self, line: str) -> None:
        self.append(line)

    def text(self) -> str:
        return "\n".join(self)


def blob(seed: int, size: int) -> bytes:
    return (bytes([seed % 251]) + os.urandom(31)) * (size // 32) + b"x" * (size % 32)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("SHIPYARD_HOME", str(home))
    monkeypatch.delenv("SHIPYARD_NAMESPACE", raising=False)
    return home


@pytest.fixture
def make_dataset(tmp_path: Path, home: Path):
    """``make_dataset(name, {path: bytes})`` -> (DatasetCache, source folder): one local-folder mount at "/"."""
    caches: list[DatasetCache] = []

    def make(name: str, files: dict[str, bytes], read_only: bool = False) -> tuple[DatasetCache, Path]:
        source = tmp_path / f"source-{name}"
        source.mkdir()
        for rel, data in files.items():
            write(source / rel.lstrip("/"), data)
        document = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"mounts": [{"mountPoint": f"local://{source}", "name": "src", "path": "/",
                                         "readOnly": read_only}]}}
        config = DatasetConfig.from_documents(document, None, home=home)
        config.save()
        cache = DatasetCache(config)
        caches.append(cache)
        return cache, source

    yield make
    for cache in caches:
        cache.close()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def bump(path: Path, data: bytes | None = None) -> None:
    """Rewrite a source file (or just touch it) with an mtime surely different from before."""
    before = path.stat().st_mtime_ns
    if data is not None:
        path.write_bytes(data)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


TREE = {"/train/a.bin": blob(1, 300 * KB), "/train/b.bin": blob(2, 200 * KB),
        "/train/deep/c.bin": blob(3, 50 * KB), "/val/d.bin": blob(4, 120 * KB), "/readme.txt": b"hello\n"}


# -- load ---------------------------------------------------------------------------------------------

def test_load_a_glob_then_everything(make_dataset) -> None:
    cache, _ = make_dataset("images", TREE)
    log = Lines()
    result = run_load(cache, ["/train/*.bin"], parallelism=4, load_metadata=True, log=log)
    assert result.files == 2 and result.bytes == 500 * KB and not result.skipped
    assert cache.is_cached("/train/a.bin") and cache.is_cached("/train/b.bin")
    assert not cache.is_cached("/train/deep/c.bin") and not cache.is_cached("/val/d.bin")
    assert cache.stats().cached_bytes == 500 * KB
    assert "metadata synced: 5 files" in log.text()
    assert "progress: 100%" in log.text() and "MB/s" in log[-1] and "already cached" in log[-1]

    log = Lines()
    result = run_load(cache, None, log=log)
    total = sum(len(v) for v in TREE.values())
    assert result.files == 5 and result.bytes == total
    assert result.details["fetchedBytes"] == total - 500 * KB
    assert result.details["cachedAlready"] > 0
    assert cache.stats().cached_bytes == total
    assert all(cache.is_cached(p) for p in TREE)
    assert "the whole dataset" in log.text()

    # a folder and a "**" glob are targets too; loading cached files again fetches nothing
    result = run_load(cache, ["/train", "/**/d.bin"], log=Lines())
    assert result.files == 4 and result.details["fetchedBytes"] == 0


def test_a_target_matching_nothing_is_an_error(make_dataset) -> None:
    cache, _ = make_dataset("images", TREE)
    for target in ("/train/*.png", "/missing.bin", "/nope"):
        with pytest.raises(OperationError, match="matches no file") as info:
            run_load(cache, ["/train/a.bin", target], log=Lines())
        assert repr(target) in str(info.value)
    assert cache.stats().cached_bytes == 0  # nothing was fetched before the error
    with pytest.raises(OperationError, match="parallelism"):
        run_load(cache, None, parallelism=0, log=Lines())


# -- OnEvent watcher ------------------------------------------------------------------------------------

def test_watcher_reports_added_and_modified_files(make_dataset) -> None:
    cache, source = make_dataset("images", TREE)
    cache.list("/")  # a listing in the metadata cache: the watcher must not be fooled by it
    watcher = SourceWatcher(cache, ["/train/**"])
    assert watcher.changes() == []   # the baseline
    assert watcher.changes() == []   # nothing happened

    write(source / "train/new.bin", b"n" * 1000)
    write(source / "val/outside.bin", b"o" * 10)  # not under the target
    assert watcher.changes() == ["/train/new.bin"]

    bump(source / "train/a.bin", blob(9, 301 * KB))   # another size
    bump(source / "train/deep/c.bin")                  # same bytes, another version (mtime)
    assert watcher.changes() == ["/train/a.bin", "/train/deep/c.bin"]

    (source / "train/b.bin").unlink()
    assert watcher.changes() == [] and watcher.removed == ["/train/b.bin"]

    everything = SourceWatcher(cache, None)
    everything.changes()
    write(source / "val/more.bin", b"m")
    assert everything.changes() == ["/val/more.bin"]


# -- migrate --------------------------------------------------------------------------------------------

class FlipFileSystem(LocalFileSystem):
    """A local filesystem whose writes flip the first byte of every file: a corrupting target."""

    protocol = "flipfs"

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("flipfs://"):
            path = path[len("flipfs://"):]
        return super()._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
        handle = super()._open(path, mode=mode, **kwargs)
        return _Flipping(handle) if "w" in mode else handle


class _Flipping(io.RawIOBase):
    def __init__(self, handle) -> None:
        self.handle, self.first = handle, True

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        if self.first and data:
            data, self.first = bytes([data[0] ^ 0xFF]) + data[1:], False
        return self.handle.write(data)

    def close(self) -> None:
        self.handle.close()
        super().close()


fsspec.register_implementation("flipfs", FlipFileSystem, clobber=True)


def test_migrate_dataset_to_external_with_checksums_and_incremental(make_dataset, tmp_path: Path) -> None:
    files = {**TREE, "/train/scratch.tmp": b"junk", "/train/big.bin": blob(5, 3 * 1024 * KB + 7)}
    cache, source = make_dataset("images", files)
    target = tmp_path / "external"
    log = Lines()
    result = run_migrate(Endpoint(cache=cache, path="/train"), Endpoint(uri=f"file://{target}"),
                         parallelism=3, exclude=["*.tmp"], log=log)
    copied = {"a.bin", "b.bin", "deep/c.bin", "big.bin"}
    assert {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()} == copied
    for rel in copied:
        assert (target / rel).read_bytes() == files[f"/train/{rel}"]
    assert result.files == 4 and result.bytes == sum(len(files[f"/train/{r}"]) for r in copied)
    assert result.details | {"throughputMBps": 0} == {"copied": 4, "unchanged": 0, "unchangedBytes": 0,
                                                        "excluded": 1, "checksum": "sha256", "throughputMBps": 0}
    assert "sha256 verified" in result.message and "1 excluded" in log.text()

    again = run_migrate(Endpoint(cache=cache, path="/train"), Endpoint(uri=str(target)), exclude=["*.tmp"],
                        log=Lines())
    assert again.skipped and again.files == 0 and again.details["unchanged"] == 4

    # same size, other bytes on either side: copied again; the rest stays unchanged
    bump(source / "train/b.bin", blob(7, 200 * KB))
    (target / "deep/c.bin").write_bytes(blob(8, 50 * KB))
    third = run_migrate(Endpoint(cache=cache, path="/train/"), Endpoint(uri=str(target)), exclude=["*.tmp"],
                        log=Lines())
    assert (third.details["copied"], third.details["unchanged"]) == (2, 2)
    assert (target / "b.bin").read_bytes() == (source / "train/b.bin").read_bytes()
    assert (target / "deep/c.bin").read_bytes() == files["/train/deep/c.bin"]


def test_migrate_external_to_dataset(make_dataset, tmp_path: Path) -> None:
    external = tmp_path / "bucket"
    payload = {"x.csv": b"a,b\n1,2\n", "sub/y.bin": blob(6, 700 * KB)}
    for rel, data in payload.items():
        write(external / rel, data)
    cache, source = make_dataset("landing", {"/keep.txt": b"keep"})
    result = run_migrate(Endpoint(uri=str(external)), Endpoint(cache=cache, path="/imported"), log=Lines())
    assert result.details["copied"] == 2 and result.bytes == sum(map(len, payload.values()))
    for rel, data in payload.items():
        assert (source / "imported" / rel).read_bytes() == data      # written to the mount's source
        assert cache.read(f"/imported/{rel}") == data                  # and readable through the cache
    again = run_migrate(Endpoint(uri=f"file://{external}/"), Endpoint(cache=cache, path="/imported"), log=Lines())
    assert again.skipped and again.details["unchanged"] == 2

    frozen, _ = make_dataset("frozen", {}, read_only=True)
    with pytest.raises(OperationError, match="x.csv|y.bin") as info:
        run_migrate(Endpoint(uri=str(external)), Endpoint(cache=frozen), log=Lines())
    assert "PermissionError" in str(info.value)
    with pytest.raises(OperationError, match="has no files"):
        run_migrate(Endpoint(uri=str(tmp_path / "empty")), Endpoint(cache=cache), log=Lines())
    with pytest.raises(OperationError, match="to: external storage 'nosuch://x'"):
        run_migrate(Endpoint(cache=cache), Endpoint(uri="nosuch://x"), log=Lines())
    with pytest.raises(OperationError, match="exclude"):
        run_migrate(Endpoint(cache=cache), Endpoint(uri=str(tmp_path / "o")), exclude="*.tmp", log=Lines())
    with pytest.raises(OperationError, match="exactly one"):
        run_migrate(Endpoint(), Endpoint(cache=cache), log=Lines())


def test_migrate_from_an_http_folder_copies_its_files_not_its_listing(make_dataset, tmp_path: Path) -> None:
    """fsspec's http filesystem calls every URL a file; a folder's listing page must not become one."""
    from shipyard.data.slow_source import SlowSource

    payload = {"p1.bin": blob(8, 300 * KB), "p2.bin": blob(9, 5 * KB)}
    for rel, data in payload.items():
        write(tmp_path / "site" / "table" / rel, data)
    cache, source = make_dataset("web", {})
    with SlowSource(tmp_path / "site", latency_ms=0) as site:
        result = run_migrate(Endpoint(uri=f"{site.url}/table"), Endpoint(cache=cache, path="/t"), log=Lines())
    assert result.details["copied"] == 2 and result.bytes == sum(map(len, payload.values()))
    assert sorted(p.name for p in (source / "t").iterdir()) == ["p1.bin", "p2.bin"]
    assert (source / "t" / "p1.bin").read_bytes() == payload["p1.bin"]


def test_migrate_to_s3_and_back(make_dataset, s3) -> None:
    s3.create_bucket(Bucket="archive")
    cache, _ = make_dataset("images", TREE)
    options = {"client_kwargs": {"endpoint_url": s3.meta.endpoint_url}}
    out = run_migrate(Endpoint(cache=cache, path="/train"), Endpoint(uri="s3://archive/v1", storage_options=options),
                      log=Lines())
    assert out.details["copied"] == 3
    listed = s3.list_objects_v2(Bucket="archive", Prefix="v1/")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["v1/a.bin", "v1/b.bin", "v1/deep/c.bin"]
    assert s3.get_object(Bucket="archive", Key="v1/deep/c.bin")["Body"].read() == TREE["/train/deep/c.bin"]

    back, _ = make_dataset("restored", {})
    result = run_migrate(Endpoint(uri="s3://archive/v1", storage_options=options), Endpoint(cache=back, path="/t"),
                         log=Lines())
    assert result.details["copied"] == 3 and back.read("/t/a.bin") == TREE["/train/a.bin"]
    again = run_migrate(Endpoint(cache=cache, path="/train"), Endpoint(uri="s3://archive/v1", storage_options=options),
                        log=Lines())
    assert again.skipped and again.details["unchanged"] == 3


def test_migrate_detects_a_corrupted_target(make_dataset, tmp_path: Path) -> None:
    cache, _ = make_dataset("images", {"/one.bin": blob(1, 100 * KB)})
    target = tmp_path / "flaky"
    log = Lines()
    with pytest.raises(OperationError) as info:
        run_migrate(Endpoint(cache=cache), Endpoint(uri=f"flipfs://{target}"), log=log)
    assert "checksum mismatch" in str(info.value) and "one.bin" in str(info.value)
    assert "checksum mismatch" in log[-1]
    # without checksums the corruption goes unnoticed: the check is what catches it
    result = run_migrate(Endpoint(cache=cache), Endpoint(uri=f"flipfs://{target}"), checksum=False, log=Lines())
    assert result.details["copied"] == 1 and (target / "one.bin").read_bytes() != blob(1, 100 * KB)


# -- process --------------------------------------------------------------------------------------------

CSV = {"/raw/sales_jan.csv": b"region,amount\neu,10\nus,5\n", "/raw/sales_feb.csv": b"region,amount\neu,1\nus,20\n",
       "/other/ignore.txt": b"not input"}

PYTHON_SCRIPT = r'''
import json, os, pathlib, sys
src, out = pathlib.Path(os.environ["DATASET_PATH"]), pathlib.Path(os.environ["OUTPUT_PATH"])
names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
rows = sum(len(p.read_text().splitlines()) - 1 for p in src.rglob("*.csv"))
with open(os.environ["COUNTER"], "a") as f:
    f.write("run\n")
(out / "summary.json").write_text(json.dumps({"files": names, "rows": rows, "tag": os.environ["TAG"],
                                              "url": os.environ["DATASET_URL"], "cwd": os.getcwd()}))
print("summarized", len(names), "files")
'''


def python_spec(cache, out, tmp_path: Path, **changes) -> ProcessSpec:
    fields = dict(command=["python"], source=PYTHON_SCRIPT, env={"TAG": "t1", "COUNTER": str(tmp_path / "runs")},
                  input=cache, sub_path="/raw", output=out, output_path="/results", workdir=tmp_path / "work")
    fields.update(changes)
    return ProcessSpec(**fields)


def test_process_python_memoized_and_rerun_on_change(make_dataset, tmp_path: Path) -> None:
    cache, source = make_dataset("sales", CSV)
    out, out_source = make_dataset("reports", {})
    spec = python_spec(cache, out, tmp_path)
    log = Lines()
    result = run_process(spec, previous_key=None, log=log)
    summary = json.loads(out.read("/results/summary.json"))
    assert summary == {"files": ["sales_feb.csv", "sales_jan.csv"], "rows": 4, "tag": "t1",
                       "url": "dataset://sales/raw", "cwd": str(tmp_path / "work")}
    assert json.loads((out_source / "results/summary.json").read_text())["rows"] == 4
    assert "summarized 2 files" in log and result.files == 2 and not result.skipped
    key = result.details["memoKey"]
    assert key == process_key(spec) and result.details["outputs"] == ["/results/summary.json"]

    skipped = run_process(spec, previous_key=key, log=Lines())
    assert skipped.skipped and skipped.details["memoKey"] == key
    assert (tmp_path / "runs").read_text() == "run\n"   # the script did not run

    assert process_key(python_spec(cache, out, tmp_path, env={"TAG": "t2", "COUNTER": str(tmp_path / "runs")})) != key
    assert process_key(python_spec(cache, out, tmp_path, source=PYTHON_SCRIPT + "\n# v2\n")) != key
    assert process_key(python_spec(cache, out, tmp_path, output_path="/elsewhere")) != key
    write(source / "other/unrelated.txt", b"outside sub_path")
    assert process_key(spec) == key

    bump(source / "raw/sales_jan.csv")   # the same bytes, another version (mtime): the key changes
    assert process_key(spec) != key
    bump(source / "raw/sales_feb.csv", CSV["/raw/sales_feb.csv"] + b"eu,3\n")
    rerun = run_process(spec, previous_key=key, log=Lines())
    assert not rerun.skipped and rerun.details["memoKey"] != key
    assert json.loads(out.read("/results/summary.json"))["rows"] == 5
    assert (tmp_path / "runs").read_text() == "run\nrun\n"


def test_process_bash_streams_stdout_and_stderr(make_dataset, tmp_path: Path) -> None:
    cache, _ = make_dataset("sales", CSV)
    out, out_source = make_dataset("reports", {})
    source = 'set -e\nls "$DATASET_PATH" | sort > "$OUTPUT_PATH/listing.txt"\necho "listed"\necho "careful" >&2\n'
    log = Lines()
    result = run_process(ProcessSpec(command=["bash", "-c"], source=source, env={}, input=cache, sub_path="/raw",
                                     output=out, output_path="/", workdir=tmp_path / "bash"), previous_key=None, log=log)
    assert (out_source / "listing.txt").read_text() == "sales_feb.csv\nsales_jan.csv\n"
    assert "listed" in log and "stderr: careful" in log and result.details["outputFiles"] == 1


def test_failing_script_names_the_exit_code_and_uploads_nothing(make_dataset, tmp_path: Path) -> None:
    cache, _ = make_dataset("sales", CSV)
    out, out_source = make_dataset("reports", {})
    source = ('import os, sys\nopen(os.path.join(os.environ["OUTPUT_PATH"], "partial.txt"), "w").write("half")\n'
              'print("about to fail", file=sys.stderr)\nsys.exit(3)\n')
    with pytest.raises(OperationError) as info:
        run_process(ProcessSpec(command=["python3"], source=source, env={}, input=cache, sub_path="/raw",
                                output=out, workdir=tmp_path / "fail"), previous_key=None, log=Lines())
    assert "exited with code 3" in str(info.value) and "about to fail" in str(info.value)
    assert list(out_source.rglob("*")) == [] and out.list("/", refresh=True) == []

    assert not (tmp_path / "fail/input").exists()  # the input copy is removed after the run

    bad = dict(source="print(1)", env={}, input=cache, workdir=tmp_path / "bad")
    with pytest.raises(OperationError, match="command: 'ruby' is not supported"):
        run_process(ProcessSpec(command=["ruby"], **bad), previous_key=None, log=Lines())
    with pytest.raises(OperationError, match="subPath"):
        run_process(ProcessSpec(command=["python"], sub_path="/nothing-here", **bad), previous_key=None, log=Lines())


def test_cancel_stops_a_running_script(make_dataset, tmp_path: Path) -> None:
    cache, _ = make_dataset("sales", CSV)
    cancel = threading.Event()

    def log(line: str) -> None:
        if line == "started":
            cancel.set()

    source = 'import time\nprint("started")\ntime.sleep(60)\n'
    with pytest.raises(OperationError, match="cancelled"):
        run_process(ProcessSpec(command=["python"], source=source, env={}, input=cache, sub_path="/raw",
                                workdir=tmp_path / "cancel"), previous_key=None, log=log, cancel=cancel)


def test_process_sql_with_duckdb(make_dataset, tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    buffer = io.BytesIO()
    pq.write_table(pa.table({"region": ["eu", "us"], "target": [10, 30]}), buffer)
    cache, _ = make_dataset("sales", {**CSV, "/raw/targets.parquet": buffer.getvalue()})
    out, out_source = make_dataset("reports", {})
    sql = """
        CREATE TEMP TABLE totals AS SELECT region, sum(amount)::BIGINT AS total FROM (
            SELECT * FROM sales_jan UNION ALL SELECT * FROM sales_feb) GROUP BY region;
        SELECT t.region, t.total, g.target, t.total >= g.target AS met
        FROM totals t JOIN targets g USING (region) ORDER BY region;  -- the last statement is the result
    """
    log = Lines()
    run_process(ProcessSpec(command=["sql"], source=sql, env={}, input=cache, sub_path="/raw", output=out,
                            output_path="/sql", workdir=tmp_path / "sql"), previous_key=None, log=log)
    table = pq.read_table(out_source / "sql/result.parquet")
    assert table.to_pylist() == [{"region": "eu", "total": 11, "target": 10, "met": True},
                                 {"region": "us", "total": 25, "target": 30, "met": False}]
    assert "result: 2 rows -> result.parquet" in log
    assert not any(line.startswith("view input") for line in log)  # the files' columns differ

    # files with the same columns: also one view "input" over all of them
    same, _ = make_dataset("monthly", CSV)
    log = Lines()
    run_process(ProcessSpec(command=["sql"], source="SELECT count(*) AS n, sum(amount)::BIGINT AS total FROM input", env={},
                            input=same, sub_path="/raw", output=out, output_path="/n", workdir=tmp_path / "sql2"),
                previous_key=None, log=log)
    assert "view input: all 2 files" in log
    assert pq.read_table(out_source / "n/result.parquet").to_pylist() == [{"n": 4, "total": 36}]
    with pytest.raises(OperationError) as info:
        run_process(ProcessSpec(command=["sql"], source="SELECT * FROM no_such_table", env={}, input=cache,
                                sub_path="/raw", output=out, output_path="/bad", workdir=tmp_path / "sql3"),
                    previous_key=None, log=Lines())
    assert "SQL failed" in str(info.value) and "no_such_table" in str(info.value)
    assert not (out_source / "bad").exists()


def count_csv_rows(dataset_path, output_path):
    """A processor function: its source is shipped, so it imports what it needs itself."""
    import pathlib

    rows = sum(len(p.read_text().splitlines()) - 1 for p in pathlib.Path(dataset_path).rglob("*.csv"))
    (pathlib.Path(output_path) / "rows.txt").write_text(str(rows))
    print("rows:", rows)


def test_make_processor_from_func_end_to_end(make_dataset, tmp_path: Path) -> None:
    cache, _ = make_dataset("sales", CSV)
    out, _ = make_dataset("reports", {})
    processor = make_processor_from_func(count_csv_rows)
    assert processor["command"] == ["python"] and "def count_csv_rows(dataset_path, output_path):" in processor["source"]
    log = Lines()
    run_process(ProcessSpec(command=processor["command"], source=processor["source"], env={}, input=cache,
                            sub_path="/raw", output=out, output_path="/", workdir=tmp_path / "fn"),
                previous_key=None, log=log)
    assert out.read("/rows.txt") == b"4" and "rows: 4" in log

    with_packages = make_processor_from_func(count_csv_rows, packages=["tqdm>=4"])["source"]
    assert "pip" in with_packages and "--target" in with_packages and "'tqdm>=4'" in with_packages
    compile(with_packages, "processor", "exec")

    def nested(dataset_path, output_path):
        pass

    with pytest.raises(ValueError, match="top level"):
        make_processor_from_func(nested)
    with pytest.raises(ValueError, match="def"):
        make_processor_from_func(lambda a, b: None)
    with pytest.raises(ValueError, match="dataset_path, output_path"):
        make_processor_from_func(three_arguments)


def three_arguments(a, b, c):
    pass


# -- clean ----------------------------------------------------------------------------------------------

def test_clean_a_path_then_everything(make_dataset) -> None:
    cache, source = make_dataset("images", TREE)
    run_load(cache, None, log=Lines())
    log = Lines()
    result = run_clean(cache, ["/train/*.bin"], log=log)
    assert result.files == 2 and result.bytes == 500 * KB and result.details["blocks"] >= 2
    assert not cache.is_cached("/train/a.bin") and cache.is_cached("/val/d.bin")
    assert "freed" in log[-1]
    total = sum(len(v) for v in TREE.values())
    assert cache.stats().cached_bytes == total - 500 * KB

    everything = run_clean(cache, None, log=Lines())
    assert everything.files == 3 and everything.bytes == total - 500 * KB
    assert cache.stats().cached_bytes == 0
    assert (source / "train/a.bin").exists()  # the source is untouched
    nothing = run_clean(cache, None, log=Lines())
    assert nothing.skipped and nothing.files == 0 and nothing.message == "nothing cached to free"
