"""Batch prediction benchmark (issue 12): rows/s of ``shipyard batch`` on a scikit-learn model against a plain
pandas loop, and against calling a served endpoint one row at a time.

    .venv/bin/python benchmarks/batch.py                          # full profile: 1,000,000 rows (~1-2 min)
    .venv/bin/python benchmarks/batch.py --profile ci             # 200,000 rows, 2 runs (~30 s)
    .venv/bin/python benchmarks/batch.py --no-fail --doc docs/performance.md   # what `make bench` runs
    .venv/bin/python benchmarks/batch.py --profile smoke          # seconds; checks the harness, not the target

Data: a Parquet file of ``rows`` rows (an int64 ``id`` and 10 float64 features, pyarrow's default row
groups) and a LogisticRegression trained on 20,000 of them (joblib). Every contender reads the same
file and writes a Parquet file of ``id`` and the prediction:

- ``pandas loop``: ``pyarrow.parquet.ParquetFile.iter_batches(10_000)`` -> ``to_pandas()`` ->
  ``model.predict(df[features].to_numpy())`` -> a ``ParquetWriter`` (what one writes by hand);
- ``run_batch``: ``shipyard.batch.run_batch`` in this process (batch size 10,000; includes loading the
  model, the manifest and parts that make it resumable, and publishing the output);
- ``run_batch --workers 2``: the same with two worker processes (informational);
- ``shipyard batch`` CLI: the command as a new process (interpreter start and imports included);
- ``shipyard serve``, one row per request: a V2 JSON request per row over one keep-alive connection to
  ``shipyard serve --workers 1``, for ``endpoint_rows`` rows, extrapolated to the whole file;
- ``shipyard batch URL``: the batch engine against the same server (256 rows per request, 4 in flight),
  on ``endpoint_batch_rows`` rows (informational).

Runs of the pandas loop and run_batch alternate (``runs`` each); the target compares their medians:
run_batch within 1.5x of the pandas loop. Writes benchmarks/results/batch-<timestamp>.json, prints a
Markdown table (also to ``--markdown PATH`` and, with ``--doc``, between the batch markers of
docs/performance.md), and exits 1 when the target fails (``--no-fail``: always 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from report import check_doc, environment, write_doc

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(REPO / "tests"))

DOC_START, DOC_END = "<!-- batch:start -->", "<!-- batch:end -->"
FEATURES = [f"f{i}" for i in range(10)]
CHUNK = 10_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Profile:
    name: str
    rows: int
    runs: int
    endpoint_rows: int
    endpoint_batch_rows: int
    target: float = 1.5


PROFILES = {
    "full": Profile("full", 1_000_000, 3, 3_000, 200_000),
    "ci": Profile("ci", 200_000, 2, 2_000, 50_000),
    "smoke": Profile("smoke", 20_000, 1, 200, 5_000),
}


def log(message: str) -> None:
    print(f"[batch-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle/iowait since boot (/proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def generate(folder: Path, rows: int) -> tuple[Path, Path]:
    """The input Parquet file and the model."""
    import joblib
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, len(FEATURES)))
    weights = rng.normal(size=len(FEATURES))
    labels = (features @ weights + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    model = folder / "model.joblib"
    joblib.dump(LogisticRegression().fit(features[:20_000], labels[:20_000]), model)
    data = folder / "input.parquet"
    table = pa.table({"id": np.arange(rows, dtype=np.int64), **{name: features[:, i] for i, name in enumerate(FEATURES)}})
    pq.write_table(table, data)
    return data, model


def pandas_loop(data: Path, model_path: Path, output: Path) -> float:
    """The hand-written baseline: read in chunks, predict per chunk, write."""
    import joblib
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    model = joblib.load(model_path)
    writer = None
    for batch in pq.ParquetFile(data).iter_batches(batch_size=CHUNK):
        frame = batch.to_pandas()
        predicted = model.predict(frame[FEATURES].to_numpy())
        table = pa.table({"id": frame["id"].to_numpy(), "predict": predicted})
        if writer is None:
            writer = pq.ParquetWriter(output, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
    return time.perf_counter() - started


def api_run(data: Path, model: Path, output: Path, workers: int = 1) -> float:
    from shipyard.batch import BatchSpec, run_batch

    started = time.perf_counter()
    result = run_batch(BatchSpec(model=str(model), input=str(data), output=str(output), carry=["id"],
                                 batch_size=CHUNK, workers=workers))
    seconds = time.perf_counter() - started
    if result.state != "Succeeded":
        raise RuntimeError(f"run_batch: {result.state}: {result.message}")
    return seconds


def cli_run(data: Path, model: Path, output: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "shipyard", "batch", str(model), "-i", str(data), "-o", str(output),
                           "--carry", "id", "--batch-size", str(CHUNK), "-q"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"shipyard batch exited {done.returncode}: {done.stderr.strip()}")
    return seconds


def same_predictions(first: Path, second: Path) -> bool:
    import pyarrow.parquet as pq

    a, b = pq.read_table(first), pq.read_table(second)
    return a.column("id").equals(b.column("id")) and a.column("predict").equals(b.column("predict"))


def endpoint_row_at_a_time(url: str, data: Path, rows: int) -> float:
    """Seconds for ``rows`` V2 requests of one row each, in order, over one connection."""
    import httpx
    import pyarrow.parquet as pq

    table = pq.ParquetFile(data).read_row_group(0, columns=FEATURES).slice(0, rows).to_pandas().to_numpy()
    with httpx.Client(base_url=url, timeout=30) as client:
        client.post("/v2/models/model/infer", json=_row(table[0])).raise_for_status()  # warm
        started = time.perf_counter()
        for row in table:
            response = client.post("/v2/models/model/infer", json=_row(row))
            response.raise_for_status()
        return time.perf_counter() - started


def _row(values: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, len(values)], "data": values.tolist()}]}


def endpoint_batched(url: str, data: Path, rows: int, folder: Path) -> float:
    from shipyard.batch import BatchSpec, run_batch

    output = folder / "endpoint.parquet"
    started = time.perf_counter()
    result = run_batch(BatchSpec(model=url, model_name="model", input=str(data), output=str(output), carry=["id"],
                                 limit=rows, batch_size=CHUNK))
    seconds = time.perf_counter() - started
    if result.state != "Succeeded":
        raise RuntimeError(f"endpoint run: {result.state}: {result.message}")
    return seconds


def timed(label: str, call: Callable[[], float]) -> float:
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    begun = time.perf_counter()
    seconds = call()
    wall = time.perf_counter() - begun
    other = (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0)
    log(f"  {label}: {seconds:.3f} s (other processes used {max(0.0, other) / wall:.2f} cores meanwhile)")
    return seconds


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def markdown(run: dict[str, Any]) -> str:
    p, env, rows = run["profile"], run["environment"], run["rows"]
    lines = [f"_Generated by `benchmarks/batch.py --profile {p['name']}` on {run['started']} (took "
             f"{run['seconds']:.0f} s; raw data: `{run['results_file']}`). {p['rows']:,} rows × 10 float features, "
             f"LogisticRegression; {env['cpu_count']} cores, Python {env['python']}, commit {env['commit']}; other "
             f"processes used {run['other_cpu_cores']:.2f} cores on average during the run._", "",
             "| contender | rows measured | median s | best s | rows/s (median) | vs pandas loop |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['label']} | {row['rows']:,} | {fmt(row['median'], 3)} | {fmt(row['best'], 3)} | "
                     f"{fmt(row['rows_per_s'], 0)} | {row['versus']} |")
    check = run["check"]
    lines += ["", f"Target: `run_batch` within {p['target']:g}x of the pandas loop (median against median): "
              f"{check['ratio']:.2f}x — **{'PASS' if check['passed'] else 'FAIL'}**. "
              f"Outputs identical (ids and predictions): {'yes' if run['identical'] else 'NO'}."]
    return "\n".join(lines) + "\n"


def summarise(label: str, seconds: list[float], rows: int, total_rows: int, baseline: float | None,
              extrapolated: bool = False) -> dict[str, Any]:
    median = statistics.median(seconds)
    rate = rows / median if median > 0 else None
    whole = total_rows / rate if rate else None
    versus = "1.00x (baseline)" if baseline is None else (
        f"{whole / baseline:.2f}x the time" + (" (extrapolated)" if extrapolated else ""))
    return {"label": label, "rows": rows, "seconds": [round(s, 4) for s in seconds], "median": median,
            "best": min(seconds), "rows_per_s": rate, "whole_file_seconds": whole, "versus": versus}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--runs", type=int, help="runs of each in-process contender (default: the profile's)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    parser.add_argument("--doc", type=Path, help=f"replace the text between {DOC_START} and {DOC_END} in this file")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for batch-<timestamp>.json")
    parser.add_argument("--no-endpoint", action="store_true", help="skip the shipyard serve contenders")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when the target fails")
    args = parser.parse_args(argv)
    if args.doc:
        check_doc(args.doc, DOC_START, DOC_END)
    profile = PROFILES[args.profile]
    runs = args.runs or profile.runs
    started_at = dt.datetime.now(dt.timezone.utc)
    started = time.perf_counter()
    busy_start, own_start = machine_busy_seconds(), own_cpu_seconds()
    work = Path(tempfile.mkdtemp(prefix="shipyard-batch-bench-"))
    try:
        log(f"profile {profile.name}: {profile.rows:,} rows under {work}")
        data, model = generate(work, profile.rows)
        api_run(data, model, work / "warm.parquet")  # imports and first-use costs, not measured
        raw_times, api_times = [], []
        for run in range(runs):
            log(f"run {run + 1} of {runs}")
            raw_times.append(timed("pandas loop", lambda: pandas_loop(data, model, work / "raw.parquet")))
            api_times.append(timed("run_batch", lambda: api_run(data, model, work / "api.parquet")))
        identical = same_predictions(work / "raw.parquet", work / "api.parquet")
        workers_times = [timed("run_batch --workers 2", lambda: api_run(data, model, work / "w2.parquet", 2))]
        cli_times = [timed("shipyard batch (CLI)", lambda: cli_run(data, model, work / "cli.parquet"))]
        identical = identical and same_predictions(work / "raw.parquet", work / "w2.parquet") and \
            same_predictions(work / "raw.parquet", work / "cli.parquet")
        baseline = statistics.median(raw_times)
        rows = [summarise("pandas loop (read chunks, predict, write)", raw_times, profile.rows, profile.rows, None),
                summarise("`run_batch` (in process)", api_times, profile.rows, profile.rows, baseline),
                summarise("`run_batch`, 2 worker processes", workers_times, profile.rows, profile.rows, baseline),
                summarise("`shipyard batch` CLI (new process)", cli_times, profile.rows, profile.rows, baseline)]
        if not args.no_endpoint:
            from serverproc import ServerProcess

            server = ServerProcess(model, "--workers", "1", "--no-grpc")
            try:
                url = server.wait_ready()
                single = timed(f"shipyard serve, one row per request ({profile.endpoint_rows:,} rows)",
                               lambda: endpoint_row_at_a_time(url, data, profile.endpoint_rows))
                batched = timed(f"shipyard batch against the server ({profile.endpoint_batch_rows:,} rows)",
                                lambda: endpoint_batched(url, data, profile.endpoint_batch_rows, work))
            finally:
                server.stop()
            rows.append(summarise("`shipyard serve`, one row per request", [single], profile.endpoint_rows,
                                  profile.rows, baseline, extrapolated=True))
            rows.append(summarise("`shipyard batch URL` (V2, 256 rows/request, 4 in flight)", [batched],
                                  profile.endpoint_batch_rows, profile.rows, baseline, extrapolated=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratio = statistics.median(api_times) / baseline
    passed = ratio <= profile.target
    seconds = time.perf_counter() - started
    other = (machine_busy_seconds() - busy_start) - (own_cpu_seconds() - own_start)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)
    results_file = args.results / f"batch-{stamp}.json"
    try:
        shown = str(results_file.relative_to(REPO))
    except ValueError:
        shown = str(results_file)
    run_record = {
        "benchmark": "batch", "started": started_at.strftime("%Y-%m-%d %H:%M UTC"), "seconds": seconds,
        "profile": {**profile.__dict__, "runs": runs}, "environment": environment(("pyarrow", "pandas", "sklearn", "numpy")), "rows": rows,
        "identical": identical, "other_cpu_cores": max(0.0, other) / seconds if seconds else 0.0,
        "check": {"target": f"run_batch <= {profile.target}x the pandas loop", "ratio": ratio, "passed": passed},
        "results_file": shown,
    }
    results_file.write_text(json.dumps(run_record, indent=2, default=str) + "\n")
    text = markdown(run_record)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.doc:
        write_doc(args.doc, text, DOC_START, DOC_END)
        log(f"wrote the table into {args.doc}")
    log(f"results: {shown}")
    if not passed:
        log(f"FAIL: run_batch took {ratio:.2f}x the pandas loop (target {profile.target:g}x)")
    return 0 if passed or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
