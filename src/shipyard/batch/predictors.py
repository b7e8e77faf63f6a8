"""Where predictions come from: a model loaded in this process (as ``shipyard serve`` loads it), or a V2
endpoint (a ``shipyard serve`` URL, or a deployed InferenceService through the control plane's gateway).

Both answer :meth:`Predictor.predict` for a chunk's tensors and isolate the rows that fail: a call that
fails because of its rows (the model raised, a value was refused; HTTP 400/413/422/500 from an endpoint)
is split in halves until the failing rows stand alone (row by row under 16 rows), so one bad row costs
about log2(rows) extra calls, not a call per row. An endpoint that cannot be reached after ``retries``
fails the run instead: nothing is wrong with the rows.
"""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

import msgspec
import numpy as np

from shipyard.batch.errors import BatchError, EndpointUnavailable, RowFailure
from shipyard.batch.spec import BatchSpec, is_url
from shipyard.batch.tensors import Tensors, check_rows, take
from shipyard.runtimes.base import TensorSpec

#: Below this many rows a failing call is retried row by row rather than halved.
ROW_BY_ROW = 16
#: HTTP statuses that mean "these rows": isolate them. Others (after retries) fail the run.
ROW_STATUSES = frozenset({400, 413, 422, 500})
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass
class Prediction:
    """The outputs of the rows that succeeded (``ok``, ascending positions) and (position, reason) of the others."""

    outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    ok: list[np.ndarray] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)

    def add(self, positions: np.ndarray, outputs: Tensors) -> None:
        self.ok.append(positions)
        for name, array in outputs.items():
            self.outputs.setdefault(name, []).append(array)

    def merged(self) -> tuple[np.ndarray, Tensors]:
        ok = np.concatenate(self.ok) if self.ok else np.empty(0, dtype=np.int64)
        outputs = {name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
                   for name, arrays in self.outputs.items()}
        return ok, outputs


def isolate(call: Callable[[Tensors, int], Tensors], tensors: Tensors, positions: np.ndarray,
            result: Prediction, lo: int = 0, hi: int | None = None) -> None:
    """Predict rows ``lo:hi`` of ``tensors`` (their input positions are ``positions``), halving on RowFailure."""
    hi = len(positions) if hi is None else hi
    if hi <= lo:
        return
    try:
        outputs = check_rows(call(take(tensors, slice(lo, hi)) if (lo, hi) != (0, len(positions)) else tensors,
                                  hi - lo), hi - lo)
    except RowFailure as exc:
        if hi - lo == 1:
            result.errors.append((int(positions[lo]), str(exc) or type(exc).__name__))
        elif hi - lo <= ROW_BY_ROW:
            for row in range(lo, hi):
                isolate(call, tensors, positions, result, row, row + 1)
        else:
            middle = (lo + hi) // 2
            isolate(call, tensors, positions, result, lo, middle)
            isolate(call, tensors, positions, result, middle, hi)
        return
    result.add(positions[lo:hi], outputs)


class Predictor(Protocol):
    #: What the run's log says about the model ("sklearn model.joblib, in process").
    description: str

    def open(self) -> None: ...

    def signature(self) -> tuple[list[TensorSpec], dict[str, list[str]]]:
        """The model's inputs, and the column names a package declares for them."""
        ...

    def predict(self, tensors: Tensors, positions: np.ndarray) -> Prediction: ...

    def close(self) -> None: ...


