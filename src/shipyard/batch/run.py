"""Running a batch: read chunks, predict them (in this process, in worker processes, or through an
endpoint), record each done chunk, and publish the output.

    >>> result = run_batch(BatchSpec(model="model.joblib", input="in.parquet", output="out.parquet",
    ...                              carry=["id"]))
    >>> result.state, result.rows, result.errors
    ('Succeeded', 1000000, 0)

A run that was stopped or killed continues where it stopped when run again with the same spec:
chunks are row ranges fixed by ``batch_size``, each done chunk's part is renamed into place before it
is recorded in the manifest, and a single-file output is assembled from the parts in chunk order (as
they finish, and again from the recorded parts after a restart), so it holds every row once, in input
order, byte for byte what an uninterrupted run writes. Memory holds about two chunks per worker.
"""

from __future__ import annotations

import collections
import queue
import re
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from shipyard.batch.chunks import ChunkProcessor
from shipyard.batch.errors import BatchError, EndpointUnavailable
from shipyard.batch.manifest import ChunkRecord, Manifest, fingerprint, model_identity, output_location, work_dir
from shipyard.batch.predictors import predictor_for
from shipyard.batch.readers import Chunk, InputSet
from shipyard.batch.spec import (
    BatchSpec,
    default_errors,
    error_budget,
    format_from_name,
    is_folder_output,
    is_url,
    normalise_format,
    spec_problems,
)
from shipyard.batch.writers import OrderedOutput, concatenate, publish

SUCCEEDED, FAILED, STOPPED = "Succeeded", "Failed", "Stopped"
#: Without max_errors, a run whose first this-many rows (or first chunk) all failed stops: nothing works.
ALL_FAILED_AFTER = 1000
_PART = re.compile(r"^part-\d{6,}\.(parquet|csv|jsonl)$")


@dataclass
class BatchProgress:
    """Where a run is; sent after every chunk (and once at the start)."""

    rows_done: int
    rows_total: int | None
    errors: int
    chunks_done: int
    chunks_total: int | None
    rows_per_s: float


@dataclass
class BatchResult:
    """How a run ended. ``rows``: input rows read (including failed ones); ``errors``: rows that failed;
    ``written``: rows in the output. ``state``: Succeeded, Failed or Stopped (resumable)."""

    rows: int
    errors: int
    seconds: float
    rows_per_s: float
    output: str
    errors_file: str | None
    resumed_chunks: int
    state: str
    message: str
    written: int = 0
    chunks: int = 0


def _quiet(_: str) -> None:
    pass


def output_format_of(spec: BatchSpec, inputs: InputSet) -> str:
    """The output format: the spec's, else the output's suffix, else the input's format."""
    if spec.output_format:
        return normalise_format(spec.output_format) or spec.output_format
    return format_from_name(spec.output) if not is_folder_output(spec.output) and format_from_name(spec.output) \
        else inputs.format


def input_problems(spec: BatchSpec) -> list[tuple[str, str]]:
    """Static problems (spec_problems), then what reading tells: the input exists and has the columns,
    the model can be found. (field, message) pairs."""
    problems = spec_problems(spec)
    if problems:
        return problems
    try:
        inputs = InputSet(spec.input, normalise_format(spec.input_format) if spec.input_format else None)
        available = inputs.columns()
    except BatchError as exc:
        return [(exc.field, exc.message)]
    present = set(available)
    shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
    for key in ("columns", "carry"):
        missing = [name for name in getattr(spec, key) or [] if name not in present]
        if missing:
            problems.append((key, f"no column '{missing[0]}' in the input; it has: {shown}"))
    if not is_url(spec.model):
        path = Path(spec.model).expanduser()
        if path.exists():
            from shipyard.package.source import model_source

            try:
                model_source(path)
            except ValueError as exc:
                problems.append(("model", str(exc)))
        else:
            from shipyard.control.plane import running_plane

            info = running_plane()
            if not info or not info.get("gateway_url"):
                problems.append(("model", f"'{spec.model}' does not exist, and no control plane is running to "
                                          "serve it as an InferenceService (start one with: shipyard up --detach)"))
    return problems


class _Prefetch:
    """Reads chunks on a thread, at most ``depth`` ahead; an error in the reader comes out of ``__iter__``."""

    _END = object()

    def __init__(self, chunks: Iterator[Chunk], depth: int) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(chunks,), name="batch-reader", daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.closed.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, chunks: Iterator[Chunk]) -> None:
        try:
            for chunk in chunks:
                if not self._put(chunk):
                    break
        except BaseException as exc:  # handed to the consumer
            self._put(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        self._put(self._END)

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=5)


