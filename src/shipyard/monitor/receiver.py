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

The Open Inference Protocol, so a detector serves as an InferenceService replica (``shipyard serve
FOLDER``): ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/NAME[/versions/V]``
(metadata: the reference's columns in, the detector's ``outputs``) and ``.../ready``;
``POST /v2/models/NAME[/versions/V]/infer`` scores the request's rows on their own with the
detector's ``evaluate`` (the window is left alone; inputs as in an event, plus ``prediction`` and
``label`` tensors for the bias detector; JSON or binary tensors); ``GET /v1/models/NAME`` and
``POST /v1/models/NAME:predict`` (``{"instances", "predictions"?, "labels"?}`` answered with
Alibi Detect's ``{"data": {...}, "meta": {...}}``). A POST carrying ``ce-*`` headers (or a structured
CloudEvent) is an event whatever its path.

State: with a ``StateFile``, the detector's ``state()``, the counters, the alerts in progress and the
unpaired events are saved every ``state_interval_s`` seconds when something changed and on a graceful
stop, and loaded at start when their fingerprint matches (monitor/state.py).

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
from typing import Any, Callable, Sequence
from urllib.parse import unquote

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from shipyard import __version__
from shipyard.monitor.detectors.base import (
    BadBatch,
    Detector,
    EvaluateUnsupported,
    FeedbackUnsupported,
    Score,
    frame_from_state,
    frame_state,
    is_numeric,
    load_detector,
)
from shipyard.monitor.state import StateError, StateFile
from shipyard.protocol.errors import InferenceError, InvalidInput, MethodNotAllowed, NotFound
from shipyard.protocol.http_codec import HEADER_LENGTH, decode_rest_request, encode_rest_response, new_request_id
from shipyard.protocol.infer import InferResult
from shipyard.server import compression
from shipyard.server.rest import Request, Response, error_response, json_response

