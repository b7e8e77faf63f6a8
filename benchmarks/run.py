"""Side-by-side benchmark: Shipyard vs KServe vs MLServer on the same models and machine.

Run by ``make bench`` with the project's venv Python (``make bench`` first creates the peers'
venvs under benchmarks/.venvs/ and installs wrk). For each server x model it starts the server on
free loopback ports (own process group, pinned with taskset), waits until it is ready, checks one
answer per protocol, records its idle memory, then drives it with wrk (V2 JSON, V2 binary) and
benchmarks/grpc_load.py (V2 gRPC) at each concurrency, and stops it. Writes
benchmarks/results/<timestamp>.json and latest.json and the tables in docs/performance.md.

    BENCH_SECONDS=3 .venv/bin/python benchmarks/run.py      # quick mode
    .venv/bin/python benchmarks/run.py --no-doc              # don't touch docs/performance.md

Settings: benchmarks/config.toml (flags for each server, CPUs, durations); see its header for the
environment variables that override it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODELS_DIR = BENCH / ".models"
WORK = BENCH / ".work"
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
DOC = REPO / "docs" / "performance.md"
LUA = BENCH / "wrk" / "post.lua"
GRPC_LOAD = BENCH / "grpc_load.py"
DOC_START, DOC_END = "<!-- bench:start -->", "<!-- bench:end -->"

PROTOCOL_LABELS = {"json": "V2 JSON", "binary": "V2 binary", "grpc": "V2 gRPC"}
SERVER_LABELS = {"shipyard": "Shipyard", "kserve": "KServe", "mlserver": "MLServer"}
MODEL_LABELS = {
    "iris": "scikit-learn LogisticRegression, iris (4 features)",
    "xgb": "XGBoost classifier, 200 trees, 128 features",
}
# What each server can be measured with; a missing protocol is skipped with this reason.
UNSUPPORTED = {
    ("mlserver", "binary"): "MLServer 1.7.1 does not implement the V2 binary tensor extension "
    "(no Inference-Header-Content-Length handling in its REST server)",
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class Config:
    seconds: float
    warmup: float
    repeats: int  # measured runs of each cell at the highest concurrency (the median is reported)
    connections: list[int]
    servers: list[str]
    models: list[str]
    protocols: list[str]
    server_cpus: str
    client_cpus: str
    server: dict[str, dict[str, Any]]
    source: str


def load_config() -> Config:
    path = Path(os.environ.get("BENCH_CONFIG", BENCH / "config.toml"))
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    run = data.get("run", {})
    machine = data.get("machine", {})

    def listing(env: str, default: list[str]) -> list[str]:
        value = os.environ.get(env)
        return [v.strip() for v in value.split(",") if v.strip()] if value else [str(v) for v in default]

    seconds = float(os.environ.get("BENCH_SECONDS", run.get("seconds", 10)))
    warmup_default = run.get("warmup", 3) if seconds >= 10 else min(float(run.get("warmup", 3)), 1.0)
    warmup = float(os.environ.get("BENCH_WARMUP", warmup_default))
    servers = {name: dict(data.get(name, {})) for name in SERVER_LABELS}
    for name in servers:
        servers[name].setdefault("args", [])
        servers[name].setdefault("env", {})
    servers["mlserver"].setdefault("settings", {})
    servers["mlserver"].setdefault("model_settings", {})
    servers["shipyard"]["args"] = [*servers["shipyard"]["args"], *shlex.split(os.environ.get("BENCH_SHIPYARD_ARGS", ""))]
    cpus = os.cpu_count() or 1
    return Config(
        seconds=seconds,
        warmup=warmup,
        repeats=max(1, int(os.environ.get("BENCH_REPEATS", run.get("repeats", 3)))),
        connections=[int(c) for c in listing("BENCH_CONNECTIONS", run.get("connections", [1, 16, 64]))],
        servers=listing("BENCH_SERVERS", run.get("servers", list(SERVER_LABELS))),
        models=listing("BENCH_MODELS", run.get("models", list(MODEL_LABELS))),
        protocols=listing("BENCH_PROTOCOLS", run.get("protocols", list(PROTOCOL_LABELS))),
        server_cpus=str(machine.get("server_cpus", "0" if cpus > 1 else "")),
        client_cpus=str(machine.get("client_cpus", "1" if cpus > 1 else "")),
        server=servers,
        source=str(path),
    )


def pinned(cpus: str, command: list[str]) -> list[str]:
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *command]
    return command


# ---------------------------------------------------------------------------------------------
# models (trained once into benchmarks/.models)


@dataclass
class BenchModel:
    name: str
    path: Path
    features: int
    row: np.ndarray  # (1, features) float32, the request every load run sends
    expected: Any  # the model's own prediction for row
    json_values: list[float]  # row as the JSON request sends it


TRAIN_VERSION = 2


def train_models() -> dict[str, BenchModel]:
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    manifest_path = MODELS_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest.get("version") != TRAIN_VERSION or not all(
        (MODELS_DIR / m["file"]).exists() for m in manifest.get("models", {}).values()
    ):
        manifest = {"version": TRAIN_VERSION, "models": {}}
        import joblib
        import xgboost as xgb
        from sklearn.datasets import load_iris, make_classification
        from sklearn.linear_model import LogisticRegression

        log("training iris LogisticRegression")
        features, labels = load_iris(return_X_y=True)
        iris = LogisticRegression(max_iter=1000).fit(features, labels)
        joblib.dump(iris, MODELS_DIR / "iris.joblib")
        manifest["models"]["iris"] = {"file": "iris.joblib", "features": 4, "row": [5.1, 3.5, 1.4, 0.2]}

        log("training XGBoost classifier (128 features, 200 trees)")
        features, labels = make_classification(
            n_samples=20000, n_features=128, n_informative=32, n_redundant=16, random_state=0
        )
        booster = xgb.XGBClassifier(n_estimators=200, max_depth=6, learning_rate=0.1, tree_method="hist", random_state=0)
        booster.fit(features.astype(np.float32), labels)
        booster.save_model(MODELS_DIR / "xgb.json")
        # a row the model calls class 1, so a server answering zeros cannot pass the answer check
        rounded = np.round(features[:100], 3)
        row = rounded[int(np.argmax(booster.predict(rounded.astype(np.float32)) == 1))].tolist()
        manifest["models"]["xgb"] = {"file": "xgb.json", "features": 128, "row": row}
        manifest_path.write_text(json.dumps(manifest, indent=1))

    models = {}
    for name, entry in manifest["models"].items():
        path = MODELS_DIR / entry["file"]
        row = np.asarray([entry["row"]], dtype=np.float32)
        np.save(MODELS_DIR / f"{name}-row.npy", row)
        models[name] = BenchModel(name, path, entry["features"], row, None, list(entry["row"]))
    return models


MODEL_TIME_SCRIPT = r"""
import json, sys, time, statistics
import numpy as np
path, features, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
row = np.load(sys.argv[4])
if path.endswith(".json"):
    import xgboost as xgb
    model = xgb.XGBClassifier(); model.load_model(path)
