"""Cold-start latency: the first request to a scikit-learn InferenceService scaled to zero (issue 9).

    .venv/bin/python benchmarks/cold_start.py [--runs 5] [--markdown PATH] [--target 1.5] [--no-fail] [--no-prefork]

Starts ``shipyard up`` (its own SHIPYARD_HOME in a temporary folder), applies a scikit-learn iris
service with ``minReplicas: 0`` (idle period compressed with the annotations: tick 200 ms, stable
window 2 s, grace 1 s), and for each run waits until it has scaled to zero (no replica process
left), sends one V1 request through the gateway and measures its latency at the client. The
request is held by the activator while the replica starts; the phases come from the service's
events (wall-clock times written by the plane on the same machine):

- ``react``: request sent -> the autoscaler's ScaledUp 0 -> 1 (activator demand, decision);
- ``spawn``: ScaledUp -> ReplicaStarted (process start and imports until the replica listens);
- ``load``: ReplicaStarted -> ReplicaReady (model load, readiness seen by the controller);
- ``route``: ReplicaReady -> answer (route table published, gateway refresh, forward, predict).

Replicas of scikit-learn models are forked from the plane's zygote with the runtime imported
already (control/prefork.py); ``--no-prefork`` measures fresh processes instead.

Writes benchmarks/results/cold_start-<timestamp>.json, prints a Markdown table (also to
``--markdown PATH``), and exits 1 when the median is over the target (``--no-fail``: always 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(REPO / "tests"))

NAME = "coldstart"
ROW = [6.8, 2.8, 4.8, 1.4]
ANNOTATIONS = {
    "serving.shipyard.io/autoscale-tick": "200ms",
    "autoscaling.knative.dev/window": "2s",
    "autoscaling.knative.dev/scale-to-zero-grace-period": "1s",
}
PHASES = (("react", "ScaledUp"), ("spawn", "ReplicaStarted"), ("load", "ReplicaReady"))


def train_model(folder: Path) -> Path:
    """A scikit-learn logistic regression on iris, as KServe's sklearn example (model.joblib)."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression(max_iter=1000).fit(features, labels), folder / "model.joblib")
    return folder


def wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def one_run(plane: Any, url: str) -> dict[str, Any]:
    """Wait for zero, send one request, return its latency and phases."""
    wait(lambda: (plane.describe(NAME) or {}).get("replicas") == [], 120, "the service to scale to zero")
    time.sleep(0.5)  # the stopped replica's process is gone; nothing of it is left warm
    sent = time.time()
    started = time.perf_counter()
    answer = httpx.post(url, json={"instances": [ROW]}, timeout=120)
    latency = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"the cold request failed: {answer.status_code} {answer.text}")
    answered = sent + latency

    def events_after() -> list[dict[str, Any]] | None:
        events = (plane.describe(NAME) or {}).get("events", [])
        fresh = [e for e in events if e["time"] >= sent - 0.05]
        return fresh if {reason for _, reason in PHASES} <= {e["reason"] for e in fresh} else None

    fresh = wait(events_after, 30, "the cold start's events")
    marks = {reason: next(e["time"] for e in fresh if e["reason"] == reason) for _, reason in PHASES}
    phases = {"react": marks["ScaledUp"] - sent, "spawn": marks["ReplicaStarted"] - marks["ScaledUp"],
              "load": marks["ReplicaReady"] - marks["ReplicaStarted"], "route": answered - marks["ReplicaReady"]}
    gateway = ((plane.describe(NAME) or {}).get("status") or {}).get("shipyard", {}).get("autoscaling", {})
    cold = (gateway.get(f"{NAME}-predictor-00001") or {}).get("coldStartSeconds") or {}
    return {"latency_s": round(latency, 4), "gateway_cold_start_s": cold.get("last"),
            "phases_s": {key: round(value, 4) for key, value in phases.items()}}


def markdown(runs: list[dict[str, Any]], target: float, verdict: str, prefork: bool) -> list[str]:
    latencies = [run["latency_s"] for run in runs]
    suffix = "" if prefork else " (fresh processes)"
    lines = ["| runs | p50 (s) | max (s) | min (s) | target (s) | result |", "|---|---|---|---|---|---|",
             f"| {len(runs)}{suffix} | {statistics.median(latencies):.3f} | {max(latencies):.3f} | "
             f"{min(latencies):.3f} | "
             f"< {target:g} (p50) | {verdict} |", "",
             "| phase (median s) | " + " | ".join(name for name in ("react", "spawn", "load", "route")) + " |",
             "|---|---|---|---|---|",
             "| cold request | " + " | ".join(f"{statistics.median(run['phases_s'][name] for run in runs):.3f}"
                                         for name in ("react", "spawn", "load", "route")) + " |"]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="cold requests to measure (default 5)")
    parser.add_argument("--target", type=float, default=1.5, help="the p50 target in seconds (default 1.5)")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when the target is missed")
    parser.add_argument("--no-prefork", action="store_true",
                        help="start every replica as a fresh process (SHIPYARD_PREFORK=0), for comparison")
    options = parser.parse_args()
    if options.runs < 1:
        parser.error("--runs must be at least 1")

    from planeproc import PlaneProcess, isvc

    work = Path(tempfile.mkdtemp(prefix="shipyard-cold-start-"))
    plane = None
    try:
        model = train_model(work / "model")
        if options.no_prefork:
            os.environ["SHIPYARD_PREFORK"] = "0"  # the plane process inherits it
        plane = PlaneProcess(work / "home").wait_up()
        plane.apply(isvc(NAME, model, annotations=ANNOTATIONS, minReplicas=0, maxReplicas=1))
        wait(lambda: ((plane.condition(NAME) or {}).get("status") == "True"), 120, "the service to be ready")
        url = f"{plane.gateway}/v1/models/{NAME}:predict"
        httpx.post(url, json={"instances": [ROW]}, timeout=60).raise_for_status()  # warm the OS caches once
        runs = []
        for index in range(options.runs):
            run = one_run(plane, url)
            runs.append(run)
            print(f"run {index + 1}: {run['latency_s']:.3f} s  {run['phases_s']}", flush=True)
    finally:
        if plane is not None:
            plane.stop()
        shutil.rmtree(work, ignore_errors=True)

    latencies = [run["latency_s"] for run in runs]
    p50 = statistics.median(latencies)
    verdict = "PASS" if p50 < options.target else "FAIL"
    table = markdown(runs, options.target, verdict, not options.no_prefork)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "cold_start", "timestamp": stamp, "machine": {"platform": platform.platform(),
              "python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))},
              "prefork": not options.no_prefork, "target_s": options.target, "p50_s": round(p50, 4),
              "max_s": round(max(latencies), 4),
              "result": verdict, "runs": runs}
    path = RESULTS / f"cold_start-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print("\n".join(table))
    print(f"\nwritten {path.relative_to(REPO)}")
    if options.markdown:
        options.markdown.write_text("\n".join(table) + "\n")
    return 0 if verdict == "PASS" or options.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
