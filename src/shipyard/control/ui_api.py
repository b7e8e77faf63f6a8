"""The dashboard's routes on the control plane's API server (mounted by api.py's ``ControlApi``).

    GET /                                         the dashboard (control/ui/index.html)
    GET /ui/{file}                                its files (app.js, style.css, favicon.svg...), ETag + no-cache
    GET /apis/ui/events                           text/event-stream: a ``tick`` event every second, a comment
                                                  line every 15 s
    GET /apis/ui/metrics/inferenceservices/{ns}/{name}   {"points": [{"time", "rps", "p50_ms", "p99_ms",
                                                  "error_rate", "replicas", "ready_replicas", "batch_size"}]}
    GET /apis/ui/metrics/datasets/{ns}/{name}     {"points": [{"time", "hit_ratio", "cached_percent"}]}
    GET /apis/ui/trainjobs/{ns}/{name}/report     {"points", "checkpoints", "restarts", "queuePosition", "steps"}
    GET /apis/ui/graphs/{ns}/{name}/stats         {"steps": {"node/step": {"requests", "errors"}}}

The numbers come from ``UiMetrics`` (ui_metrics.py) and the gateway's graph counters, which live in
the plane's process; an API without them (tests) answers 503 for the live parts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import re
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from shipyard.server.http import StreamResponse
from shipyard.server.rest import Request, Response, json_response

UI_DIR = Path(__file__).parent / "ui"
#: Seconds between keep-alive comment lines on the event stream.
KEEPALIVE_S = 15.0
#: Report points returned at most (a longer report is thinned evenly; the last point is always kept).
MAX_REPORT_POINTS = 5000
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
    ".json": "application/json", ".map": "application/json", ".png": "image/png", ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json", ".txt": "text/plain; charset=utf-8", ".woff2": "font/woff2",
}
#: Headers on every dashboard file: no framing (clickjacking), no sniffing, no referrer, only our own scripts.
_SECURITY_HEADERS = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("content-security-policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
     "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)(\.[a-z]+)?$")


class UiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UiApi:
    """The dashboard's files and endpoints.

    ``metrics`` is the plane's ``UiMetrics`` (None: 503 for events and empty histories); ``graph_stats(ns,
    name)`` the gateway's per-step counters; ``home`` is $SHIPYARD_HOME (jobs' workspaces and logs).
    """

    def __init__(self, store: Any, home: Path, metrics: Any = None,
                 graph_stats: Callable[[str, str], dict[str, Any] | None] | None = None,
                 ui_dir: Path = UI_DIR, keepalive_s: float = KEEPALIVE_S) -> None:
        self.store = store
        self.home = home
        self.metrics = metrics
        self.graph_stats = graph_stats
        self.ui_dir = ui_dir
        self.keepalive_s = keepalive_s
        self._files: dict[Path, tuple[int, int, bytes, str]] = {}  # path -> (mtime_ns, size, body, etag)
        self._reports: dict[Path, tuple[int, list[dict[str, Any]]]] = {}  # path -> (offset read, points)

    # -- routing -------------------------------------------------------------------------------------
    def route(self, parts: list[str]) -> tuple[dict[str, Callable[..., Any]], tuple[Any, ...]] | None:
        """Handlers by method for a path's parts (``path.strip("/").split("/")``), or None: not ours."""
        match parts:
            case [""] | ["index.html"]:
                return {"GET": self.index}, ()
            case ["ui", *rest] if rest:
                return {"GET": self.asset}, ("/".join(rest),)
            case ["apis", "ui", "events"]:
                return {"GET": self.events}, ()
            case ["apis", "ui", "metrics", "inferenceservices" | "isvc" | "inferenceservice", namespace, name]:
                return {"GET": self.service_metrics}, (namespace, name)
            case ["apis", "ui", "metrics", "datasets" | "dataset", namespace, name]:
                return {"GET": self.dataset_metrics}, (namespace, name)
            case ["apis", "ui", "trainjobs" | "trainjob" | "tj", namespace, name, "report"]:
                return {"GET": self.train_report}, (namespace, name)
            case ["apis", "ui", "graphs" | "inferencegraphs" | "ig", namespace, name, "stats"]:
                return {"GET": self.graph_step_stats}, (namespace, name)
            case ["apis", "ui", *_]:
                raise UiError(404, "no dashboard route for /" + "/".join(parts) + "; see /apis/ui/events, "
                              "/apis/ui/metrics/..., /apis/ui/trainjobs/NS/NAME/report, /apis/ui/graphs/NS/NAME/stats")
        return None

    # -- files ---------------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        return self._file(request, "index.html")

    async def asset(self, request: Request, name: str) -> Response:
        return self._file(request, name)

    def _file(self, request: Request, name: str) -> Response:
        root = self.ui_dir.resolve()
        path = (root / name).resolve()
        if root not in path.parents or not path.is_file() or any(part.startswith(".") for part in Path(name).parts):
            raise UiError(404, f"no dashboard file {name!r}" + ("" if (root / "index.html").is_file() else
                                                                 f"; {root} holds no dashboard (reinstall shipyard)"))
        stat = path.stat()
        cached = self._files.get(path)
        if cached is None or cached[:2] != (stat.st_mtime_ns, stat.st_size):
            body = path.read_bytes()
            cached = (stat.st_mtime_ns, stat.st_size, body, f'"{hashlib.sha1(body).hexdigest()[:20]}"')
            self._files[path] = cached
        body, etag = cached[2], cached[3]
        headers = [("etag", etag), ("cache-control", "no-cache"), *_SECURITY_HEADERS]
        content_type = _CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or \
            "application/octet-stream"
        if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
            return Response(304, b"", content_type, headers)
        return Response(200, body, content_type, headers)

    # -- live ----------------------------------------------------------------------------------------
    async def events(self, request: Request) -> Response:
        if self.metrics is None:
            raise UiError(503, "live updates need the control plane's sampler (shipyard up)")
        return StreamResponse(200, b"", "text/event-stream; charset=utf-8",
                              [("cache-control", "no-cache"), ("x-accel-buffering", "no")],
                              chunks=self._ticks())

    async def _ticks(self) -> AsyncIterator[bytes]:
        metrics = self.metrics
        queue = metrics.subscribe()
        loop = asyncio.get_running_loop()
        try:
            yield b"retry: 3000\n: shipyard live updates\n\n"
            if metrics.latest is not None:  # the page has numbers at once, not after a second
                latest = {**metrics.latest, "changed": []}
                yield b"event: tick\ndata: " + json.dumps(latest, separators=(",", ":")).encode() + b"\n\n"
            quiet_since = loop.time()
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), max(0.01, quiet_since + self.keepalive_s - loop.time()))
                except asyncio.TimeoutError:
                    data = None
                if loop.time() - quiet_since >= self.keepalive_s:
                    yield b": keep-alive\n\n"
                    quiet_since = loop.time()
                if data is not None:
                    yield b"event: tick\ndata: " + data + b"\n\n"
        finally:
            metrics.unsubscribe(queue)

    async def service_metrics(self, request: Request, namespace: str, name: str) -> Response:
        self._exists("InferenceService", namespace, name)
        points = self.metrics.service_points(namespace, name) if self.metrics is not None else []
        return json_response({"points": points})

    async def dataset_metrics(self, request: Request, namespace: str, name: str) -> Response:
        self._exists("Dataset", namespace, name)
        points = self.metrics.dataset_points(namespace, name) if self.metrics is not None else []
        return json_response({"points": points})

    async def graph_step_stats(self, request: Request, namespace: str, name: str) -> Response:
        self._exists("InferenceGraph", namespace, name)
        steps = self.graph_stats(namespace, name) if self.graph_stats is not None else None
        return json_response({"steps": steps or {}})

    def _exists(self, kind: str, namespace: str, name: str) -> Any:
        resource = self.store.get(kind, namespace, name)
        if resource is None:
            raise UiError(404, f"{kind.lower()} '{name}' not found in namespace '{namespace}'")
        return resource

    # -- training ------------------------------------------------------------------------------------
    async def train_report(self, request: Request, namespace: str, name: str) -> Response:
        from shipyard.train.runtimes import job_workdir

        resource = self._exists("TrainJob", namespace, name)
        own = (resource.status or {}).get("shipyard") or {}
        resolved = own.get("resolved") or {}
        workdir = Path(resolved["workdir"]) if resolved.get("workdir") else job_workdir(self.home, namespace, name)
        points = self._report_points(workdir / ".shipyard" / "report.jsonl")
        if len(points) > MAX_REPORT_POINTS:  # thinned evenly, the last one kept
            stride = len(points) / MAX_REPORT_POINTS
            points = [points[int(index * stride)] for index in range(MAX_REPORT_POINTS - 1)] + [points[-1]]
        return json_response({
            "points": points,
            "checkpoints": _checkpoints(workdir / "checkpoints"),
            "restarts": int(own.get("restarts") or 0),
            "queuePosition": self._queue_position(resource),
            "steps": self._steps(namespace, name, resolved),
        })

    def _report_points(self, path: Path) -> list[dict[str, Any]]:
        """The report's lines as points (read incrementally: only what was appended since the last call)."""
        offset, points = self._reports.get(path, (0, []))
        try:
            size = path.stat().st_size
            if size < offset:  # a new attempt started the file again
                offset, points = 0, []
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            self._reports.pop(path, None)
            return []
        complete = data[: data.rfind(b"\n") + 1]
        points = list(points)
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
            points.append({"time": entry.get("time"), "step": entry.get("step"), "progress": entry.get("progress"),
                           "metrics": {str(key): value for key, value in metrics.items()
                                       if isinstance(value, (int, float)) and not isinstance(value, bool)}})
        self._reports[path] = (offset + len(complete), points)
        return points

    def _queue_position(self, resource: Any) -> int | None:
        """1 for the job admitted next, by the scheduler's order (priority, then first queued); None unless Queued."""
        from shipyard.control import scheduler
        from shipyard.control.train_validation import priority_of

        def queued(job: Any) -> bool:
            own = (job.status or {}).get("shipyard") or {}
            return own.get("state") == "Queued" and not job.deleting and not job.spec.get("suspend")

        if not queued(resource):
            return None
        demands = [scheduler.Demand((job.namespace, job.name), priority_of(job.annotations),
                                    ((job.status or {}).get("shipyard") or {}).get("queuedAt", 0.0), {})
                   for job in self.store.list("TrainJob") if queued(job)]
        order = [demand.key for demand in scheduler.queue_order(demands)]
        key = (resource.namespace, resource.name)
        return order.index(key) + 1 if key in order else None

    def _steps(self, namespace: str, name: str, resolved: dict[str, Any]) -> list[str]:
        """The job's steps with a log (``POST /apis/trainjobs/NS/NAME/logs {"step": ...}``), and its nodes."""
        found = {path.stem for path in (self.home / "logs" / namespace / name).glob("*.log")}
        nodes = resolved.get("num_nodes")
        if isinstance(nodes, int):
            found |= {f"node-{index}" for index in range(nodes)}
        order = {"dataset-initializer": 0, "model-initializer": 1}

        def rank(step: str) -> tuple[int, int, str]:
            if step in order:
                return (order[step], 0, step)
            if step.startswith("node-") and step[5:].isdigit():
                return (2, int(step[5:]), step)
            return (3, 0, step)

        return sorted(found, key=rank)


def _checkpoints(folder: Path) -> list[dict[str, Any]]:
    """``save_checkpoint``'s checkpoints in ``folder``: path, step and time written, by step."""
    found = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    for path in entries:
        match = _CHECKPOINT.match(path.name)
        if not match:
            continue
        try:
            written = path.stat().st_mtime
        except OSError:
            continue
        found.append({"path": str(path), "step": int(match.group(1)), "time": round(written, 3)})
    return sorted(found, key=lambda item: item["step"])