# -- worker processes -------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_start(spec: BatchSpec, part_format: str, parts_dir: str, errors_dir: str, header: bool) -> None:
    """Load the model once per worker process (a failure is reported with the first chunk)."""
    try:
        from shipyard.batch.predictors import LocalPredictor

        predictor = LocalPredictor(spec.model)
        predictor.open()
        _WORKER["processor"] = ChunkProcessor(predictor, spec, part_format, Path(parts_dir), Path(errors_dir), header)
    except BaseException as exc:
        _WORKER["error"] = exc


def _worker_chunk(chunk: Chunk) -> tuple[ChunkRecord, str, str]:
    if "error" in _WORKER:
        raise _WORKER["error"]
    processor: ChunkProcessor = _WORKER["processor"]
    record, first = processor.process(chunk)
    return record, first, processor.plan.describe() if processor.plan else ""


def _preload(model: str) -> list[str]:
    """Modules the worker processes' fork server imports first: the engine and the model's runtime."""
    modules = ["shipyard.batch.run", "pyarrow.parquet", "pandas"]
    try:
        from shipyard.package.source import model_source
        from shipyard.runtimes.registry import RUNTIMES

        source, _ = model_source(model)
        if source.options.get("isolation") is None:
            modules.append(RUNTIMES[source.format].split(":")[0])
            if source.format in ("sklearn", "xgboost", "lightgbm"):
                modules.append("sklearn.base")
    except Exception:  # the workers report a model that does not load
        pass
    return modules