log = logging.getLogger("shipyard.monitor")

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
ALERT_TYPE = "org.shipyard.monitor.alert"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_BODY = 64 * 1024 * 1024
#: Seconds between two saves of a changed state.
STATE_INTERVAL_S = 10.0
#: Input tensors of an infer request that are not features: the predictions and labels (bias).
PREDICTION_INPUTS = ("prediction", "predictions")
LABEL_INPUTS = ("label", "labels")


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
        #: The counters by family name (what a saved state restores).
        self.counters = {"shipyard_detector_alerts": self.alerts, "shipyard_detector_rows": self.rows,
                         "shipyard_detector_instances_flagged": self.flagged, "shipyard_detector_events": self.events,
                         "shipyard_detector_alert_delivery_failures": self.delivery_failures}
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
                 max_pending: int = 10_000, model_name: str | None = None, state: StateFile | None = None,
                 fingerprint: str = "", state_interval_s: float = STATE_INTERVAL_S) -> None:
        self.detector = detector
        self.name = getattr(detector, "name", type(detector).__name__)
        #: The model name of the V2/V1 routes (``--name``; the detector's name by default).
        self.model_name = model_name or self.name
        self.state = state
        self.fingerprint = fingerprint
        self.state_interval_s = state_interval_s
        #: Changes (events fed, feedback) so far, and how many the last save had.
        self.changes = 0
        self._saved_changes = 0
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
            encoding = request.headers.get("content-encoding", "").strip().lower()
            if encoding and encoding != "identity" and request.body:
                request.body = compression.decompress(request.body, encoding, MAX_BODY)
            if method == "POST" and path != "/feedback" and is_cloudevent(request.headers):
                return await self.event(request)
            if path == "/v2" or path.startswith(("/v2/", "/v1/")):
                return await self.protocol(request, method, path)
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
        except InferenceError as exc:
            return error_response(exc.status, exc.message)
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
            self.changes += 1
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
        self.changes += 1
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
                self.changes += 1
                results.append(self._after(scores, str(item["id"])))
        return json_response({"accepted": len(items), "scores": results[-1]["scores"],
                              "alerts": [a for r in results for a in r["alerts"]]})

    # -- the inference protocol -----------------------------------------------------------------
    async def protocol(self, request: Request, method: str, path: str) -> Response:
        """V2 health, metadata and infer; V1 readiness and predict (see the module doc)."""
        segments = [unquote(part) for part in path.strip("/").split("/")]
        if segments[0] == "v1":
            match segments:
                case ["v1", "models", target]:
                    name, _, verb = target.partition(":")
                    self._model(name)
                    if verb == "predict":
                        return self._method(method, "POST") or self.v1_predict(request)
                    if not verb:
                        return self._method(method, "GET") or json_response({"name": self.model_name,
                                                                              "ready": True})
            raise NotFound(f"no route for {request.path}; a detector serves /v1/models/{self.model_name}[:predict]")
        match segments:
            case ["v2"]:
                return self._method(method, "GET") or json_response(
                    {"name": "shipyard-detector", "version": __version__, "extensions": []})
            case ["v2", "health", "live"]:
                return self._method(method, "GET") or json_response({"live": True})
            case ["v2", "health", "ready"]:
                return self._method(method, "GET") or json_response({"ready": True})
            case ["v2", "models", name] | ["v2", "models", name, "versions", _]:
                self._model(name)
                return self._method(method, "GET") or json_response(self.metadata())
            case ["v2", "models", name, "ready"] | ["v2", "models", name, "versions", _, "ready"]:
                self._model(name)
                return self._method(method, "GET") or json_response({"name": self.model_name, "ready": True})
            case ["v2", "models", name, "infer"] | ["v2", "models", name, "versions", _, "infer"]:
                self._model(name)
                return self._method(method, "POST") or self.infer(request)
        raise NotFound(f"no route for {request.path}; a detector serves /v2/health/*, /v2/models/{self.model_name}"
                       "[/ready|/infer], /metrics, /feedback, and CloudEvents on any other POST")

    def _model(self, name: str) -> None:
        if name != self.model_name:
            raise NotFound(f"model '{name}' is not served here; this detector serves '{self.model_name}'")

    @staticmethod
    def _method(method: str, allowed: str) -> Response | None:
        if method != allowed:
            raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}")
        return None

    def metadata(self) -> dict[str, Any]:
        """V2 model metadata: the reference's columns in (plus the predictions for bias), ``outputs`` out."""
        detector = self.detector
        inputs = [{"name": c, "datatype": "FP64" if is_numeric(detector.dtypes.get(c)) else "BYTES", "shape": [-1]}
                  for c in detector.columns]
        if getattr(detector, "needs_predictions", False):
            inputs += [{"name": "prediction", "datatype": "FP64", "shape": [-1]},
                       {"name": "label", "datatype": "FP64", "shape": [-1], "optional": True}]
        outputs = [{"name": n, "datatype": d, "shape": list(shape)} for n, d, shape in getattr(detector, "outputs", ())]
        return {"name": self.model_name, "versions": ["1"], "platform": f"shipyard-detector/{self.name}",
                "inputs": inputs, "outputs": outputs}

    def infer(self, request: Request) -> Response:
        """Score the rows of a V2 infer request on their own (the detector's ``evaluate``)."""
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None and not header_length.strip().isdigit():
            raise InvalidInput(f"Inference-Header-Content-Length must be a non-negative integer, got '{header_length}'")
        decoded = decode_rest_request(request.body, int(header_length) if header_length is not None else None, [])
        inputs = dict(decoded.inputs)
        predictions = _take(inputs, PREDICTION_INPUTS)
        labels = _take(inputs, LABEL_INPUTS)
        outputs = self._evaluate(rows_from_arrays(inputs, self.detector.columns), predictions, labels)
        wanted = decoded.output_names()
        if wanted:
            unknown = [n for n in wanted if n not in outputs]
            if unknown:
                raise InvalidInput(f"unknown output(s) {', '.join(unknown)}; the {self.name} detector has "
                                   f"{', '.join(outputs)}")
            outputs = {n: outputs[n] for n in wanted}
        result = InferResult(self.model_name, "1", new_request_id(decoded.id), outputs)
        body, json_length = encode_rest_response(decoded, result)
        if json_length is None:
            return Response(200, body)
        return Response(200, body, "application/octet-stream", [(HEADER_LENGTH, str(json_length))])

    def v1_predict(self, request: Request) -> Response:
        """``{"instances", "predictions"?, "labels"?}`` -> Alibi Detect's ``{"data": {...}, "meta": {...}}``."""
        payload = _json(request.body, "the request body")
        if not isinstance(payload, dict) or "instances" not in payload:
            raise BadEvent('a V1 request is {"instances": [...]} (plus "predictions" and "labels" for bias)')
        rows = decode_rows({"instances": payload["instances"]}, self.detector.columns)
        outputs = self._evaluate(rows, payload.get("predictions"), payload.get("labels"))
        data = {name: _listed(array) for name, array in outputs.items()}
        return json_response({"data": data, "meta": {"name": self.model_name, "detector": self.name}})

    def _evaluate(self, rows: pd.DataFrame, predictions: Any, labels: Any) -> dict[str, np.ndarray]:
        detector = self.detector
        try:
            return detector.evaluate(detector.prepare(rows), predictions=_values(predictions), labels=_values(labels))
        except EvaluateUnsupported as exc:
            raise BadEvent(str(exc)) from None
        except (BadBatch, ValueError, TypeError) as exc:
            raise BadEvent(f"cannot score the request: {exc}") from None

    # -- state -----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything that survives a restart, as plain JSON values."""
        state = getattr(self.detector, "state", None)
        counters = []
        for family in self.metrics.registry.collect():
            if family.type != "counter":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value:
                    counters.append([family.name, dict(sample.labels), sample.value])
        pending = [[event_id, None if rows is None else frame_state(rows), predictions]
                   for event_id, (rows, predictions) in self._pending.items()]
        return {
            "fingerprint": self.fingerprint,
            "saved": _now(),
            "detector": state() if callable(state) else None,
            "receiver": {"rows_seen": self.rows_seen, "counters": counters, "pending": pending,
                         "alerting": [[metric, [list(p) for p in labels]] for metric, labels in self._alerting]},
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Take back what ``snapshot`` returned (after ``fit``)."""
        restore = getattr(self.detector, "restore", None)
        if data.get("detector") is not None and callable(restore):
            restore(data["detector"])
        receiver = data.get("receiver") or {}
        self.rows_seen = int(receiver.get("rows_seen", 0))
        for name, labels, value in receiver.get("counters", []):
            counter = self.metrics.counters.get(name)
            if counter is not None and value > 0:
                counter.labels(**labels).inc(value)
        self._pending = OrderedDict()
        for event_id, rows, predictions in receiver.get("pending", []):
            frame = None if rows is None else self.detector.prepare(frame_from_state(rows))
            self._pending[str(event_id)] = [frame, predictions]
        self._alerting = {(metric, tuple(tuple(p) for p in labels)) for metric, labels in receiver.get("alerting", [])}
        self.metrics.set_scores(self.detector.metrics())

    def load_state(self) -> bool:
        """Restore the saved state if there is one for this detector; True when it was restored, False
        (with a warning) when there is none or it belongs to something else; StateError when restoring
        failed half-way (the caller builds a fresh detector)."""
        if self.state is None:
            return False
        try:
            data = self.state.load()
        except StateError as exc:
            log.warning("%s; starting afresh", exc)
            return False
        if data is None:
            return False
        if data.get("fingerprint") != self.fingerprint:
            log.warning("the state in %s was saved for another detector, reference or options; starting afresh "
                        "(it is replaced at the next save)", self.state.path)
            return False
        try:
            self.restore(data)
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # half restored: the caller starts afresh
            raise StateError(f"the state in {self.state.path} does not fit this detector "
                             f"({type(exc).__name__}: {exc})") from None
        log.info("restored the %s detector's state from %s (saved %s): %d rows seen", self.name, self.state.path,
                 data.get("saved", "?"), self.rows_seen)
        return True

    async def save_state(self, force: bool = False) -> bool:
        """Save the state if it changed since the last save (or ``force``); False when not saved."""
        if self.state is None or (not force and self.changes == self._saved_changes):
            return False
        changes, data = self.changes, self.snapshot()
        try:
            await asyncio.to_thread(self.state.save, data)
        except OSError as exc:
            log.error("could not save the detector's state to %s: %s", self.state.path, exc)
            return False
        self._saved_changes = changes
        return True

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
        if not all(isinstance(t, dict) for t in inputs):
            raise BadEvent("each of the inputs must be a V2 tensor object with name, shape, datatype and data")
        named = {t.get("name"): t for t in inputs}
        if all(c in named for c in columns):
            arrays = {c: _tensor(named[c], f"input {c!r}") for c in columns}
        elif len(inputs) == 1:
            arrays = {str(inputs[0].get("name")): _tensor(inputs[0], "input 0")}
        else:
            arrays = {str(name): np.zeros(0) for name in named}  # only the names matter for the error
        return rows_from_arrays(arrays, columns)
    if "predictions" in payload or "outputs" in payload:
        raise BadEvent("a response payload (predictions/outputs) in an inference.request event")
    raise BadEvent('the request payload has neither "instances" (V1) nor "inputs" (V2)')


def rows_from_arrays(arrays: dict[str, np.ndarray], columns: list[str]) -> pd.DataFrame:
    """Rows from V2 tensors: one per column named after the reference's columns ([n] or [n, 1] each), or
    one [n, features] tensor in the reference's column order. BYTES values become text."""
    if columns and all(c in arrays for c in columns):
        picked = {}
        for column in columns:
            array = arrays[column]
            if array.ndim == 2 and array.shape[1] == 1:
                array = array[:, 0]
            if array.ndim != 1:
                raise BadEvent(f"input {column!r} must have shape [n] or [n, 1], not {list(array.shape)}")
            picked[column] = _text(array)
        lengths = {len(a) for a in picked.values()}
        if len(lengths) != 1:
            raise BadEvent(f"the inputs have different lengths {sorted(lengths)}")
        return pd.DataFrame(picked)
    if len(arrays) == 1:
        array = next(iter(arrays.values()))
        if array.ndim == 1 and len(columns) == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2 or array.shape[1] != len(columns):
            raise BadEvent(f"the single input tensor must have shape [n, {len(columns)}] (one column per "
                           f"feature: {', '.join(columns)}), not {list(array.shape)}")
        return pd.DataFrame(_text(array), columns=columns)
    if not arrays:
        raise BadEvent("the request has no input tensors with the features")
    raise BadEvent(f"the inputs are neither one 2-D tensor nor one tensor per feature named after the reference's "
                   f"columns ({', '.join(columns)}); got {', '.join(map(str, arrays))}")


def _text(array: np.ndarray) -> np.ndarray:
    """BYTES tensors decode to bytes objects; features compare as text."""
    if array.dtype == object and any(isinstance(v, bytes) for v in array.flat):
        return np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v,
                            otypes=[object])(array)
    return array


