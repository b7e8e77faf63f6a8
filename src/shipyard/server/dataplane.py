"""Protocol handlers for V2 and V1, shared by every transport (REST and gRPC).

One path for inference: ``infer(name, version, decode, encode)`` looks the model up, decodes the
request with the transport's codec, predicts, applies output options, encodes, and records the
statistics extension's timings.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from shipyard import __version__
from shipyard.protocol import v1
from shipyard.protocol.errors import InvalidInput, ModelFailed, NotReady
from shipyard.protocol.http_codec import classify, new_request_id
from shipyard.protocol.infer import InferRequest, InferResult
from shipyard.runtimes.base import EXECUTION, Execution, Model
from shipyard.server.repository import UNLOADED, ModelRepository, ModelState

SERVER_NAME = "shipyard"
V1_INPUT = "input-0"
#: The V2 extensions this server implements, as GET /v2 and gRPC ServerMetadata list them.
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "statistics"]

Encoded = TypeVar("Encoded")


class DataPlane:
    """What every transport calls to answer a request."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

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
    def statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        entries = [self.repository.entry(name, version)] if name else self.repository.entries()
        return {"model_stats": [entry.stats.to_dict() for entry in entries]}

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        return self.repository.index(ready_only)

    async def repository_load(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """Load or reload ``name``; ``config`` and ``file:<path>`` parameters override the repository."""
        override = _write_override(name, parameters or {})
        await self.repository.load(name, override)

    async def repository_unload(self, name: str) -> None:
        await self.repository.unload(name)

    # -- inference ------------------------------------------------------------------------
    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Callable[[Model], InferRequest],
        encode: Callable[[InferRequest, InferResult], Encoded],
    ) -> Encoded:
        """Decode, predict and encode one request with the transport's codec, timing each step."""
        entry = self.repository.ready_entry(name, version)
        model, stats = entry.model, entry.stats
        run = entry.batcher.infer if entry.batcher is not None else model.infer
        execution = Execution()
        EXECUTION.set(execution)
        started = time.perf_counter_ns()
        try:
            request = decode(model)
            decoded = time.perf_counter_ns()
            outputs = await run(request.inputs, request.output_names(), request.parameters)
            predicted = time.perf_counter_ns()
            result = InferResult(model.name, model.version, new_request_id(request.id), _apply_output_options(request, outputs))
            encoded = encode(request, result)
        except Exception:
            stats.record_failure(time.perf_counter_ns() - started)
            raise
        finished = time.perf_counter_ns()
        rows = request.batch_size()
        stats.record_success(
            rows, execution.batch_rows or rows, execution.counted, decoded - started, execution.queue_ns,
            predicted - decoded - execution.queue_ns, finished - predicted,
        )
        return encoded

    async def predict_v1(self, name: str, body: bytes) -> bytes:
        """KServe V1 ``:predict`` through the same path: instances in, predictions out."""

        def decode(model: Model) -> InferRequest:
            instances = v1.instances_to_array(v1.decode_instances(body))
            return InferRequest(inputs={model.inputs[0].name if model.inputs else V1_INPUT: instances})

        def encode(request: InferRequest, result: InferResult) -> bytes:
            if not result.outputs:
                raise ModelFailed(f"model '{name}' returned no output")
            return v1.encode_predictions(next(iter(result.outputs.values())))

        return await self.infer(name, None, decode, encode)


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