class LocalPredictor:
    """A model loaded in this process through the package resolver and the runtime registry."""

    def __init__(self, model: str, warn: Callable[[str], None] | None = None) -> None:
        self.argument = model
        self.warn = warn or (lambda message: None)
        self.model: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.description = model

    def open(self) -> None:
        from shipyard.package.source import model_source
        from shipyard.runtimes import create_model

        try:
            source, warnings = model_source(self.argument)
        except ValueError as exc:
            raise BatchError("model", str(exc)) from None
        for message in warnings:
            self.warn(message)
        model = create_model(source)
        try:
            model.setup()
        except Exception as exc:
            raise BatchError("model", f"cannot load '{self.argument}': {type(exc).__name__}: {exc}") from None
        self.model = model
        self.loop = asyncio.new_event_loop()
        self.description = f"{source.format} model '{source.name}' ({self.argument}), in process"

    def signature(self) -> tuple[list[TensorSpec], dict[str, list[str]]]:
        model = self.model
        declared: dict[str, list[str]] = {}
        checks = model.input_checks
        for item in getattr(checks, "declared", None) or []:
            if item.columns:
                declared[item.spec.name] = list(item.columns)
        return list(model.signature_inputs), declared

    def _call(self, tensors: Tensors, rows: int) -> Tensors:
        assert self.loop is not None
        try:
            return self.loop.run_until_complete(self.model.infer(tensors, None, {}))
        except Exception as exc:  # InvalidInput, ModelFailed, or the runtime's own error: these rows
            raise RowFailure(str(exc) or type(exc).__name__) from None

    def predict(self, tensors: Tensors, positions: np.ndarray) -> Prediction:
        result = Prediction()
        isolate(self._call, tensors, positions, result)
        return result

    def close(self) -> None:
        if self.model is not None:
            try:
                self.model.unload()
            except Exception:
                pass
        if self.loop is not None:
            self.loop.close()
            self.loop = None


def _array(output: dict[str, Any]) -> np.ndarray:
    from shipyard.protocol.datatypes import DATATYPE_TO_DTYPE

    datatype, shape, data = output["datatype"], output["shape"], output["data"]
    if datatype == "BYTES":
        flat = np.empty(len(data), dtype=object)
        flat[:] = list(data)
        return flat.reshape(shape)
    return np.asarray(data, dtype=DATATYPE_TO_DTYPE[datatype]).reshape(shape)


class EndpointPredictor:
    """A model behind a V2 REST endpoint: batched JSON requests, ``concurrency`` in flight, retries. Outside
    the default namespace, requests carry ``Host: {model_name}.{namespace}.example.com`` (a Shipyard
    gateway finds the service's namespace there). Rows with NaN or infinities cannot travel as JSON
    numbers: the server refuses them and they are isolated as bad rows."""

    def __init__(self, url: str, model_name: str | None, spec: BatchSpec,
                 log: Callable[[str], None] | None = None) -> None:
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.spec = spec
        self.host: str | None = None
        self.log = log or (lambda message: None)
        self.client: Any = None
        self.pool: ThreadPoolExecutor | None = None
        self.inputs: list[TensorSpec] = []
        self.description = url

    def open(self) -> None:
        import httpx

        local = urlsplit(self.url).hostname in ("127.0.0.1", "localhost", "::1")
        self.client = httpx.Client(base_url=self.url, timeout=self.spec.timeout_s,
                                   headers={"content-type": "application/json"}, trust_env=not local,
                                   limits=httpx.Limits(max_connections=self.spec.concurrency,
                                                       max_keepalive_connections=self.spec.concurrency))
        if self.model_name is None:
            self.model_name = self._only_model()
        if self.spec.namespace != "default":
            self.host = f"{self.model_name}.{self.spec.namespace}.example.com"
            self.client.headers["host"] = self.host
        metadata = self._get(f"/v2/models/{self.model_name}")
        self.inputs = [TensorSpec(item["name"], item["datatype"], tuple(item["shape"]))
                       for item in metadata.get("inputs") or []]
        self.pool = ThreadPoolExecutor(self.spec.concurrency, thread_name_prefix="batch-request")
        self.description = f"model '{self.model_name}' at {self.url}" + (f" (Host: {self.host})" if self.host else "")

    def _only_model(self) -> str:
        listed = self._get("/v2/models").get("models") or []
        names = [item if isinstance(item, str) else item.get("name") for item in listed]
        if len(names) != 1:
            listed_names = ", ".join(map(str, names)) or "none"
            raise BatchError("model_name", f"{self.url} serves {len(names)} models ({listed_names}); name one "
                                           "with model_name")
        return str(names[0])

    def _get(self, path: str) -> dict[str, Any]:
        import httpx

        for attempt in range(self.spec.retries + 1):
            try:
                response = self.client.get(path)
            except httpx.TransportError as exc:
                if attempt == self.spec.retries:
                    raise BatchError("model", f"cannot reach {self.url}{path}: {type(exc).__name__}: {exc}") from None
                time.sleep(_backoff(attempt))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.spec.retries:
                time.sleep(_backoff(attempt))
                continue
            if response.status_code >= 400:
                raise BatchError("model" if self.model_name is None else "model_name",
                                 f"{self.url}{path} answered {response.status_code}: {_error_text(response)}")
            return response.json()
        raise AssertionError("unreachable")

    def signature(self) -> tuple[list[TensorSpec], dict[str, list[str]]]:
        return list(self.inputs), {}

    def _request(self, tensors: Tensors, rows: int) -> Tensors:
        import httpx

        from shipyard.protocol.v2 import request_json

        try:
            body = msgspec.json.encode(request_json(tensors))
        except Exception as exc:  # a value JSON cannot carry
            raise RowFailure(f"cannot encode the rows as V2 JSON: {exc}") from None
        path = f"/v2/models/{self.model_name}/infer"
        for attempt in range(self.spec.retries + 1):
            try:
                response = self.client.post(path, content=body)
            except httpx.TransportError as exc:
                if attempt == self.spec.retries:
                    raise EndpointUnavailable(f"{self.url}{path}: {type(exc).__name__} after "
                                              f"{self.spec.retries + 1} attempts") from None
                self.log(f"retrying a request ({type(exc).__name__}), attempt {attempt + 2}")
                time.sleep(_backoff(attempt))
                continue
            status = response.status_code
            if status < 400:
                answer = msgspec.json.decode(response.content)
                return {output["name"]: _array(output) for output in answer.get("outputs") or []}
            if status in ROW_STATUSES:
                raise RowFailure(_error_text(response))
            if status in RETRY_STATUSES and attempt < self.spec.retries:
                self.log(f"retrying a request (HTTP {status}), attempt {attempt + 2}")
                time.sleep(_backoff(attempt, response.headers.get("retry-after")))
                continue
            raise EndpointUnavailable(f"{self.url}{path} answered {status}: {_error_text(response)}")
        raise AssertionError("unreachable")

    def predict(self, tensors: Tensors, positions: np.ndarray) -> Prediction:
        assert self.pool is not None
        step = self.spec.request_rows
        spans = [(lo, min(lo + step, len(positions))) for lo in range(0, len(positions), step)]

        def one(span: tuple[int, int]) -> Prediction:
            part = Prediction()
            lo, hi = span
            isolate(self._request, take(tensors, slice(lo, hi)), positions[lo:hi], part)
            return part

        result = Prediction()
        for part in self.pool.map(one, spans):
            result.ok.extend(part.ok)
            result.errors.extend(part.errors)
            for name, arrays in part.outputs.items():
                result.outputs.setdefault(name, []).extend(arrays)
        return result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.client is not None:
            self.client.close()


