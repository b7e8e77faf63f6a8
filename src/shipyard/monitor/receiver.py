"""A detector served as a CloudEvents receiver: ``shipyard monitor serve`` (the target of a KServe logger).

Routes (server/http.py's HttpServer, no framework):

``POST /`` (any path but the ones below)
    One CloudEvent. Binary mode: ``ce-specversion``, ``ce-id``, ``ce-type``, ``ce-source`` headers, the
    body the logged payload; or structured mode: ``content-type: application/cloudevents+json`` with
    ``data`` holding the payload. ``ce-type`` is ``org.kubeflow.serving.inference.request`` (body a V1
    ``{"instances": [...]}`` or V2 ``{"inputs": [...]}`` request) or ``...inference.response`` (``{"predictions":
    [...]}`` or ``{"outputs": [...]}``). Rows: V1 instances as lists (by position, the reference's column
    order), objects (by column name) or scalars (one feature); V2 inputs as tensors named after the
    columns (shape [n] or [n, 1] each), or one 2-D tensor [n, features]. A detector without
    ``needs_predictions`` is fed each request at once and responses are acknowledged only; one with it
    (bias) is fed when a request and the response with its ``ce-id`` have both arrived (pending pairs
    are bounded, oldest dropped). Answer 200 ``{"id", "rows", "scores", "alerts", "instances"}``; 400
    with a message naming what is wrong for a bad event (the server keeps serving).
``POST /feedback``
    ``{"id": ce-id, "label": value or [values]}`` or a list of those: ground truth for the bias detector.
    404 for an unknown id, 400 for a detector that takes no labels.
``GET /metrics``
    Prometheus text: ``shipyard_detector_score{detector,feature,statistic}``, per-group scores in
    ``shipyard_detector_group_score{detector,feature,group,statistic}``, ``shipyard_detector_alerts_total
    {detector,statistic}``, ``shipyard_detector_rows_total{detector}``, ``shipyard_detector_instances_flagged_total
    {detector}``, ``shipyard_detector_events_total{detector,type,outcome}``,
    ``shipyard_detector_alert_delivery_failures_total{detector}``.
``GET /healthz``
    ``{"ok": true, "detector", "rows", "columns"}``.

Alerts are edge-triggered: a window score whose ``alert`` turns true fires once (a warning log line, the
counter, and when ``alert_url`` is set a binary-mode CloudEvent ``ce-type: org.shipyard.monitor.alert``,
POSTed in the background with 3 tries); it re-arms when the score falls back under its threshold.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from shipyard.monitor.detectors.base import BadBatch, Detector, FeedbackUnsupported, Score, load_detector
from shipyard.server.rest import Request, Response, error_response, json_response

log = logging.getLogger("shipyard.monitor")

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
ALERT_TYPE = "org.shipyard.monitor.alert"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_BODY = 64 * 1024 * 1024


class BadEvent(ValueError):
    """An event this receiver cannot use; the message says why (answered with 400)."""


class DetectorMetrics:
    def __init__(self, detector: str) -> None:
        self.detector = detector
        self.registry = CollectorRegistry()
        self.score = Gauge("shipyard_detector_score", "The detector's latest window scores",
                           ["detector", "feature", "statistic"], registry=self.registry)
        self.group_score = Gauge("shipyard_detector_group_score", "The detector's latest per-group scores",
                                 ["detector", "feature", "group", "statistic"], registry=self.registry)
        self.alerts = Counter("shipyard_detector_alerts", "Alerts raised (a score crossing its threshold)",
                              ["detector", "statistic"], registry=self.registry)
        self.rows = Counter("shipyard_detector_rows", "Rows fed to the detector", ["detector"],
                            registry=self.registry)
        self.flagged = Counter("shipyard_detector_instances_flagged", "Rows whose own score crossed its threshold",
                               ["detector"], registry=self.registry)
        self.events = Counter("shipyard_detector_events", "CloudEvents received by type and outcome",
                              ["detector", "type", "outcome"], registry=self.registry)
        self.delivery_failures = Counter("shipyard_detector_alert_delivery_failures",
                                         "Alert events that could not be delivered to the alert URL",
                                         ["detector"], registry=self.registry)
        self.rows.labels(detector)
        self.alerts.labels(detector, "any")  # so the family shows before the first alert
        self.delivery_failures.labels(detector)

    def set_scores(self, scores: list[Score]) -> None:
        for score in scores:
            if score.instance:
                continue
            feature = score.labels.get("feature", "")
            if "group" in score.labels:
                self.group_score.labels(self.detector, feature, score.labels["group"], score.metric).set(score.value)
            else:
                self.score.labels(self.detector, feature, score.metric).set(score.value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class DetectorApp:
    """The receiver: ``await app(request) -> response`` for HttpServer."""

    def __init__(self, detector: Detector, *, alert_url: str | None = None, source: str | None = None,
                 max_pending: int = 10_000) -> None:
        self.detector = detector
        self.name = getattr(detector, "name", type(detector).__name__)
        self.alert_url = alert_url
        self.source = source or f"shipyard/monitor/{self.name}"
        self.max_pending = max_pending
        self.metrics = DetectorMetrics(self.name)
        self.rows_seen = 0
        self._alerting: set[Any] = set()
        #: ce-id -> [rows or None, predictions or None] for detectors that need predictions
        self._pending: OrderedDict[str, list[Any]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: Any = None
        self._lock = asyncio.Lock()

    # -- routing ---------------------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        method = "GET" if request.method == "HEAD" else request.method
        try:
            if path == "/healthz":
                return self._only(method, "GET") or json_response(
                    {"ok": True, "detector": self.name, "rows": self.rows_seen, "columns": self.detector.columns})
            if path == "/metrics":
                return self._only(method, "GET") or Response(200, self.metrics.render(), METRICS_CONTENT_TYPE)
            if path == "/feedback":
                return self._only(method, "POST") or await self.feedback(request)
            return self._only(method, "POST") or await self.event(request)
        except BadEvent as exc:
            return error_response(400, str(exc))
        except Exception as exc:  # a bug (ours or a custom detector's): say so, keep serving
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    @staticmethod
    def _only(method: str, allowed: str) -> Response | None:
        if method != allowed:
            return error_response(405, f"{method} is not allowed here; use {allowed}")
        return None

    # -- events ----------------------------------------------------------------------------------
    async def event(self, request: Request) -> Response:
        try:
            attributes, payload = parse_cloudevent(request.headers, request.body)
        except BadEvent:
            kind = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}.get(request.headers.get("ce-type", ""), "unknown")
            self.metrics.events.labels(self.name, kind, "bad").inc()
            raise
        kind = "request" if attributes["type"] == REQUEST_TYPE else "response"
        try:
            async with self._lock:
                result = await self._handle(kind, attributes["id"], payload)
        except (BadEvent, BadBatch, ValueError) as exc:
            self.metrics.events.labels(self.name, kind, "bad").inc()
            raise BadEvent(f"event {attributes['id']!r} ({attributes['type']}): {exc}") from None
        self.metrics.events.labels(self.name, kind, "ok").inc()
        return json_response({"id": attributes["id"], **result})

    async def _handle(self, kind: str, event_id: str, payload: Any) -> dict[str, Any]:
        detector = self.detector
        if kind == "request":
            rows = detector.prepare(decode_rows(payload, detector.columns))
            if not detector.needs_predictions:
                return await self._feed(rows, None, event_id)
            return await self._pair(event_id, rows=rows)
        predictions = decode_predictions(payload)
        if not detector.needs_predictions:
            return {"rows": 0, "scores": [], "alerts": [], "instances": [], "note": "responses are not used by "
                    f"the {self.name} detector"}
        return await self._pair(event_id, predictions=predictions)

    async def _pair(self, event_id: str, rows: pd.DataFrame | None = None,
                    predictions: list[Any] | None = None) -> dict[str, Any]:
        entry = self._pending.get(event_id) or [None, None]
        if rows is not None:
            entry[0] = rows
        if predictions is not None:
            entry[1] = predictions
        if entry[0] is None or entry[1] is None:
            self._pending[event_id] = entry
            while len(self._pending) > self.max_pending:
                dropped, _ = self._pending.popitem(last=False)
                log.warning("dropped unpaired event %s (over %d pending)", dropped, self.max_pending)
            return {"rows": 0, "scores": [], "alerts": [], "instances": [], "pending": True}
        self._pending.pop(event_id, None)
        if len(entry[1]) != len(entry[0]):
            raise BadEvent(f"the request has {len(entry[0])} rows but its response {len(entry[1])} predictions")
        return await self._feed(entry[0], entry[1], event_id)

    async def _feed(self, rows: pd.DataFrame, predictions: list[Any] | None, event_id: str) -> dict[str, Any]:
        scores = self.detector.update(rows, predictions=predictions, event_id=event_id)
        self.rows_seen += len(rows)
        self.metrics.rows.labels(self.name).inc(len(rows))
        return self._after(scores, event_id, rows=len(rows))

    def _after(self, scores: list[Score], event_id: str, rows: int = 0) -> dict[str, Any]:
        instances = [s for s in scores if s.instance]
        window = [s for s in scores if not s.instance]
        flagged = sum(1 for s in instances if s.alert)
        if flagged:
            self.metrics.flagged.labels(self.name).inc(flagged)
        self.metrics.set_scores(self.detector.metrics())
        alerts = []
        for score in window:
            if score.alert and score.key not in self._alerting:
                self._alerting.add(score.key)
                alerts.append(self._alert(score, event_id))
            elif not score.alert:
                self._alerting.discard(score.key)
        return {"rows": rows, "scores": [s.to_dict() for s in window], "alerts": alerts,
                "instances": [s.to_dict() for s in instances]}

    # -- feedback --------------------------------------------------------------------------------
    async def feedback(self, request: Request) -> Response:
        try:
            body = json.loads(request.body or b"null")
        except ValueError as exc:
            raise BadEvent(f"feedback is not JSON: {exc}") from None
        items = body if isinstance(body, list) else [body]
        if not items or not all(isinstance(i, dict) and "id" in i and "label" in i for i in items):
            raise BadEvent('feedback must be {"id": <ce-id of the request>, "label": <label>} or a list of those')
        results = []
        async with self._lock:
            for item in items:
                try:
                    scores = self.detector.feedback(str(item["id"]), item["label"])
                except FeedbackUnsupported as exc:
                    raise BadEvent(str(exc)) from None
                except KeyError as exc:
                    return error_response(404, exc.args[0] if exc.args else f"unknown id {item['id']!r}")
                except ValueError as exc:
                    raise BadEvent(f"feedback for {item['id']!r}: {exc}") from None
                results.append(self._after(scores, str(item["id"])))
        return json_response({"accepted": len(items), "scores": results[-1]["scores"],
                              "alerts": [a for r in results for a in r["alerts"]]})

    # -- alerts ----------------------------------------------------------------------------------
    def _alert(self, score: Score, event_id: str) -> dict[str, Any]:
        alert = {
            "detector": self.name,
            "statistic": score.metric,
            "feature": score.labels.get("feature", ""),
            "labels": dict(score.labels),
            "value": score.to_dict()["value"],
            "threshold": score.threshold,
            "details": score.to_dict().get("details", {}),
            "event_id": event_id,
            "time": _now(),
        }
        self.metrics.alerts.labels(self.name, score.metric).inc()
        self.metrics.alerts.labels(self.name, "any").inc()
        log.warning("ALERT detector=%s statistic=%s feature=%s value=%s threshold=%s details=%s event=%s",
                    self.name, score.metric, alert["feature"], alert["value"], score.threshold,
                    json.dumps(alert["details"]), event_id)
        if self.alert_url:
            task = asyncio.get_running_loop().create_task(self._deliver(alert))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return alert

    async def _deliver(self, alert: dict[str, Any]) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10.0)
        headers = {
            "ce-specversion": "1.0",
            "ce-type": ALERT_TYPE,
            "ce-id": str(uuid.uuid4()),
            "ce-source": self.source,
            "ce-time": alert["time"],
            "ce-subject": f"{alert['statistic']}/{alert['feature']}",
            "content-type": "application/json",
        }
        body = json.dumps(alert).encode()
        for attempt in range(3):
            try:
                answer = await self._client.post(self.alert_url, content=body, headers=headers)
                if answer.status_code < 300:
                    return
                problem = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.2 * 2 ** attempt)
        self.metrics.delivery_failures.labels(self.name).inc()
        log.error("could not deliver an alert to %s: %s", self.alert_url, problem)

    async def close(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        if self._client is not None:
            await self._client.aclose()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


# -- decoding ------------------------------------------------------------------------------------
def parse_cloudevent(headers: dict[str, str], body: bytes) -> tuple[dict[str, str], Any]:
    """(attributes, decoded JSON payload) of a binary- or structured-mode CloudEvent."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/cloudevents+json":
        try:
            envelope = json.loads(body)
        except ValueError as exc:
            raise BadEvent(f"structured CloudEvent is not JSON: {exc}") from None
        if not isinstance(envelope, dict):
            raise BadEvent("structured CloudEvent must be a JSON object")
        attributes = {k: str(v) for k, v in envelope.items() if k not in ("data", "data_base64")}
        payload = envelope.get("data")
        if isinstance(payload, str):
            payload = _json(payload.encode(), "the event's data")
    else:
        attributes = {k[3:]: v for k, v in headers.items() if k.startswith("ce-")}
        if not attributes:
            raise BadEvent("not a CloudEvent: no ce-* headers (binary mode) and content-type is not "
                           "application/cloudevents+json (structured mode)")
        payload = _json(body, "the event body")
    missing = [a for a in ("specversion", "id", "type", "source") if not attributes.get(a)]
    if missing:
        raise BadEvent(f"CloudEvent lacks the required attribute(s) {', '.join('ce-' + m for m in missing)}")
    if attributes["specversion"] != "1.0":
        raise BadEvent(f"unsupported ce-specversion {attributes['specversion']!r} (1.0 is)")
    if attributes["type"] not in (REQUEST_TYPE, RESPONSE_TYPE):
        raise BadEvent(f"unsupported ce-type {attributes['type']!r}: expected {REQUEST_TYPE} or {RESPONSE_TYPE}")
    if not isinstance(payload, dict):
        raise BadEvent("the event's payload must be a JSON object (a KServe V1 or V2 request or response)")
    return attributes, payload


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BadEvent(f"{what} is not JSON: {exc}") from None


