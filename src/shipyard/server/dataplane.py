"""Protocol handlers for V2 and V1, shared by every transport (REST and gRPC).

One path for inference: ``infer(name, version, decode, encode)`` looks the model up, decodes the
request with the transport's codec, predicts, applies output options, encodes, and records the
statistics extension's timings.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from shipyard import __version__, tracing
from shipyard.protocol import v1
from shipyard.protocol.errors import InferenceError, InvalidInput, ModelFailed, NotReady
from shipyard.protocol.http_codec import classify, new_request_id
from shipyard.protocol.infer import InferRequest, InferResult
from shipyard.protocol.v2 import encode as encode_json
from shipyard.runtimes.base import EXECUTION, Execution, Model, NoExplainer, Tensors
from shipyard.server.peers import UNREACHABLE, Peers
from shipyard.server.repository import UNLOADED, ModelRepository, ModelState
from shipyard.server.metrics import merge_expositions
from shipyard.server.stats import merge_model_stats
from shipyard.server.upstream import with_passed_headers

SERVER_NAME = "shipyard"
V1_INPUT = "input-0"
#: The V2 extensions this server implements, as GET /v2 and gRPC ServerMetadata list them.
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "statistics"]

Encoded = TypeVar("Encoded")


class DataPlane:
    """What every transport calls to answer a request."""

    def __init__(self, repository: ModelRepository, peers: Peers | None = None) -> None:
        self.repository = repository
        #: Sibling worker processes; global answers gather from them unless asked for local ones.
        self.peers = peers or Peers()
        self.metrics = repository.metrics

    # -- health and metadata -------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def live(self) -> dict[str, Any]:
        return {"live": True}

    def ready(self) -> dict[str, Any]:
        if not self.repository.all_ready():
            waiting = [e.model.name for e in self.repository.entries()
                       if e.state is not ModelState.READY and e.reason != UNLOADED]
            raise NotReady(f"server is not ready; models not ready: {', '.join(waiting) or 'none loaded'}")
        return {"ready": True}

    def model_ready(self, name: str, version: str | None) -> dict[str, Any]:
        self.repository.get(name, version)
        return {"name": name, "ready": True}

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        return self.repository.get(name, version).metadata()

    def model_list(self) -> dict[str, Any]:
        return {"models": [e.model.name for e in self.repository.entries()]}

    def v1_model(self, name: str) -> dict[str, Any]:
        entry = self.repository.entry(name)
        return {"name": name, "ready": entry.state is ModelState.READY}

    # -- statistics and repository extensions ---------------------------------------------
    async def statistics(self, name: str | None = None, version: str | None = None,
                         local: bool = False) -> dict[str, Any]:
        """Statistics of one model (or all), summed over every worker process unless ``local``."""
        entries = [self.repository.entry(name, version)] if name else self.repository.entries()
        mine = [entry.stats.to_dict() for entry in entries]
        if local or not self.peers:
            return {"model_stats": mine}
        target = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/stats" if name else \
            "/v2/models/stats"
        others = [body["model_stats"] for status, body in await self.peers.each("GET", target) if status == 200]
        return {"model_stats": merge_model_stats([mine, *others])}

    async def repository_index(self, ready_only: bool = False, local: bool = False) -> list[dict[str, Any]]:
        """Every model with its state; across workers a model is READY only where all are ready."""
        rows = self.repository.index()
        if not local and self.peers:
            answers = await self.peers.each("POST", "/v2/repository/index", {})
            rows = merge_index([rows, *(body for status, body in answers if status == 200)])
        return [row for row in rows if row["state"] == ModelState.READY.value or not ready_only]

    async def repository_load(self, name: str, parameters: dict[str, Any] | None = None, local: bool = False) -> None:
        """Load or reload ``name`` in every worker; ``config`` and ``file:<path>`` parameters override
        the repository."""
        override = _write_override(name, parameters or {})
        await self.repository.load(name, override)
        await self._tell_peers(local, f"/v2/repository/models/{name}/load", {"parameters": parameters or {}})

    async def repository_unload(self, name: str, local: bool = False) -> None:
        await self.repository.unload(name)
        await self._tell_peers(local, f"/v2/repository/models/{name}/unload", {})

    async def _tell_peers(self, local: bool, target: str, body: dict[str, Any]) -> None:
        if local or not self.peers:
            return
        for status, answer in await self.peers.each("POST", target, body):
            if status == UNREACHABLE:
                continue  # a worker being replaced; it starts from the supervisor's models
            if status >= 400:
                raise InferenceError.with_status(status, f"another worker process refused: {answer.get('error', answer)}")

    # -- inference ------------------------------------------------------------------------
    async def metrics_exposition(self, local: bool = False) -> bytes:
        """Prometheus text for this worker, or summed over every worker."""
        mine = self.metrics.render()
        if local or not self.peers:
            return mine
        others = [body for status, body in await self.peers.each("GET", "/metrics", raw=True) if status == 200]
        return merge_expositions([mine.decode(), *others])

    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Callable[[Model], InferRequest],
        encode: Callable[[InferRequest, InferResult], Encoded],
        protocol: str = "v2-rest",
    ) -> Encoded:
        """Decode, predict and encode one request with the transport's codec, timing each step."""
        metrics = self.metrics
        if tracing.ACTIVE:
            tracing.annotate({"shipyard.model": name, "shipyard.protocol": protocol})
        try:
            entry = await self.repository.acquire(name, version)
        except InferenceError as exc:
            metrics.requests.labels(name, protocol, str(exc.status)).inc()
            raise
        model, stats = entry.model, entry.stats
        run = entry.batcher.infer if entry.batcher is not None else model.infer
        execution = Execution()
        EXECUTION.set(execution)
        observe = metrics.for_request(name, protocol)
        in_flight = observe.in_flight
        in_flight.inc()
        entry.in_flight += 1
        started = time.perf_counter_ns()
        try:
            request = decode(model)
            decoded = time.perf_counter_ns()
            outputs = await run(request.inputs, request.output_names(), request.parameters)
            predicted = time.perf_counter_ns()
            result = InferResult(model.name, model.version, new_request_id(request.id), _apply_output_options(request, outputs))
            encoded = encode(request, result)
        except Exception as exc:
            stats.record_failure(time.perf_counter_ns() - started)
            metrics.requests.labels(name, protocol, str(getattr(exc, "status", 500))).inc()
            raise
        finally:
            in_flight.dec()
            entry.in_flight -= 1
            entry.last_used = time.monotonic()
        finished = time.perf_counter_ns()
        rows = request.batch_size()
        infer_ns = predicted - decoded - execution.queue_ns
        stats.record_success(rows, execution.batch_rows or rows, execution.counted, decoded - started,
                             execution.queue_ns, infer_ns, finished - predicted)
        observe.ok.inc()
        observe.latency.observe((finished - started) / 1e9)
        observe.queue.observe(execution.queue_ns / 1e9)
        observe.inference.observe(infer_ns / 1e9)
        if execution.counted:
            observe.batch_size.observe(execution.batch_rows or rows)
        if tracing.ACTIVE:
            _trace_execution(decoded, predicted, execution, rows)
        return encoded

    async def predict_v1(self, name: str, body: bytes, headers: Mapping[str, str] | None = None) -> bytes:
        """KServe V1 ``:predict`` through the same path: instances in, predictions out (``headers``: the
        request's, passed on by a transformer)."""

        def decode(model: Model) -> InferRequest:
            return v1_request(model, body, headers)

        def encode(request: InferRequest, result: InferResult) -> bytes:
            if not result.outputs:
                raise ModelFailed(f"model '{name}' returned no output")
            return v1.encode_predictions(next(iter(result.outputs.values())))

        return await self.infer(name, None, decode, encode, protocol="v1-rest")

    # -- explanations ---------------------------------------------------------------------
    async def explain(self, name: str, version: str | None, decode: Callable[[Model], InferRequest],
                      v1_answer: bool = False) -> bytes:
        """Explain a request's rows: the model's own ``explain`` (model.py, the shap format), else the
        built-in SHAP explainer (shipyard.explain). Not batched; the work runs in the model's thread
        pool, so health checks and other models keep answering. The answer is JSON."""
        protocol = "v1-explain" if v1_answer else "v2-explain"
        try:
            entry = await self.repository.acquire(name, version)
        except InferenceError as exc:
            self.metrics.requests.labels(name, protocol, str(exc.status)).inc()
            raise
        model = entry.model
        observe = self.metrics.for_request(name, protocol)
        observe.in_flight.inc()
        entry.in_flight += 1
        started = time.perf_counter_ns()
        try:
            request = decode(model)
            answer = await _explain(model, model.validate(request.inputs), request.parameters)
            body = _explanation_json(model.name, answer, v1_answer)
        except Exception as exc:
            self.metrics.requests.labels(name, protocol, str(getattr(exc, "status", 500))).inc()
            raise
        finally:
            observe.in_flight.dec()
            entry.in_flight -= 1
            entry.last_used = time.monotonic()
        observe.ok.inc()
        observe.latency.observe((time.perf_counter_ns() - started) / 1e9)
        return body

    async def explain_v1(self, name: str, body: bytes, headers: Mapping[str, str] | None = None) -> bytes:
        """KServe V1 ``:explain``: the body of a ``:predict``; the answer adds ``explanations``."""
        return await self.explain(name, None, lambda model: v1_request(model, body, headers), v1_answer=True)