def _backoff(attempt: int, retry_after: str | None = None) -> float:
    if retry_after:
        try:
            return min(30.0, float(retry_after))
        except ValueError:
            pass
    return min(10.0, 0.2 * 2 ** attempt) * (0.5 + random.random() / 2)


def _error_text(response: Any) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip()[:500] or f"HTTP {response.status_code}"
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return response.text.strip()[:500]


def gateway_url(name: str) -> str:
    """The running control plane's gateway URL, which serves InferenceService ``name``."""
    from shipyard.control.plane import running_plane

    info = running_plane()
    if not info or not info.get("gateway_url"):
        raise BatchError("model", f"'{name}' is not a file or folder, and no control plane is running to serve it "
                                  "as an InferenceService; start one with: shipyard up --detach (or give a model "
                                  "path or an http:// URL)")
    return str(info["gateway_url"])


def split_model_url(url: str) -> tuple[str, str | None]:
    """``http://h:p`` -> (url, None); ``http://h:p/v2/models/NAME[/...]`` -> (``http://h:p``, NAME)."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) >= 3 and segments[0] == "v2" and segments[1] == "models":
        return f"{parts.scheme}://{parts.netloc}", segments[2]
    return url.rstrip("/"), None


def predictor_for(spec: BatchSpec, log: Callable[[str], None]) -> Predictor:
    """The predictor a spec's ``model`` names: a URL, a local path, else an InferenceService name."""
    from pathlib import Path

    if is_url(spec.model):
        url, named = split_model_url(spec.model)
        return EndpointPredictor(url, spec.model_name or named, spec, log)
    if Path(spec.model).expanduser().exists():
        return LocalPredictor(spec.model, warn=lambda message: log(f"warning: {message}"))
    return EndpointPredictor(gateway_url(spec.model), spec.model_name or spec.model, spec, log)