class _Run:
    """The state of one run_batch call."""

    def __init__(self, spec: BatchSpec, progress: Callable[[BatchProgress], None] | None,
                 stop: threading.Event | None, log: Callable[[str], None]) -> None:
        self.spec = spec
        self.progress = progress
        self.stop = stop or threading.Event()
        self.log = log
        self.started = time.monotonic()
        self.session_rows = 0
        self.processing_started = 0.0
        self.rows = self.errors = self.written = 0
        self.done: dict[int, ChunkRecord] = {}
        self.resumed = 0
        self.rows_total: int | None = None
        self.first_error = ""
        self.failure: str | None = None
        self.plan_logged = False
        self.began = False

    # -- setup ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        spec = self.spec
        self.inputs = InputSet(spec.input, normalise_format(spec.input_format) if spec.input_format else None)
        self.output_format = output_format_of(spec, self.inputs)
        self.folder_output = is_folder_output(spec.output)
        self.out_fs, self.out_path, self.out_local = output_location(spec.output)
        self.errors_url = spec.errors or default_errors(spec.output)
        self.work = Path(work_dir(spec))
        self.manifest = Manifest(self.work)
        available = self.inputs.columns()
        for key in ("columns", "carry"):
            missing = [name for name in getattr(spec, key) or [] if name not in set(available)]
            if missing:
                raise BatchError(key, f"no column '{missing[0]}' in the input; it has: {', '.join(available[:20])}")
        self.read_columns = None if spec.columns is None else list(dict.fromkeys([*spec.columns, *spec.carry]))
        identity = model_identity(spec.model) if not is_url(spec.model) and Path(spec.model).expanduser().exists() \
            else [spec.model, spec.model_name, spec.namespace]
        self.fingerprint = fingerprint({
            "input": [[f.path, f.size, f.version] for f in self.inputs.files], "input_format": self.inputs.format,
            "output": spec.output, "output_format": self.output_format, "columns": spec.columns, "carry": spec.carry,
            "batch_size": spec.batch_size, "limit": spec.limit, "model": identity,
            "output_columns": spec.output_columns,
        })
        header = self.manifest.header()
        self.fresh = header is None or header.get("fingerprint") != self.fingerprint
        self.stale = header is not None and self.fresh
        self.end = None
        if not self.fresh:
            self.done, self.end = self.manifest.read()
            self.resumed = len(self.done)
        for record in self.done.values():
            self.rows += record.rows
            self.errors += record.errors
            self.written += record.written
        self.parts_dir = Path(self.out_path) if self.folder_output and self.out_local else self.work / "parts"
        # a single Parquet file is assembled from Arrow IPC parts; CSV parts of a single file have no header
        self.part_format = "arrow" if not self.folder_output and self.output_format == "parquet" else self.output_format
        self.header = self.folder_output or self.output_format != "csv"
        self.assembled: OrderedOutput | None = None
        self._count_rows()

    def begin(self) -> None:
        """Just before the first chunk: a fresh manifest (or the recorded one), the parts folders, and the
        single-file output rebuilt from the recorded parts."""
        spec = self.spec
        self.began = True
        if self.fresh:
            if self.stale:
                self.log("the recorded work was for another spec, input or model: starting over")
            if self.folder_output and self.out_local:
                self._clear_folder_parts()
            self.manifest.start(self.fingerprint, {"spec": {k: getattr(spec, k) for k in BatchSpec.field_names()},
                                                    "output_format": self.output_format})
            self.fresh = False
        elif self.done:
            self.log(f"resuming: {len(self.done)} chunk(s) done already ({self.work})")
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        (self.work / "parts").mkdir(parents=True, exist_ok=True)
        if not self.folder_output:
            self.assembled = OrderedOutput(self.output_format, self.work / f"output.tmp.{self.output_format}")
            for index in sorted(self.done):
                self._assemble(self.done[index])

    def _assemble(self, record: ChunkRecord, table: Any = None) -> None:
        if self.assembled is not None:
            self.assembled.add(record.chunk, self.parts_dir / record.part if record.part else None, record.columns,
                               table)

    def _clear_folder_parts(self) -> None:
        folder = Path(self.out_path)
        if folder.is_dir():
            for item in folder.iterdir():
                if _PART.match(item.name):
                    item.unlink()

    def _count_rows(self) -> None:
        """rows_total: at once for Parquet (footers), on a thread for CSV / JSON Lines (line counts)."""
        limit = self.spec.limit

        def count() -> None:
            try:
                total = self.inputs.count_rows()
            except Exception:
                total = None
            if total is not None and limit is not None:
                total = min(total, limit)
            self.rows_total = total

        if self.end is not None:
            self.rows_total = int(self.end["rows"])
        elif self.inputs.format == "parquet":
            count()
        else:
            threading.Thread(target=count, name="batch-count", daemon=True).start()

    @property
    def chunks_total(self) -> int | None:
        if self.end is not None:
            return int(self.end["chunks"])
        if self.rows_total is None:
            return None
        return -(-self.rows_total // self.spec.batch_size)

    # -- progress -------------------------------------------------------------------------------
    def report(self) -> None:
        if self.progress is None:
            return
        elapsed = time.monotonic() - self.processing_started if self.processing_started else 0.0
        rate = self.session_rows / elapsed if elapsed > 0 else 0.0
        self.progress(BatchProgress(self.rows, self.rows_total, self.errors, len(self.done), self.chunks_total, rate))

    def finish_chunk(self, record: ChunkRecord, first_error: str, table: Any = None) -> None:
        self.manifest.record(record)
        self.done[record.chunk] = record
        self._assemble(record, table)
        self.rows += record.rows
        self.session_rows += record.rows
        self.errors += record.errors
        self.written += record.written
        if first_error and not self.first_error:
            self.first_error = first_error
        if record.errors:
            self.log(f"chunk {record.chunk}: {record.errors} of {record.rows} row(s) failed"
                     + (f" (first: {first_error})" if first_error else ""))
        self.check_errors(final=False)
        self.report()

    def check_errors(self, final: bool) -> None:
        """Set ``failure`` once too many rows failed."""
        spec = self.spec
        if self.failure is not None or not self.errors:
            return
        where = f"; see {self.errors_url}" + (f" (first: {self.first_error})" if self.first_error else "")
        if spec.max_errors is not None:
            if isinstance(spec.max_errors, float) and spec.max_errors < 1:
                basis = self.rows if final else self.rows_total
                if basis is not None and self.errors > error_budget(spec.max_errors, basis):
                    self.failure = (f"{self.errors} of {self.rows} rows failed, more than max_errors "
                                    f"{spec.max_errors:g} of {basis} rows{where}")
            elif self.errors > error_budget(spec.max_errors, self.rows):
                self.failure = f"{self.errors} rows failed, more than max_errors {spec.max_errors}{where}"
            return
        if self.written == 0 and (final or self.errors >= min(ALL_FAILED_AFTER, spec.batch_size)):
            self.failure = (f"the first {self.errors} rows all failed, so nothing was written (no max_errors "
                            f"was set){where}")

    # -- the loop ---------------------------------------------------------------------------------
    def first_undone(self) -> int:
        index = 0
        while index in self.done:
            index += 1
        return index

    def run(self) -> None:
        spec = self.spec
        skip = self.first_undone()
        total_chunks = self.chunks_total
        if self.end is not None and total_chunks is not None and skip >= total_chunks:
            self.begin()
            return  # every chunk is done: only the output is left to write
        local = not is_url(spec.model) and Path(spec.model).expanduser().exists()
        if local and spec.workers > 1:
            self.log(f"{spec.workers} worker processes, each loading {spec.model}")
            self.begin()
            self.processing_started = time.monotonic()
            self.report()
            self._run_pool(skip)
            return
        predictor = predictor_for(spec, self.log)
        if spec.workers > 1:
            self.log(f"workers={spec.workers} applies to models run here; an endpoint run sends "
                     f"{spec.concurrency} requests at once (concurrency)")
        try:
            predictor.open()
            self.log(f"model: {predictor.description}")
            processor = ChunkProcessor(predictor, spec, self.part_format, self.parts_dir, self.work / "parts",
                                       self.header)
            plan = processor.plan_for(self.read_columns or self.inputs.columns())  # fails here, not per chunk
            self.log(f"input: {plan.describe()}")
            self.plan_logged = True
            self.begin()
            self.processing_started = time.monotonic()
            self.report()
            self._run_inline(processor, skip)
        finally:
            predictor.close()

    def _chunks(self, skip: int) -> _Prefetch:
        return _Prefetch(self.inputs.chunks(self.spec.batch_size, skip, self.read_columns, self.spec.limit),
                         depth=2 if self.spec.workers <= 1 else self.spec.workers)

    def _reached_end(self, last: Chunk | None, skip: int) -> None:
        """The reader ran out: record how many chunks and rows the input has."""
        chunks = last.index + 1 if last is not None else skip
        rows = last.start + last.rows if last is not None else skip * self.spec.batch_size
        if last is None and skip and (skip - 1) in self.done:
            record = self.done[skip - 1]
            rows = record.start + record.rows
        self.end = {"end": True, "chunks": chunks, "rows": rows}
        self.rows_total = rows
        self.manifest.record_end(chunks, rows)

    def _run_inline(self, processor: ChunkProcessor, skip: int) -> None:
        reader = self._chunks(skip)
        last: Chunk | None = None
        try:
            for chunk in reader:
                last = chunk
                if chunk.index in self.done:
                    continue
                if self.stop.is_set() or self.failure is not None:
                    return
                record, first = processor.process(chunk)
                self.finish_chunk(record, first, processor.last_table)
            if self.stop.is_set() or self.failure is not None:
                return
            self._reached_end(last, skip)
        finally:
            reader.close()

    def _run_pool(self, skip: int) -> None:
        import multiprocessing

        spec = self.spec
        context = multiprocessing.get_context("forkserver")
        # workers are forked from a server process that imported the runtime once (not each worker), and
        # that holds no thread of this process (a plane's, the reader's)
        context.set_forkserver_preload(_preload(spec.model))
        window: collections.deque[Future[Any]] = collections.deque()
        last: Chunk | None = None
        pool = ProcessPoolExecutor(spec.workers, mp_context=context, initializer=_worker_start,
                                   initargs=(spec, self.part_format, str(self.parts_dir), str(self.work / "parts"),
                                             self.header))
        reader = self._chunks(skip)

        def settle(future: Future[Any]) -> None:
            record, first, plan = future.result()
            if not self.plan_logged and plan:
                self.log(f"input: {plan}")
                self.plan_logged = True
            self.finish_chunk(record, first)

        try:
            for chunk in reader:
                last = chunk
                if chunk.index in self.done:
                    continue
                if self.stop.is_set() or self.failure is not None:
                    break
                window.append(pool.submit(_worker_chunk, chunk))
                while len(window) >= spec.workers * 2:
                    settle(window.popleft())
            else:
                while window:
                    settle(window.popleft())
                if not (self.stop.is_set() or self.failure is not None):
                    self._reached_end(last, skip)
            while window:  # stopped: finish (and record) what is running
                settle(window.popleft())
        finally:
            reader.close()
            for future in window:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    # -- the end ----------------------------------------------------------------------------------
    def records_in_order(self) -> list[ChunkRecord]:
        return [self.done[index] for index in sorted(self.done)]

    def write_errors(self) -> str | None:
        """Combine the errors parts into the errors file (removing a stale one when there are none)."""
        fs, path, local = output_location(self.errors_url)
        parts = [self.work / "parts" / r.errors_part for r in self.records_in_order() if r.errors_part]
        if not parts:
            try:
                if fs.exists(path):
                    fs.rm(path)
            except OSError:
                pass
            return None
        assembled = self.work / "errors.tmp.jsonl"
        with open(assembled, "wb") as handle:
            concatenate(parts, handle)
        publish(assembled, path, fs, local)
        return self.errors_url

    def write_output(self) -> None:
        """Publish the assembled file, or (a remote folder output) upload the parts."""
        records = self.records_in_order()
        if self.assembled is not None:
            finished = self.assembled.finish(self._column_names(records))
            publish(finished, self.out_path, self.out_fs, self.out_local)
            return
        if not self.out_local:
            parts = {r.part for r in records if r.part}
            self.out_fs.makedirs(self.out_path, exist_ok=True)
            try:
                existing = self.out_fs.ls(self.out_path, detail=False)
            except FileNotFoundError:  # object stores have no empty folders
                existing = []
            for name in existing:
                base = name.rstrip("/").rsplit("/", 1)[-1]
                if _PART.match(base) and base not in parts:
                    self.out_fs.rm(name)
            for name in sorted(parts):
                self.out_fs.put_file(str(self.parts_dir / name), f"{self.out_path.rstrip('/')}/{name}")

    def _column_names(self, records: list[ChunkRecord]) -> list[str]:
        """The output's columns (a CSV header, or an empty Parquet file's): the first part's."""
        for record in records:
            if record.part and record.columns:
                return list(record.columns)
        return list(self.spec.carry)


def run_batch(spec: BatchSpec, progress: Callable[[BatchProgress], None] | None = None,
              stop: threading.Event | None = None, log: Callable[[str], None] | None = None) -> BatchResult:
    """Run (or resume) a batch prediction. Never raises for a bad spec, input or model: the result is Failed
    with a one-line message naming the field. ``stop`` set: the run returns Stopped after the chunks in
    flight, and resumes from there when run again."""
    log = log or _quiet
    run = _Run(spec, progress, stop, log)
    problems = spec_problems(spec)
    if problems:
        return _result(run, FAILED, "; ".join(f"{key}: {message}" for key, message in problems), errors_file=None)
    try:
        run.prepare()
        log(f"{spec.input} ({run.inputs.format}, {len(run.inputs.files)} file(s)) -> {spec.output} "
            f"({run.output_format}), chunks of {spec.batch_size} rows"
            + (f", {run.rows_total} rows" if run.rows_total is not None else ""))
        run.run()
    except BatchError as exc:
        return _result(run, FAILED, str(exc), errors_file=_errors_if_any(run))
    except EndpointUnavailable as exc:
        return _result(run, FAILED, f"model: the endpoint failed: {exc}", errors_file=_errors_if_any(run))
    except Exception as exc:  # a worker died, the disk is full...
        log(traceback.format_exc().rstrip())
        return _result(run, FAILED, f"{type(exc).__name__}: {exc}", errors_file=_errors_if_any(run))
    if run.failure is None and not run.stop.is_set():
        run.check_errors(final=True)
    if run.failure is not None:
        return _result(run, FAILED, run.failure, errors_file=_errors_if_any(run))
    if run.stop.is_set() and (run.end is None or len(run.done) < int(run.end["chunks"])):
        total = run.chunks_total
        of = f" of {total}" if total is not None else ""
        message = f"stopped after {len(run.done)}{of} chunks; run it again to resume"
        return _result(run, STOPPED, message, errors_file=None)
    try:
        errors_file = run.write_errors()
        run.write_output()
    except (OSError, BatchError) as exc:
        return _result(run, FAILED, f"output: cannot write '{spec.output}': {type(exc).__name__}: {exc}",
                       errors_file=None)
    run.manifest.remove()
    message = f"{run.written} rows written to {spec.output}" + (
        f"; {run.errors} failed (see {errors_file})" if run.errors else "")
    log(message)
    return _result(run, SUCCEEDED, message, errors_file=errors_file)


def _errors_if_any(run: _Run) -> str | None:
    try:
        return run.write_errors() if run.errors and hasattr(run, "work") else None
    except OSError:
        return None


def _result(run: _Run, state: str, message: str, errors_file: str | None) -> BatchResult:
    assembled = getattr(run, "assembled", None)
    if assembled is not None and state != SUCCEEDED:
        assembled.abandon()
    if state == FAILED and not run.done and run.began:
        run.manifest.remove()  # nothing worth resuming
    seconds = time.monotonic() - run.started
    return BatchResult(
        rows=run.rows, errors=run.errors, seconds=round(seconds, 3),
        rows_per_s=round(run.session_rows / seconds, 1) if seconds > 0 else 0.0,
        output=run.spec.output, errors_file=errors_file, resumed_chunks=run.resumed, state=state, message=message,
        written=run.written, chunks=len(run.done),
    )


__all__ = ["BatchProgress", "BatchResult", "input_problems", "run_batch"]