def v1_request(model: Model, body: bytes, headers: Mapping[str, str] | None = None) -> InferRequest:
    """A V1 body (``instances`` or ``inputs``) as a request for ``model``: records become one tensor per
    column, anything else the model's first input."""
    instances = v1.decode_instances(body)
    columns = v1.records_to_columns(instances)
    if columns is not None:  # [{"column": value, ...}, ...]: one tensor per column
        return with_passed_headers(model, InferRequest(inputs=columns), headers)
    inputs = model.signature_inputs
    tensor = {inputs[0].name if inputs else V1_INPUT: v1.instances_to_array(instances)}
    return with_passed_headers(model, InferRequest(inputs=tensor), headers)


async def _explain(model: Model, inputs: Tensors, parameters: dict[str, Any]) -> Any:
    """The model's own explanation, else the built-in one run in the model's thread pool."""
    try:
        return await model.explain(inputs, parameters)
    except NoExplainer as missing:
        from shipyard.explain.builtin import builtin_explainer  # shap and the rest only when explaining

        explainer = builtin_explainer(model)
        if explainer is None:
            raise missing
    try:
        return await asyncio.get_running_loop().run_in_executor(model.executor, explainer.explain, inputs, parameters)
    except InferenceError:
        raise
    except Exception as exc:  # shap or the model failed
        raise ModelFailed.from_exception(model.name, exc) from exc