def is_cloudevent(headers: dict[str, str]) -> bool:
    """A binary-mode (``ce-specversion``) or structured-mode CloudEvent?"""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    return "ce-specversion" in headers or content_type == "application/cloudevents+json"


def _take(inputs: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray | None:
    """Remove and return the first input named one of ``names``."""
    for name in names:
        if name in inputs:
            return inputs.pop(name)
    return None


def _values(data: Any) -> list[Any] | None:
    """Predictions or labels as one value per row: [n] values, [n, 1] squeezed, [n, k] rows of class scores."""
    if data is None:
        return None
    array = _text(np.asarray(data, dtype=object if isinstance(data, list) else None))
    if array.ndim == 0:
        return [array.item()]
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    return [row.tolist() if isinstance(row, np.ndarray) else (row.item() if isinstance(row, np.generic) else row)
            for row in array]


def _listed(array: np.ndarray) -> Any:
    """An output array as JSON values (NaN as null)."""
    values = _text(np.asarray(array)).tolist()
    return _finite(values)


def _finite(value: Any) -> Any:
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


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
def read_reference(path: str | Path, label_column: str | None = None,
                   columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A reference sample from .csv, .parquet or .npy (array columns ``columns`` or f0, f1, ...), label
    column dropped."""
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

        array = np.load(path, allow_pickle=False)
        width = array.shape[1] if array.ndim == 2 else 1
        frame = as_frame(array, columns if columns is not None and len(columns) == width else None)
    else:
        raise ValueError(f"cannot read a reference from {path.name}: use .csv, .parquet or .npy")
    if label_column:
        if label_column not in frame.columns:
            raise ValueError(f"label column {label_column!r} is not in the reference ({', '.join(map(str, frame.columns))})")
        frame = frame.drop(columns=[label_column])
    return frame


def build(detector: str, reference: str | Path | pd.DataFrame, *, alert_url: str | None = None,
          label_column: str | None = None, name: str | None = None, state_path: str | Path | None = None,
          state_interval_s: float = STATE_INTERVAL_S, **options: Any) -> DetectorApp:
    """A fitted detector in its receiver, with the state saved in ``state_path`` (restored now when it
    was saved for the same detector, options and reference)."""
    from shipyard.monitor.state import fingerprint

    frame = reference if isinstance(reference, pd.DataFrame) else read_reference(reference, label_column)

    def make() -> DetectorApp:
        instance = load_detector(detector, **options)
        instance.fit(frame.copy())
        return DetectorApp(instance, alert_url=alert_url, model_name=name,
                           state=StateFile(state_path) if state_path is not None else None,
                           fingerprint=fingerprint(detector, options, frame), state_interval_s=state_interval_s)

    app = make()
    try:
        app.load_state()
    except StateError as exc:
        log.warning("%s; starting afresh", exc)
        app = make()
    return app


async def run(app: DetectorApp, host: str = "127.0.0.1", port: int = 0,
              ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then drain and save the state."""
    from shipyard.server.http import HttpServer

    server = HttpServer(app, host, port, MAX_BODY)
    await server.start()
    url = f"http://{host}:{server.port}"
    (ready or (lambda u: print(f"{app.name} detector '{app.model_name}' listening on {u}", flush=True)))(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    saver = loop.create_task(_save_periodically(app, stop)) if app.state is not None else None
    await stop.wait()
    await server.shutdown(5.0)
    if saver is not None:
        await asyncio.gather(saver, return_exceptions=True)  # a save under way ends first: never two at once
        if await app.save_state(force=True):
            log.info("saved the %s detector's state to %s", app.name, app.state.path)  # type: ignore[union-attr]
    await app.close()


async def _save_periodically(app: DetectorApp, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), app.state_interval_s)
            return
        except asyncio.TimeoutError:
            pass
        try:
            await app.save_state()
        except Exception:  # a bug: say so, keep serving
            log.exception("saving the detector's state failed")


def serve(detector: str, reference: str | Path, *, host: str = "127.0.0.1", port: int = 0,
          alert_url: str | None = None, label_column: str | None = None, **options: Any) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build(detector, reference, alert_url=alert_url, label_column=label_column, **options)
    asyncio.run(run(app, host, port))


if __name__ == "__main__":
    from shipyard.cli.monitor import app as _cli

    _cli()