else:
    import joblib
    model = joblib.load(path)
prediction = model.predict(row)
for _ in range(200):
    model.predict(row)
times, medians = [], []
for _ in range(5):  # five rounds; the lowest round median is the least disturbed by anything else running
    batch = []
    for _ in range(calls // 5):
        start = time.perf_counter_ns(); model.predict(row); batch.append(time.perf_counter_ns() - start)
    medians.append(statistics.median(batch) / 1e3)
    times += batch
times.sort()
print(json.dumps({"prediction": prediction.tolist(), "calls": len(times), "p50_us": min(medians),
                  "round_medians_us": medians, "mean_us": statistics.fmean(times) / 1e3,
                  "p99_us": times[int(len(times) * 0.99)] / 1e3}))
"""


def measure_model_time(model: BenchModel, cpus: str) -> dict:
    """The model's own predict on one row, in a fresh process pinned like the servers.

    ``p50_us`` is the lowest of five round medians, so a burst of other work on the machine
    does not inflate it (it is subtracted from the servers' latency to get their overhead).
    """
    command = pinned(cpus, [sys.executable, "-c", MODEL_TIME_SCRIPT, str(model.path), str(model.features), "3000",
                            str(MODELS_DIR / f"{model.name}-row.npy")])
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    model.expected = result["prediction"][0]
    return result


# ---------------------------------------------------------------------------------------------
# processes: memory and CPU of a server's process tree (psutil if installed, else /proc)

try:
    import psutil  # type: ignore
except ModuleNotFoundError:
    psutil = None

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            return [pid, *(p.pid for p in parent.children(recursive=True))]
        except psutil.Error:
            return []
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        if Path(f"/proc/{current}").exists():
            found.append(current)
            queue.extend(children.get(current, []))
    return found


def process_memory(pid: int) -> tuple[int, Optional[int]]:
    """(RSS, PSS) in bytes; PSS is None where the kernel does not say."""
    if psutil is not None:
        try:
            info = psutil.Process(pid).memory_full_info()
            return info.rss, getattr(info, "pss", None)
        except psutil.Error:
            return 0, None
    rss = pss = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss or 0, pss


def tree_memory(pid: int) -> dict:
    pids = tree_pids(pid)
    per = [process_memory(p) for p in pids]
    mb = lambda b: round(b / 1e6, 1)  # noqa: E731
    pss = [p for _, p in per]
    return {
        "processes": len(pids),
        "rss_mb": mb(sum(r for r, _ in per)),
        "pss_mb": mb(sum(pss)) if pss and all(p is not None for p in pss) else None,
        "main_rss_mb": mb(per[0][0]) if per else None,
    }


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree_pids(pid):
        if psutil is not None:
            try:
                times = psutil.Process(p).cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
            continue
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds spent by every core on anything but idle/iowait since boot (/proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average() -> Optional[list[float]]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 10):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@dataclass
class Server:
    kind: str
    model: BenchModel
    command: list[str]
    env: dict[str, str]
    cwd: Path
    http_port: int
    grpc_port: int
    log_path: Path
    process: Optional[subprocess.Popen] = None
    started: float = 0.0
    ready_s: Optional[float] = None
    listening_s: Optional[float] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, cpus: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                pinned(cpus, self.command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                start_new_session=True,  # its own process group: stop() signals that group only
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.listening_s is None and self.kind == "shipyard":
                if re.search(r"listening on http://", self.log_path.read_text(errors="replace")):
                    self.listening_s = round(time.monotonic() - self.started, 3)
            try:
                status, _, _ = http("GET", f"{self.url}/v2/health/ready", timeout=2)
                if status == 200:
                    self.ready_s = round(time.monotonic() - self.started, 3)
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> Optional[int]:
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.kind} did not stop in {timeout}s; killing its process group")
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(10)
        # the group may still hold children (MLServer's workers) after the leader exited
        try:
            os.killpg(self.process.pid, 0)
            time.sleep(1)
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.process.returncode


def make_server(kind: str, model: BenchModel, config: Config) -> Server:
    http_port, grpc_port = free_port(), free_port()
    settings = config.server[kind]
    extra = [str(a) for a in settings["args"]]
    env = {str(k): str(v) for k, v in settings["env"].items()}
    log_path = WORK / "logs" / f"{kind}-{model.name}.log"
    if kind == "shipyard":
        command = [sys.executable, "-m", "shipyard", "serve", str(model.path), "--name", model.name,
                   "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra]
        return Server(kind, model, command, env, REPO, http_port, grpc_port, log_path)
    if kind == "kserve":
        command = [str(VENVS / "kserve" / "bin" / "python"), str(BENCH / "peers" / "kserve_server.py"),
                   "--model_path", str(model.path), "--model_name", model.name,
                   "--http_port", str(http_port), "--grpc_port", str(grpc_port), *extra]
        return Server(kind, model, command, env, REPO, http_port, grpc_port, log_path)
    if kind == "mlserver":
        folder = WORK / f"mlserver-{model.name}"
        if folder.exists():
            shutil.rmtree(folder)
        (folder / model.name).mkdir(parents=True)
        server_settings = {"host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
                           "metrics_port": free_port(), **settings["settings"]}
        implementation = "mlserver_xgboost.XGBoostModel" if model.path.suffix == ".json" else "mlserver_sklearn.SKLearnModel"
        model_settings = {"name": model.name, "implementation": implementation,
                          "parameters": {"uri": str(model.path)}, **settings["model_settings"]}
        (folder / "settings.json").write_text(json.dumps(server_settings, indent=1))
        (folder / model.name / "model-settings.json").write_text(json.dumps(model_settings, indent=1))
        command = [str(VENVS / "mlserver" / "bin" / "mlserver"), "start", str(folder), *extra]
        return Server(kind, model, command, env, folder, http_port, grpc_port, log_path)
    raise ValueError(f"unknown server {kind}")


# ---------------------------------------------------------------------------------------------
# request bodies and answers


def json_body(model: BenchModel) -> bytes:
    body = {"inputs": [{"name": "input-0", "shape": [1, model.features], "datatype": "FP32", "data": model.json_values}]}
    return json.dumps(body, separators=(",", ":")).encode()


def binary_body(model: BenchModel) -> tuple[bytes, int]:
    """tritonclient's layout: JSON header, then the raw tensor; outputs asked for in binary."""
    raw = np.ascontiguousarray(model.row, dtype="<f4").tobytes()
    header = {
        "inputs": [{"name": "input-0", "shape": [1, model.features], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + raw, len(encoded)


V2_DTYPES = {"BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1",
             "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


def decode_rest_response(headers: dict, body: bytes) -> list[dict]:
    lowered = {k.lower(): v for k, v in headers.items()}
    length = lowered.get("inference-header-content-length")
    if length is None:
        return json.loads(body)["outputs"]
    header = json.loads(body[: int(length)])
    offset = int(length)
    for output in header["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = body[offset: offset + size]
            offset += size
            output["data"] = np.frombuffer(raw, dtype=V2_DTYPES[output["datatype"]]).tolist()
    return header["outputs"]


def check_answer(outputs: list[dict], expected: Any) -> tuple[bool, Any]:
    if not outputs:
        return False, None
    data = outputs[0].get("data")
    value = data[0] if isinstance(data, list) and data else data
    while isinstance(value, list) and value:
        value = value[0]
    try:
        return float(value) == float(expected), {"name": outputs[0].get("name"), "value": value}
    except (TypeError, ValueError):
        return False, {"name": outputs[0].get("name"), "value": value}


def verify(server: Server, protocol: str, config: Config) -> dict:
    model = server.model
    try:
        if protocol == "json":
            status, headers, body = http("POST", f"{server.url}/v2/models/{model.name}/infer", json_body(model),
                                         {"Content-Type": "application/json"})
        elif protocol == "binary":
            payload, length = binary_body(model)
            status, headers, body = http("POST", f"{server.url}/v2/models/{model.name}/infer", payload,
                                         {"Content-Type": "application/octet-stream",
                                          "Inference-Header-Content-Length": str(length)})
        else:
            result = grpc_load(server, 1, 0, 0, config, verify=True)
            if "error" in result:
                return {"ok": False, "error": result["error"]}
            ok, answer = check_answer(result["outputs"], model.expected)
            return {"ok": ok, "answer": answer, "expected": model.expected}
        if status != 200:
            return {"ok": False, "error": f"HTTP {status}: {body[:4000].decode(errors='replace')}"}
        ok, answer = check_answer(decode_rest_response(headers, body), model.expected)
        return {"ok": ok, "answer": answer, "expected": model.expected}
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------------------------------------
# load generators


def wrk(server: Server, protocol: str, connections: int, seconds: float, config: Config) -> dict:
    bodies = WORK / "bodies"
    bodies.mkdir(parents=True, exist_ok=True)
    body_file = bodies / f"{server.model.name}-{protocol}.bin"
    if protocol == "json":
        body_file.write_bytes(json_body(server.model))
        script_args = [str(body_file), "application/json"]
    else:
        payload, length = binary_body(server.model)
        body_file.write_bytes(payload)
        script_args = [str(body_file), "application/octet-stream", str(length)]
    url = f"{server.url}/v2/models/{server.model.name}/infer"
    command = pinned(config.client_cpus, ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                                          "--timeout", "10s", "--latency", "-s", str(LUA), url, "--", *script_args])
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"^BENCHJSON (\{.*\})$", completed.stdout, re.MULTILINE)
    if completed.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stdout[-500:]} {completed.stderr[-500:]}")
    data = json.loads(match.group(1))
    duration = data["duration_us"] / 1e6
    errors = {k: v for k, v in data["errors"].items() if v}
    lat = data["latency_us"]
    return {
        "requests": data["requests"],
        "duration_s": round(duration, 3),
        "rps": round(data["requests"] / duration, 1) if duration else 0.0,
        "errors": errors,
        "latency_ms": {k: round(v / 1e3, 4) for k, v in lat.items()},
        "command": command,
    }


def grpc_load(server: Server, connections: int, seconds: float, warmup: float, config: Config,
              verify: bool = False) -> dict:
    command = [sys.executable, str(GRPC_LOAD), "--target", f"127.0.0.1:{server.grpc_port}",
               "--model", server.model.name, "--input", str(MODELS_DIR / f"{server.model.name}-row.npy")]
    command += ["--verify"] if verify else ["-c", str(connections), "-d", str(seconds), "-w", str(warmup)]
    command = pinned(config.client_cpus, command)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + warmup + 120)
    try:
        result = json.loads(completed.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"grpc_load failed ({completed.returncode}): {completed.stderr[-800:]}"}
    if not verify:
        result["command"] = command
    return result


def shipyard_stats(server: Server) -> Optional[dict]:
    try:
        status, _, body = http("GET", f"{server.url}/v2/models/{server.model.name}/stats")
        if status != 200:
            return None
        stats = json.loads(body)["model_stats"][0]["inference_stats"]
        return {key: (int(stats[key]["count"]), int(stats[key]["ns"])) for key in stats}
    except Exception:  # noqa: BLE001 - optional
        return None


def stats_overhead(before: Optional[dict], after: Optional[dict]) -> Optional[dict]:
    if not before or not after or "success" not in after or "compute_infer" not in after:
        return None
    count = after["success"][0] - before["success"][0]
    if count <= 0:
        return None
    per = {key: (after[key][1] - before[key][1]) / max(1, after[key][0] - before[key][0]) / 1e3
           for key in after if key in before}
    return {
        "requests": count,
        "success_us": round(per["success"], 2),
        "compute_infer_us": round(per["compute_infer"], 2),
        "queue_us": round(per.get("queue", 0.0), 2),
        "compute_input_us": round(per.get("compute_input", 0.0), 2),
        "compute_output_us": round(per.get("compute_output", 0.0), 2),
        "overhead_us": round(per["success"] - per["compute_infer"], 2),
    }


# ---------------------------------------------------------------------------------------------
# environment


def venv_versions(python: Path, packages: list[str]) -> dict:
    script = (
        "import json, sys, importlib.metadata as m\n"
        "out = {'python': sys.version.split()[0]}\n"
        f"for name in {packages!r}:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    try:
        return json.loads(subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True).stdout)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError) as exc:
        return {"error": str(exc)}


COMMON_PACKAGES = ["numpy", "scikit-learn", "xgboost", "xgboost-cpu", "joblib", "grpcio", "protobuf", "uvloop"]


def environment(config: Config) -> dict:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        memory_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "server_cpus": config.server_cpus,
        "client_cpus": config.client_cpus,
        "taskset": bool(shutil.which("taskset")),
        "wrk": re.split(r" \[| Copyright", wrk_version[0])[0].strip() if wrk_version else None,
        "shipyard_commit": git("rev-parse", "HEAD"),
        "shipyard_worktree_dirty": bool(git("status", "--porcelain", "--", "src")),
        "versions": {
            "shipyard": venv_versions(Path(sys.executable), ["shipyard", *COMMON_PACKAGES, "msgspec", "httptools",
                                                             "tritonclient"]),
            "kserve": venv_versions(VENVS / "kserve" / "bin" / "python", ["kserve", *COMMON_PACKAGES, "fastapi",
                                                                          "uvicorn", "pydantic"]),
            "mlserver": venv_versions(VENVS / "mlserver" / "bin" / "python", ["mlserver", "mlserver-sklearn",
                                                                              "mlserver-xgboost", *COMMON_PACKAGES,
                                                                              "fastapi", "uvicorn", "pydantic"]),
        },
    }


# ---------------------------------------------------------------------------------------------
# the run


def measure_cell(server: Server, kind: str, protocol: str, connections: int, config: Config) -> dict:
    """One measured run of a cell: the load generator's numbers plus the CPU used, during the run, by
    the server's process tree, the load generator (grpc_load.py reports its own, without its
    start-up) and everything else on the machine."""
    stats_before = shipyard_stats(server) if kind == "shipyard" else None
    machine0, server0, client0 = machine_busy_seconds(), tree_cpu_seconds(server.pid), children_cpu_seconds()
    wall0 = time.monotonic()
    if protocol == "grpc":
        run = grpc_load(server, connections, config.seconds, 0, config)
        if "error" in run:
            raise RuntimeError(run["error"])
    else:
        run = wrk(server, protocol, connections, config.seconds, config)
    wall = time.monotonic() - wall0
    server_cpu = tree_cpu_seconds(server.pid) - server0
    client_cpu = children_cpu_seconds() - client0
    other_cpu = machine_busy_seconds() - machine0 - server_cpu - client_cpu
    duration = run["duration_s"] or wall
    client_cpu_run = run.pop("client_cpu_s", client_cpu)
    record = dict(run)
    record["server_cpu_s"] = round(server_cpu, 3)
    record["server_cores_busy"] = round(server_cpu / duration, 3)
    record["server_cpu_us_per_request"] = round(server_cpu / run["requests"] * 1e6, 1) if run["requests"] else None
    record["client_cpu_s"] = round(client_cpu_run, 3)
    record["client_cores_busy"] = round(client_cpu_run / duration, 3)
    record["other_cpu_s"] = round(max(0.0, other_cpu), 3)
    record["other_cores_busy"] = round(max(0.0, other_cpu) / wall, 3)
    if kind == "shipyard":
        record["shipyard_stats"] = stats_overhead(stats_before, shipyard_stats(server))
    return record


def bench_server(kind: str, model: BenchModel, config: Config, results: dict) -> None:
    server = make_server(kind, model, config)
    entry = {"server": kind, "model": model.name, "command": server.command, "env": server.env,
             "cpus": config.server_cpus}
    results["servers"].append(entry)
    log(f"{kind} / {model.name}: starting")
    server.start(config.server_cpus)
    try:
        try:
            server.wait_ready()
        except RuntimeError as exc:
            entry["error"] = str(exc)
            log(f"{kind} / {model.name}: FAILED to start: {str(exc)[:2000]}")
            return
        entry["ready_s"] = server.ready_s
        entry["listening_s"] = server.listening_s
        time.sleep(1.0)
        entry["memory_idle"] = tree_memory(server.pid)
        log(f"{kind} / {model.name}: ready in {server.ready_s}s, idle RSS {entry['memory_idle']['rss_mb']} MB "
            f"({entry['memory_idle']['processes']} process(es))")

        for protocol in config.protocols:
            reason = UNSUPPORTED.get((kind, protocol))
            if reason:
                probe = verify(server, protocol, config)  # the evidence: what the server says to it
                if probe["ok"]:
                    reason += " (but it answered this request correctly: UNSUPPORTED in run.py is out of date)"
                else:
                    error = probe.get("error") or str(probe)
                    found = re.search(r"(\w+(?:Error|Exception)): ([^\n]*)", error)
                    detail = f"{found.group(1)}: {found.group(2)}" if found else error.split(":", 1)[-1]
                    detail = detail if len(detail) <= 140 else detail[:140] + "…"
                    reason += f"; probe: {error.split(':', 1)[0]}, {' '.join(detail.split())}"
                results["skipped"].append({"server": kind, "model": model.name, "protocol": protocol, "reason": reason})
                continue
            check = verify(server, protocol, config)
            results["verification"].append({"server": kind, "model": model.name, "protocol": protocol, **check})
            if not check["ok"]:
                log(f"{kind} / {model.name} / {protocol}: wrong or no answer, skipped: {check}")
                results["skipped"].append({"server": kind, "model": model.name, "protocol": protocol,
                                           "reason": f"verification failed: {check.get('error') or check}"})
                continue
            for connections in config.connections:
                try:
                    if config.warmup > 0:  # unmeasured, same load
                        if protocol == "grpc":
                            warm = grpc_load(server, connections, config.warmup, 0, config)
                            if "error" in warm:
                                raise RuntimeError(warm["error"])
                        else:
                            wrk(server, protocol, connections, config.warmup, config)
                    repeats = config.repeats if connections == max(config.connections) else 1
                    measured = [measure_cell(server, kind, protocol, connections, config) for _ in range(repeats)]
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    log(f"{kind} / {model.name} / {protocol} c={connections}: FAILED: {exc}")
                    results["runs"].append({"server": kind, "model": model.name, "protocol": protocol,
                                            "connections": connections, "error": str(exc)[:2000]})
                    if server.process.poll() is not None:
                        entry["crashed"] = server.log_tail()
                        return
                    continue
                # the median run by req/s stands for the cell; every run's req/s is kept
                record = sorted(measured, key=lambda item: item["rps"])[len(measured) // 2]
                record = {"server": kind, "model": model.name, "protocol": protocol, "connections": connections,
                          **record}
                if len(measured) > 1:
                    record["samples_rps"] = [item["rps"] for item in measured]
                results["runs"].append(record)
                lat = record["latency_ms"]
                log(f"{kind} / {model.name} / {protocol} c={connections}: {record['rps']:.0f} req/s, "
                    f"p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms"
                    + (f", errors {record['errors']}" if record["errors"] else ""))
                time.sleep(0.3)
        entry["memory_after"] = tree_memory(server.pid)
    finally:
        code = server.stop()
        entry["exit_code"] = code
        log(f"{kind} / {model.name}: stopped (exit {code})")


def find_run(results: dict, server: str, model: str, protocol: str, connections: int) -> Optional[dict]:
    for run in results["runs"]:
        if (run["server"], run["model"], run["protocol"], run["connections"]) == (server, model, protocol, connections) \
                and "rps" in run:
            return run
    return None


def compute_overhead(results: dict) -> list[dict]:
    rows = []
    for run in results["runs"]:
        if run.get("connections") != 1 or "rps" not in run:
            continue
        model_time = results["models"][run["model"]]["model_time"]["p50_us"]
        p50_us = run["latency_ms"]["p50"] * 1e3
        row = {"server": run["server"], "model": run["model"], "protocol": run["protocol"],
               "p50_1conn_us": round(p50_us, 1), "model_predict_us": round(model_time, 1),
               "overhead_us": round(p50_us - model_time, 1)}
        if run.get("shipyard_stats"):
            row["stats"] = run["shipyard_stats"]
        rows.append(row)
    return rows


def compute_targets(results: dict) -> list[dict]:
    targets = []

    def add(name: str, measured: str, passed: Optional[bool]) -> None:
        targets.append({"target": name, "measured": measured,
                        "result": "n/a" if passed is None else ("PASS" if passed else "FAIL")})

    models = list(results["models"])
    for model in models:
        s, k = find_run(results, "shipyard", model, "json", 64), find_run(results, "kserve", model, "json", 64)
        if s and k and k["rps"] and k["latency_ms"]["p99"]:
            ratio = s["rps"] / k["rps"]
            p99 = s["latency_ms"]["p99"] / k["latency_ms"]["p99"]
            add(f"{model}: V2 JSON @64 conns ≥ 12× KServe req/s, p99 ≤ ¼ of KServe's",
                f"{ratio:.2f}× req/s ({s['rps']:.0f} vs {k['rps']:.0f}); p99 {p99:.2f}× "
                f"({s['latency_ms']['p99']:.2f} vs {k['latency_ms']['p99']:.2f} ms)",
                ratio >= 12 and p99 <= 0.25)
        else:
            add(f"{model}: V2 JSON @64 conns ≥ 12× KServe req/s, p99 ≤ ¼ of KServe's", "not measured", None)
    for model in models:
        s, k = find_run(results, "shipyard", model, "json", 1), find_run(results, "kserve", model, "json", 1)
        if s and k:
            add(f"{model}: V2 JSON @1 conn p50 below KServe's",
                f"{s['latency_ms']['p50']:.3f} vs {k['latency_ms']['p50']:.3f} ms",
                s["latency_ms"]["p50"] < k["latency_ms"]["p50"])
        else:
            add(f"{model}: V2 JSON @1 conn p50 below KServe's", "not measured", None)
    for model in models:
        s, k = find_run(results, "shipyard", model, "grpc", 64), find_run(results, "kserve", model, "grpc", 64)
        if s and k and k["rps"]:
            ratio = s["rps"] / k["rps"]
            add(f"{model}: V2 gRPC @64 in flight ≥ 4× KServe req/s",
                f"{ratio:.2f}× ({s['rps']:.0f} vs {k['rps']:.0f})", ratio >= 4)
        else:
            add(f"{model}: V2 gRPC @64 in flight ≥ 4× KServe req/s", "not measured", None)
    shipyard_iris = next((s for s in results["servers"] if s["server"] == "shipyard" and s["model"] == "iris"
                          and s.get("memory_idle")), None)
    if shipyard_iris:
        idle = shipyard_iris["memory_idle"]
        # one process: its RSS; several (--workers): the PSS sum, since forked workers share pages
        # that a sum of RSS would count once per process
        if idle["processes"] > 1 and idle.get("pss_mb") is not None:
            value, measured = idle["pss_mb"], f"{idle['pss_mb']:.1f} MB PSS over {idle['processes']} processes " \
                                              f"(RSS sum {idle['rss_mb']:.1f} MB)"
        else:
            value, measured = idle["rss_mb"], f"{idle['rss_mb']:.1f} MB RSS (PSS {idle.get('pss_mb')} MB)"
        add("Idle memory with one scikit-learn model < 150 MB", measured, value < 150)
    else:
        add("Idle memory with one scikit-learn model < 150 MB", "not measured", None)
    return targets


# ---------------------------------------------------------------------------------------------
# docs/performance.md


BUSY_OTHER = 0.2  # cores used by other processes during a cell before it is flagged
BUSY_CLIENT = 0.9  # load generator's share of its core before a cell is flagged as client-bound


def fmt_rps(run: Optional[dict]) -> str:
    if not run:
        return "—"
    marks = ""
    if (run.get("other_cores_busy") or 0) > BUSY_OTHER:
        marks += "⚠"
    if (run.get("client_cores_busy") or 0) > BUSY_CLIENT:
        marks += "‡"
    return f"{run['rps']:,.0f}{marks}"


def fmt_lat(run: Optional[dict]) -> str:
    if not run:
        return "—"
    lat = run["latency_ms"]
    return f"{lat['p50']:.2f} / {lat['p99']:.2f}"


def fmt_ratio(shipyard: Optional[dict], peer: Optional[dict]) -> str:
    if not shipyard or not peer or not peer["rps"]:
        return "—"
    text = f"{shipyard['rps'] / peer['rps']:.1f}×"
    if peer["latency_ms"]["p99"]:
        text += f" (p99 {shipyard['latency_ms']['p99'] / peer['latency_ms']['p99']:.2f}×)"
    return text


def render_markdown(results: dict) -> str:
    env = results["environment"]
    versions = env["versions"]
    cfg = results["config"]
    ship_v = versions["shipyard"]
    lines = [
        f"_Generated by `make bench` on {results['started']} (run took {results['duration_s'] / 60:.1f} min; "
        f"raw data: `benchmarks/results/{results['id']}.json`)._",
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_count']} cores, {env['memory_gb']} GiB, Linux {env['kernel']}. "
        f"Servers pinned to CPU {env['server_cpus'] or 'any'}, load generator to CPU {env['client_cpus'] or 'any'}. "
        f"{cfg['seconds']:g} s measured after {cfg['warmup']:g} s warm-up per cell; one row per request."
        + (f" Cells at {max(cfg['connections'])} connections are the median of {cfg['repeats']} runs (by req/s; "
           "every run's req/s is in the raw data)." if cfg.get("repeats", 1) > 1 else ""),
        "",
        f"Versions: Shipyard {ship_v.get('shipyard', '?')} (commit {env['shipyard_commit'][:10]}"
        f"{', uncommitted changes in src/' if env['shipyard_worktree_dirty'] else ''}), "
        f"KServe {versions['kserve'].get('kserve', '—')}, MLServer {versions['mlserver'].get('mlserver', '—')}; "
        f"Python {ship_v.get('python')}, numpy {ship_v.get('numpy')}, scikit-learn {ship_v.get('scikit-learn')}, "
        f"xgboost {ship_v.get('xgboost') or ship_v.get('xgboost-cpu')}; {env['wrk']}.",
        "",
    ]
    flags = [f"`{SERVER_LABELS[k]}`: `{' '.join(map(str, v['args']))}`" for k, v in cfg["server"].items() if v.get("args")]
    if any(v.get("settings") for v in cfg["server"].values()):
        flags.append(f"MLServer settings: `{json.dumps(cfg['server']['mlserver']['settings'])}`")
    lines += [f"Extra flags: {'; '.join(flags) if flags else 'none (every server with its defaults)'}.", ""]

    servers = [s for s in SERVER_LABELS if s in cfg["servers"]]
    peers = [s for s in servers if s != "shipyard"]
    for model in results["models"]:
        lines += [f"### {MODEL_LABELS.get(model, model)}", ""]
        header = ["Protocol", "Conns"]
        for s in servers:
            header += [f"{SERVER_LABELS[s]} req/s", "p50 / p99 ms"]
        header += [f"vs {SERVER_LABELS[p]}" for p in peers] if "shipyard" in servers else []
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        for protocol in cfg["protocols"]:
            for connections in cfg["connections"]:
                row = [PROTOCOL_LABELS.get(protocol, protocol), str(connections)]
                cells = {s: find_run(results, s, model, protocol, connections) for s in servers}
                for s in servers:
                    if cells[s] is None and (s, protocol) in UNSUPPORTED:
                        row += ["n/s", "n/s"]
                    else:
                        row += [fmt_rps(cells[s]), fmt_lat(cells[s])]
                if "shipyard" in servers:
                    row += [fmt_ratio(cells["shipyard"], cells[p]) for p in peers]
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    flagged = [r for r in results["runs"] if (r.get("other_cores_busy") or 0) > BUSY_OTHER]
    lines += ["`vs X`: Shipyard's req/s ÷ X's req/s, and (in brackets) Shipyard's p99 ÷ X's p99 "
              "(below 1 is better). `n/s`: not supported by that server. "
              f"⚠: other processes on the machine used more than {BUSY_OTHER} of a core during that cell "
              f"({len(flagged)} of {len(results['runs'])} cells; the numbers are less trustworthy). "
              f"‡: the load generator used more than {BUSY_CLIENT:.0%} of its core (the result may be client-bound).",
              ""]
    cpu_rows = [r for r in results["runs"] if "rps" in r and r["connections"] == max(cfg["connections"])]
    if cpu_rows:
        lines += [f"Server CPU per request at {max(cfg['connections'])} connections (µs; CPU time of the whole "
                  "server process tree ÷ requests):", "",
                  "| Model | Protocol | " + " | ".join(SERVER_LABELS[s] for s in servers) + " |",
                  "|---|---|" + "|".join(["---"] * len(servers)) + "|"]
        for model in results["models"]:
            for protocol in cfg["protocols"]:
                cells = [find_run(results, s, model, protocol, max(cfg["connections"])) for s in servers]
                if not any(cells):
                    continue
                lines.append(f"| {model} | {PROTOCOL_LABELS.get(protocol, protocol)} | " + " | ".join(
                    f"{c['server_cpu_us_per_request']:.0f}" if c and c.get("server_cpu_us_per_request") else "—"
                    for c in cells) + " |")
        lines.append("")

    lines += ["### Memory and start-up", "",
              "| Server | Model | Idle RSS MB | Idle PSS MB | Processes | RSS after load MB | Ready after s |",
              "|---|---|---|---|---|---|---|"]
    for entry in results["servers"]:
        idle = entry.get("memory_idle") or {}
        after = entry.get("memory_after") or {}
        lines.append(f"| {SERVER_LABELS[entry['server']]} | {entry['model']} | {idle.get('rss_mb', '—')} | "
                     f"{idle.get('pss_mb') if idle.get('pss_mb') is not None else '—'} | {idle.get('processes', '—')} | "
                     f"{after.get('rss_mb', '—')} | {entry.get('ready_s', 'failed')} |")
    lines += ["", "Idle: after the server reported ready with the model loaded, before any request. "
              "RSS and PSS are summed over the server's process tree (MLServer runs the model in a worker process).",
              ""]

    lines += ["### Per-request overhead (1 connection)", "",
              "| Server | Model | Protocol | p50 µs | Model predict µs | Overhead µs | Shipyard stats: request − compute_infer µs |",
              "|---|---|---|---|---|---|---|"]
    for row in results["overhead"]:
        stats = row.get("stats")
        server_side = f"{stats['overhead_us']:.0f}" if stats else "—"
        lines.append(f"| {SERVER_LABELS[row['server']]} | {row['model']} | {PROTOCOL_LABELS[row['protocol']]} | "
                     f"{row['p50_1conn_us']:.0f} | {row['model_predict_us']:.0f} | {row['overhead_us']:.0f} | "
                     f"{server_side} |")
    lines += ["", "Overhead = client-side p50 at one connection − the model's own `predict` on one row "
              "(timed in a separate process on the server's CPU). It includes the client and the loopback. "
              "The last column is server-side only: Shipyard's `/v2/models/{m}/stats` request time minus "
              "`compute_infer` over the same run.", ""]

    lines += ["### Targets", "", "| Target | Measured | Result |", "|---|---|---|"]
    for target in results["targets"]:
        lines.append(f"| {target['target']} | {target['measured']} | **{target['result']}** |")
    lines.append("")

    notes = []
    for skip in results["skipped"]:
        notes.append(f"- {SERVER_LABELS[skip['server']]} / {skip['model']} / {PROTOCOL_LABELS.get(skip['protocol'], skip['protocol'])}: "
                     f"skipped — {skip['reason']}")
    for entry in results["servers"]:
        if entry.get("error"):
            notes.append(f"- {SERVER_LABELS[entry['server']]} / {entry['model']}: failed to start — "
                         f"{entry['error'].splitlines()[0][:300]}")
        if entry.get("crashed"):
            notes.append(f"- {SERVER_LABELS[entry['server']]} / {entry['model']}: crashed during the run")
    for run in results["runs"]:
        if run.get("error"):
            notes.append(f"- {SERVER_LABELS[run['server']]} / {run['model']} / {PROTOCOL_LABELS[run['protocol']]} "
                         f"@{run['connections']}: failed — {run['error'].splitlines()[0][:300]}")
        elif run.get("errors"):
            notes.append(f"- {SERVER_LABELS[run['server']]} / {run['model']} / {PROTOCOL_LABELS[run['protocol']]} "
                         f"@{run['connections']}: errors {run['errors']} out of {run['requests']} completed")
    if notes:
        lines += ["### Notes from this run", "", *notes, ""]
    return "\n".join(lines)


DOC_TEMPLATE = f"""# Performance

Shipyard against KServe and MLServer; see `benchmarks/` and `make bench`.

{DOC_START}
{DOC_END}
"""


def write_doc(markdown: str) -> None:
    text = DOC.read_text() if DOC.exists() else DOC_TEMPLATE
    if DOC_START not in text or DOC_END not in text:
        text = text.rstrip("\n") + f"\n\n{DOC_START}\n{DOC_END}\n"
    head, rest = text.split(DOC_START, 1)
    _, tail = rest.split(DOC_END, 1)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(f"{head}{DOC_START}\n{markdown}\n{DOC_END}{tail}")


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    parser.add_argument("--render", metavar="RESULTS_JSON", help="only re-render docs/performance.md from a results file")
    options = parser.parse_args()
    if options.render:
        results = json.loads(Path(options.render).read_text())
        results["overhead"] = compute_overhead(results)
        results["targets"] = compute_targets(results)
        write_doc(render_markdown(results))
        return 0

    began = time.monotonic()
    config = load_config()
    missing = [tool for tool in ("wrk",) if not shutil.which(tool)]
    missing += [f"benchmarks/.venvs/{peer}" for peer in ("kserve", "mlserver")
                if peer in config.servers and not (VENVS / peer / "bin" / "python").exists()]
    if missing:
        print(f"missing: {', '.join(missing)}; run `make bench` (it installs them)", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.timezone.utc)
    run_id = started.strftime("%Y%m%dT%H%M%SZ")
    log(f"run {run_id}: servers {config.servers}, models {config.models}, protocols {config.protocols}, "
        f"connections {config.connections}, {config.seconds:g} s + {config.warmup:g} s warm-up per cell")
    WORK.mkdir(parents=True, exist_ok=True)

    all_models = train_models()
    models = {name: all_models[name] for name in config.models}
    results: dict[str, Any] = {
        "id": run_id,
        "started": started.isoformat(timespec="seconds"),
        "config": {"seconds": config.seconds, "warmup": config.warmup, "repeats": config.repeats,
                   "connections": config.connections,
                   "servers": config.servers, "models": config.models, "protocols": config.protocols,
                   "server_cpus": config.server_cpus, "client_cpus": config.client_cpus,
                   "server": config.server, "source": config.source,
                   "load": {"wrk": "wrk -t1 -cN --timeout 10s --latency -s benchmarks/wrk/post.lua",
                            "grpc": "benchmarks/grpc_load.py (grpc.aio, N in flight, 1 channel, raw_input_contents)"}},
        "environment": environment(config),
        "models": {},
        "servers": [],
        "runs": [],
        "verification": [],
        "skipped": [],
    }
    for name, model in models.items():
        timing = measure_model_time(model, config.server_cpus)
        results["models"][name] = {"path": str(model.path.relative_to(REPO)), "features": model.features,
                                   "description": MODEL_LABELS.get(name, name), "expected": model.expected,
                                   "model_time": timing}
        log(f"model {name}: predict on one row p50 {timing['p50_us']:.1f} µs (expected answer {model.expected})")

    results["environment"]["load_average_at_start"] = load_average()
    busy0 = machine_busy_seconds()
    time.sleep(2)
    results["environment"]["other_cores_busy_at_start"] = round((machine_busy_seconds() - busy0) / 2, 3)
    if results["environment"]["other_cores_busy_at_start"] > BUSY_OTHER:
        log(f"warning: the machine is not idle ({results['environment']['other_cores_busy_at_start']} cores busy "
            "before any server started); cells measured while other processes run are flagged ⚠")

    interrupted = False
    try:
        for kind in config.servers:
            for model in models.values():
                bench_server(kind, model, config, results)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; writing what was measured")

    results["overhead"] = compute_overhead(results)
    results["targets"] = compute_targets(results)
    results["duration_s"] = round(time.monotonic() - began, 1)
    results["interrupted"] = interrupted
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, default=str)
    (RESULTS / f"{run_id}.json").write_text(text)
    (RESULTS / "latest.json").write_text(text)
    log(f"wrote benchmarks/results/{run_id}.json and latest.json ({results['duration_s'] / 60:.1f} min)")
    markdown = render_markdown(results)
    if not options.no_doc:
        write_doc(markdown)
        log("updated docs/performance.md")
    print(markdown)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