def _explanation_json(name: str, answer: Any, v1_answer: bool) -> bytes:
    """An explanation as JSON (numpy arrays become lists); V1 answers get KServe's ``explanations``."""
    if v1_answer:
        from shipyard.explain.answer import with_v1_explanations

        answer = with_v1_explanations(answer)
    try:
        return encode_json(answer)
    except (TypeError, ValueError, OverflowError) as exc:  # msgspec.EncodeError is a ValueError
        raise ModelFailed(f"model '{name}': its explanation is not JSON-serialisable: {exc}") from None


def _trace_execution(decoded: int, predicted: int, execution: Execution, rows: int) -> None:
    """The request's ``queue`` and ``predict`` spans, children of its server span, from the times
    measured here: a batch runs in a task of its own, for many requests at once."""
    queued = decoded + execution.queue_ns
    batch = execution.batch_rows or rows
    tracing.record_span("queue", decoded, queued, attributes={"shipyard.batch_size": batch})
    tracing.record_span("predict", queued, predicted, attributes={"shipyard.batch_size": batch,
                                                                  "shipyard.rows": rows})


def merge_index(groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per model from several workers' indexes: the first not-ready state wins."""
    merged: dict[str, dict[str, Any]] = {}
    for rows in groups:
        for row in rows:
            current = merged.setdefault(row["name"], row)
            if current["state"] == ModelState.READY.value and row["state"] != ModelState.READY.value:
                merged[row["name"]] = row
    return list(merged.values())


def _apply_output_options(request: InferRequest, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-output parameters that change the data: Triton's ``classification``."""
    for requested in request.outputs or ():
        count = requested.parameters.get("classification")
        if count is not None and requested.name in outputs:
            outputs[requested.name] = classify(requested.name, outputs[requested.name], count)
    return outputs


def _write_override(name: str, parameters: dict[str, Any]) -> Path | None:
    """Write a load request's ``config`` and ``file:`` parameters into a fresh folder."""
    files = {key[len("file:"):]: value for key, value in parameters.items() if key.startswith("file:")}
    config = parameters.get("config")
    if not files and config is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix=f"shipyard-load-{name}-"))
    for relative, content in files.items():
        target = (folder / relative).resolve()
        if folder.resolve() not in target.parents:
            raise InvalidInput(f"load parameter 'file:{relative}' points outside the model folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else _base64(relative, content))
    if config is not None:
        if not isinstance(config, str):
            raise InvalidInput("load parameter 'config' must be a JSON string of shipyard.yaml keys")
        (folder / "shipyard.yaml").write_text(config)
    return folder


def _base64(relative: str, content: Any) -> bytes:
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InvalidInput(f"load parameter 'file:{relative}' must be base64-encoded file content") from None