def _tensor(tensor: Any, where: str) -> np.ndarray:
    if not isinstance(tensor, dict) or "data" not in tensor:
        raise BadEvent(f"{where} must be a V2 tensor object with name, shape, datatype and data")
    data = np.asarray(tensor["data"], dtype=object if tensor.get("datatype") == "BYTES" else None)
    shape = tensor.get("shape")
    if shape is not None:
        try:
            data = data.reshape([int(s) for s in shape])
        except (ValueError, TypeError):
            raise BadEvent(f"{where}: {data.size} values do not fit shape {shape}") from None
    return data


def decode_rows(payload: dict[str, Any], columns: list[str]) -> pd.DataFrame:
    """Rows of a V1 ``instances`` or V2 ``inputs`` request, with the reference's column names."""
    if "instances" in payload:
        instances = payload["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadEvent('"instances" must be a non-empty list')
        if all(isinstance(i, dict) for i in instances):
            return pd.DataFrame(instances)
        if all(isinstance(i, list) for i in instances):
            widths = {len(i) for i in instances}
            if widths != {len(columns)}:
                raise BadEvent(f"instances have {sorted(widths)} values but the reference has {len(columns)} "
                               f"features ({', '.join(columns)})")
            return pd.DataFrame(instances, columns=columns)
        if all(not isinstance(i, (list, dict)) for i in instances) and len(columns) == 1:
            return pd.DataFrame({columns[0]: instances})
        raise BadEvent("instances must all be lists (by position) or all objects (by feature name)")
    if "inputs" in payload:
        inputs = payload["inputs"]
        if not isinstance(inputs, list) or not inputs:
            raise BadEvent('"inputs" must be a non-empty list of tensors')
        named = {t.get("name"): t for t in inputs if isinstance(t, dict)}
        if all(c in named for c in columns):
            arrays = {}
            for column in columns:
                array = _tensor(named[column], f"input {column!r}")
                if array.ndim == 2 and array.shape[1] == 1:
                    array = array[:, 0]
                if array.ndim != 1:
                    raise BadEvent(f"input {column!r} must have shape [n] or [n, 1], not {list(array.shape)}")
                arrays[column] = array
            lengths = {len(a) for a in arrays.values()}
            if len(lengths) != 1:
                raise BadEvent(f"the inputs have different lengths {sorted(lengths)}")
            return pd.DataFrame(arrays)
        if len(inputs) == 1:
            array = _tensor(inputs[0], "input 0")
            if array.ndim == 1 and len(columns) == 1:
                array = array.reshape(-1, 1)
            if array.ndim != 2 or array.shape[1] != len(columns):
                raise BadEvent(f"the single input tensor must have shape [n, {len(columns)}] (one column per "
                               f"feature: {', '.join(columns)}), not {list(array.shape)}")
            return pd.DataFrame(array, columns=columns)
        raise BadEvent(f"the inputs are neither one 2-D tensor nor one tensor per feature named after the reference's "
                       f"columns ({', '.join(columns)}); got {', '.join(map(str, named))}")
    if "predictions" in payload or "outputs" in payload:
        raise BadEvent("a response payload (predictions/outputs) in an inference.request event")
    raise BadEvent('the request payload has neither "instances" (V1) nor "inputs" (V2)')


def decode_predictions(payload: dict[str, Any]) -> list[Any]:
    """One prediction per row from a V1 ``predictions`` or the first V2 output tensor."""
    if "predictions" in payload:
        predictions = payload["predictions"]
        if not isinstance(predictions, list):
            raise BadEvent('"predictions" must be a list')
        return predictions
    if "outputs" in payload:
        outputs = payload["outputs"]
        if not isinstance(outputs, list) or not outputs:
            raise BadEvent('"outputs" must be a non-empty list of tensors')
        array = _tensor(outputs[0], "output 0")
        if array.ndim == 0:
            return [array.item()]
        return [row.tolist() if isinstance(row, np.ndarray) else row for row in array]
    if "instances" in payload or "inputs" in payload:
        raise BadEvent("a request payload (instances/inputs) in an inference.response event")
    raise BadEvent('the response payload has neither "predictions" (V1) nor "outputs" (V2)')


# -- serving -------------------------------------------------------------------------------------
def read_reference(path: str | Path, label_column: str | None = None) -> pd.DataFrame:
    """A reference sample from .csv, .parquet or .npy (array columns f0, f1, ...), label column dropped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = pd.read_csv(path)
    elif suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif suffix == ".npy":
        from shipyard.monitor.detectors.base import as_frame

        frame = as_frame(np.load(path, allow_pickle=False))
    else:
        raise ValueError(f"cannot read a reference from {path.name}: use .csv, .parquet or .npy")
    if label_column:
        if label_column not in frame.columns:
            raise ValueError(f"label column {label_column!r} is not in the reference ({', '.join(map(str, frame.columns))})")
        frame = frame.drop(columns=[label_column])
    return frame


def build(detector: str, reference: str | Path, *, alert_url: str | None = None, label_column: str | None = None,
          **options: Any) -> DetectorApp:
    instance = load_detector(detector, **options)
    instance.fit(read_reference(reference, label_column))
    return DetectorApp(instance, alert_url=alert_url)


async def run(app: DetectorApp, host: str = "127.0.0.1", port: int = 0,
              ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then drain."""
    from shipyard.server.http import HttpServer

    server = HttpServer(app, host, port, MAX_BODY)
    await server.start()
    url = f"http://{host}:{server.port}"
    (ready or (lambda u: print(f"{app.name} detector listening on {u}", flush=True)))(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown(5.0)
    await app.close()


def serve(detector: str, reference: str | Path, *, host: str = "127.0.0.1", port: int = 0,
          alert_url: str | None = None, label_column: str | None = None, **options: Any) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build(detector, reference, alert_url=alert_url, label_column=label_column, **options)
    asyncio.run(run(app, host, port))


if __name__ == "__main__":
    from shipyard.cli.monitor import app as _cli

    _cli()
