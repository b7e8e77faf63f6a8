"""DataProcess: run a script (python, bash, sh) or SQL (DuckDB) over a dataset's files, memoized.

A run materializes the files under ``sub_path`` (read through the cache) into ``<workdir>/input``
(``$DATASET_PATH``), gives the code an empty ``<workdir>/output`` (``$OUTPUT_PATH``) and, only when it
succeeds, uploads the output folder's files to the output dataset. The memo key hashes the input files'
(path, version, size), the command, the source, the environment and the output target; a run whose key
equals the previous successful run's is skipped without running anything.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

from ...quantity import format_bytes
from .result import Log, OperationError, OperationResult, locked
from .watch import normalize, resolve_target

if TYPE_CHECKING:
    from ..engine import DatasetCache, FileEntry

CHUNK = 1024 * 1024
STDERR_TAIL = 10
_SCRIPT_SUFFIX = {"python": ".py", "bash": ".sh", "sh": ".sh"}
_KINDS = ("python", "bash", "sh", "sql")
_SQL_READERS = {".parquet": "read_parquet", ".csv": "read_csv_auto", ".tsv": "read_csv_auto",
                ".jsonl": "read_json_auto", ".ndjson": "read_json_auto", ".json": "read_json_auto"}


def _default_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="shipyard-process-"))


@dataclass
class ProcessSpec:
    """What a DataProcess runs: ``command`` is ``["python"]``, ``["bash"]``, ``["sh"]`` or ``["sql"]``
    (``source`` is then DuckDB SQL); a trailing ``-c`` (Fluid's ``bash -c`` style) is accepted."""

    command: list[str]
    source: str
    env: dict[str, str]
    input: DatasetCache
    sub_path: str = "/"
    output: DatasetCache | None = None
    output_path: str = "/"
    workdir: Path = field(default_factory=_default_workdir)


def _kind(spec: ProcessSpec) -> str:
    command = spec.command
    if not isinstance(command, (list, tuple)) or not command or not all(isinstance(c, str) for c in command):
        raise OperationError(f"command: expected a list such as ['python'], ['bash'], ['sh'] or ['sql'], "
                             f"got {command!r}")
    kind = os.path.basename(command[0])
    kind = "python" if re.fullmatch(r"python(3(\.\d+)?)?", kind) else kind
    if kind not in _KINDS:
        raise OperationError(f"command: {command[0]!r} is not supported; expected one of "
                             f"{', '.join(_KINDS)}")
    if not isinstance(spec.source, str) or not spec.source.strip():
        raise OperationError("source: expected the script or SQL text, got nothing")
    if not isinstance(spec.env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in spec.env.items()):
        raise OperationError(f"env: expected a map of strings to strings, got {spec.env!r}")
    return kind


def _inputs(spec: ProcessSpec) -> list[FileEntry]:
    try:
        return sorted(resolve_target(spec.input, spec.sub_path, refresh=True), key=lambda e: e.path)
    except OSError as exc:
        raise OperationError(f"listing {_dataset_url(spec.input, spec.sub_path)} failed: {exc}") from exc


def _dataset_url(cache: DatasetCache, path: str) -> str:
    return f"dataset://{cache.config.name}{normalize(path)}"


def _key(spec: ProcessSpec, entries: list[FileEntry]) -> str:
    output = None
    if spec.output is not None:
        output = f"{spec.output.config.namespace}/{spec.output.config.name}{normalize(spec.output_path)}"
    document = {
        "input": f"{spec.input.config.namespace}/{spec.input.config.name}{normalize(spec.sub_path)}",
        "files": [[e.path, e.version, e.size] for e in entries],
        "command": list(spec.command), "source": spec.source,
        "env": sorted(spec.env.items()), "output": output,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def process_key(spec: ProcessSpec) -> str:
    """The memo key: sha256 over the input files' (path, version, size) under ``sub_path`` (a fresh
    listing), the command, the source, the sorted env and the output target."""
    _kind(spec)
    return _key(spec, _inputs(spec))


def run_process(spec: ProcessSpec, *, previous_key: str | None, log: Log,
                cancel: threading.Event | None = None) -> OperationResult:
    """Run ``spec`` (see the module doc) unless its memo key equals ``previous_key``.

    Scripts run as a subprocess (python = this interpreter) with cwd = ``workdir`` and the environment
    ``os.environ`` + ``spec.env`` + ``DATASET_PATH``/``OUTPUT_PATH``/``DATASET_URL``; their stdout and stderr
    go to ``log`` line by line. A nonzero exit raises OperationError with the exit code and the last
    stderr lines; a SQL error raises it with DuckDB's message. Outputs are uploaded only after success.
    ``details["memoKey"]`` is the key to pass as ``previous_key`` next time. Setting ``cancel`` (optional)
    stops a running script: SIGTERM to its process group, SIGKILL 5 s later, then OperationError.
    The input copy in ``<workdir>/input`` is removed when the run ends; ``<workdir>/output`` stays.
    """
    kind = _kind(spec)
    log = locked(log)
    started = time.monotonic()
    entries = _inputs(spec)
    key = _key(spec, entries)
    if previous_key is not None and previous_key == key:
        message = f"skipped: inputs, code and output unchanged since the last run (memo key {key[:12]})"
        log(message)
        return OperationResult(skipped=True, message=message, details={"memoKey": key})
    if not entries:
        raise OperationError(f"subPath: {_dataset_url(spec.input, spec.sub_path)} has no files")
    workdir = Path(spec.workdir)
    in_dir, out_dir = workdir / "input", workdir / "output"
    for folder in (in_dir, out_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    try:
        in_bytes = _materialize(spec, entries, in_dir)
        log(f"input: {len(entries)} files ({format_bytes(in_bytes)}) from "
            f"{_dataset_url(spec.input, spec.sub_path)}")
        if kind == "sql":
            _run_sql(spec.source, in_dir, out_dir, log)
        else:
            _run_script(spec, kind, workdir, in_dir, out_dir, log, cancel)
    finally:
        shutil.rmtree(in_dir, ignore_errors=True)  # a copy of the dataset's files; the cache keeps them
    outputs = sorted(p for p in out_dir.rglob("*") if p.is_file())
    out_bytes = sum(p.stat().st_size for p in outputs)
    details: dict[str, Any] = {"memoKey": key, "outputFiles": len(outputs), "outputBytes": out_bytes}
    if spec.output is not None:
        uploaded = _upload(spec, outputs, out_dir, log)
        details["outputs"] = uploaded[:100]
        where = _dataset_url(spec.output, spec.output_path)
    else:
        details["outputDir"] = str(out_dir)
        where = str(out_dir)
    seconds = time.monotonic() - started
    message = (f"processed {len(entries)} files ({format_bytes(in_bytes)}) in {seconds:.1f}s; "
               f"{len(outputs)} output files ({format_bytes(out_bytes)}) in {where}")
    log(message)
    return OperationResult(files=len(entries), bytes=in_bytes, seconds=seconds, message=message,
                           details=details)


def _relative(entry_path: str, sub_path: str) -> str:
    root = normalize(sub_path)
    if entry_path == root:  # sub_path names one file
        return os.path.basename(entry_path)
    return entry_path[len(root):].lstrip("/") if root != "/" else entry_path.lstrip("/")


def _materialize(spec: ProcessSpec, entries: list[FileEntry], in_dir: Path) -> int:
    """Copy the input files into ``in_dir`` through the cache, streamed; returns the bytes written."""

    def copy(entry: FileEntry) -> int:
        local = in_dir / _relative(entry.path, spec.sub_path)
        local.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        handle = spec.input.open_file(entry.path)
        try:
            with open(local, "wb") as out:
                while chunk := handle.read(CHUNK):
                    out.write(chunk)
                    written += len(chunk)
        finally:
            handle.close()
        return written

    try:
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="shipyard-process-input") as pool:
            return sum(pool.map(copy, entries))
    except OSError as exc:
        raise OperationError(f"reading the input from {_dataset_url(spec.input, spec.sub_path)} failed: "
                             f"{exc}") from exc


def _environment(spec: ProcessSpec, in_dir: Path, out_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # so a python script's lines reach the log as they are printed
    config = spec.input.config
    env["SHIPYARD_NAMESPACE"] = config.namespace  # dataset:// URLs resolve in the input's namespace
    root = Path(config.root)
    if root.parent.parent.name == "data":  # <home>/data/<ns>/<name>: the home dataset:// needs
        env["SHIPYARD_HOME"] = str(root.parent.parent.parent)
    env.update(spec.env)
    env["DATASET_PATH"] = str(in_dir)
    env["OUTPUT_PATH"] = str(out_dir)
    env["DATASET_URL"] = _dataset_url(spec.input, spec.sub_path)
    return env


def _run_script(spec: ProcessSpec, kind: str, workdir: Path, in_dir: Path, out_dir: Path, log: Log,
                cancel: threading.Event | None) -> None:
    script = workdir / f"script{_SCRIPT_SUFFIX[kind]}"
    script.write_text(spec.source)
    extra = list(spec.command[1:])
    if extra and extra[-1] == "-c":  # Fluid passes the source to "bash -c"; here the source is a file
        extra.pop()
    program = sys.executable if kind == "python" else spec.command[0]
    argv = [program, *extra, str(script)]
    log(f"running {' '.join(spec.command)} script ({len(spec.source.splitlines())} lines) in {workdir}")
    try:
        proc = subprocess.Popen(argv, cwd=workdir, env=_environment(spec, in_dir, out_dir),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as exc:
        raise OperationError(f"command: cannot start {spec.command[0]!r}: {exc}") from exc
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    readers = [threading.Thread(target=_pump, args=(proc.stdout, log, "", None), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, log, "stderr: ", tail), daemon=True)]
    for reader in readers:
        reader.start()
    cancelled = _wait(proc, cancel)
    for reader in readers:
        reader.join()
    code = proc.returncode
    if cancelled:
        raise OperationError(f"{spec.command[0]} script cancelled (exit code {code})")
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        last = " | ".join(tail)
        raise OperationError(f"{spec.command[0]} script {how}" + (f"; last stderr lines: {last}" if last else ""))


def _wait(proc: subprocess.Popen[bytes], cancel: threading.Event | None) -> bool:
    """Wait for the script; True when ``cancel`` was set and the script's process group was stopped."""
    if cancel is None:
        proc.wait()
        return False
    while proc.poll() is None:
        if cancel.wait(0.2):
            for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            proc.wait()
            return True
    return False


def _pump(stream: IO[bytes], log: Log, prefix: str, tail: collections.deque[str] | None) -> None:
    with stream:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if tail is not None:
                tail.append(line)
            log(prefix + line)


def _view_name(path: Path, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", path.stem) or "file"
    name, n = base, 2
    while name.lower() in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name.lower())
    return name


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _run_sql(sql: str, in_dir: Path, out_dir: Path, log: Log) -> None:
    """Each parquet/csv/json(l) input file becomes a view named after its stem, plus ``input`` (all of
    them, when they have the same columns); the last statement's result is written to result.parquet."""
    try:
        import duckdb
    except ImportError as exc:
        raise OperationError("command: ['sql'] needs DuckDB: pip install 'shipyard[data]'") from exc
    con = duckdb.connect(database=":memory:")
    try:
        con.execute(f"SET temp_directory = {_sql_literal(str(in_dir.parent / 'duckdb.tmp'))}")
        con.execute(f"SET VARIABLE dataset_path = {_sql_literal(str(in_dir))}")
        con.execute(f"SET VARIABLE output_path = {_sql_literal(str(out_dir))}")
        views: list[tuple[str, list[str]]] = []
        taken = {"input"}
        for path in sorted(p for p in in_dir.rglob("*") if p.is_file()):
            reader = _SQL_READERS.get(path.suffix.lower())
            if reader is None:
                continue
            name = _view_name(path, taken)
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM {reader}({_sql_literal(str(path))})')
            columns = [row[0] for row in con.execute(f'DESCRIBE "{name}"').fetchall()]
            views.append((name, columns))
            log(f"view {name}: {path.relative_to(in_dir)} ({len(columns)} columns)")
        if views and all(sorted(cols) == sorted(views[0][1]) for _, cols in views):
            union = " UNION ALL BY NAME ".join(f'SELECT * FROM "{name}"' for name, _ in views)
            con.execute(f"CREATE VIEW input AS {union}")
            log(f"view input: all {len(views)} files")
        statements = duckdb.extract_statements(sql)
        if not statements:
            raise OperationError("source: the SQL has no statement")
        for statement in statements[:-1]:
            con.execute(statement)
        result = con.execute(statements[-1])
        if result.description is None:  # the last statement returns nothing (e.g. the user's own COPY)
            return
        rows = _write_parquet(result, out_dir / "result.parquet")
        log(f"result: {rows} rows -> result.parquet")
    except duckdb.Error as exc:
        raise OperationError(f"SQL failed: {exc}") from exc
    finally:
        con.close()


def _write_parquet(result: Any, path: Path) -> int:
    """Stream a DuckDB result into a parquet file batch by batch; returns the row count."""
    import pyarrow.parquet as pq

    fetch = getattr(result, "fetch_record_batch", None) or result.to_arrow_reader
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DuckDB 2 warns that Arrow from a DB-API result copies batches
        reader = fetch(100_000)
    rows = 0
    with pq.ParquetWriter(str(path), reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _upload(spec: ProcessSpec, outputs: list[Path], out_dir: Path, log: Log) -> list[str]:
    assert spec.output is not None
    uploaded: list[str] = []
    for local in outputs:
        target = normalize(f"{spec.output_path}/{local.relative_to(out_dir).as_posix()}")
        try:
            spec.output.put_file(local, target)
        except (OSError, ValueError) as exc:
            raise OperationError(f"uploading {local.name} to {_dataset_url(spec.output, target)} failed: "
                                 f"{exc}") from exc
        uploaded.append(target)
    log(f"uploaded {len(uploaded)} files to {_dataset_url(spec.output, spec.output_path)}")
    return uploaded


_RUNNER = '''
if __name__ == "__main__":
    import os

    {name}(os.environ["DATASET_PATH"], os.environ["OUTPUT_PATH"])
'''

_INSTALL = '''# packages the function needs, installed into a folder of this run's (not the controller's environment)
import os as _os, subprocess as _subprocess, sys as _sys
_target = _os.path.join(_os.getcwd(), ".packages")
_subprocess.check_call([_sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--target", _target, *{packages!r}])
_sys.path.insert(0, _target)
'''


def make_processor_from_func(fn: Callable[..., Any], packages: list[str] = ()) -> dict:  # type: ignore[assignment]
    """A Fluid ``processor.script`` dict ``{"command": ["python"], "source": ...}`` that calls
    ``fn(dataset_path, output_path)``.

    ``fn`` must be a top-level function that does its own imports inside its body (only its source is
    shipped, as with Kubeflow's function components). ``packages`` (pip requirement strings) are
    installed first by the script with ``pip install --target <workdir>/.packages`` and put first on
    ``sys.path``, so the controller's environment is not changed.
    """
    if not inspect.isfunction(fn) or fn.__name__ == "<lambda>":
        raise ValueError(f"fn: expected a function defined with def, got {fn!r}")
    if fn.__qualname__ != fn.__name__:
        raise ValueError(f"fn: {fn.__qualname__} is nested in a class or function; define it at the top "
                         f"level of a module")
    if inspect.iscoroutinefunction(fn):
        raise ValueError(f"fn: {fn.__name__} is async; expected a plain function")
    try:
        inspect.signature(fn).bind("dataset_path", "output_path")
    except TypeError as exc:
        raise ValueError(f"fn: {fn.__name__} must accept (dataset_path, output_path): {exc}") from exc
    if isinstance(packages, str) or not all(isinstance(p, str) and p for p in packages):
        raise ValueError(f"packages: expected a list of pip requirement strings, got {packages!r}")
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise ValueError(f"fn: the source of {fn.__name__} is not available: {exc}") from exc
    source = _strip_decorators(source, fn.__name__)
    parts = [_INSTALL.format(packages=list(packages))] if packages else []
    parts += [source.rstrip() + "\n", _RUNNER.format(name=fn.__name__)]
    return {"command": ["python"], "source": "\n".join(parts)}


def _strip_decorators(source: str, name: str) -> str:
    """The function's source from its ``def`` line: decorators would not exist in the script."""
    match = re.search(rf"^(async\s+)?def\s+{re.escape(name)}\b", source, re.MULTILINE)
    return source[match.start():] if match else source
