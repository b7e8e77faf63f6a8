"""Run a package's examples through every request path: in process, and through a real server.

Every path runs the server's own code to decode, validate, predict and encode:

- ``in-process``: the V2 JSON request body goes through the server's REST app and data plane
  (``server/rest.py``, ``server/dataplane.py``, ``server/repository.py`` and the protocol codecs)
  in this process, without a socket;
- ``rest``: the same body to ``shipyard serve`` started as a subprocess on free ports (httpx);
- ``grpc``: the same tensors as a ``ModelInferRequest`` to that server (the project's own stubs).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn, Sequence

import msgspec
import numpy as np

from shipyard.package.config import PackageError
from shipyard.package.examples import Example, first_mismatch, request_tensors
from shipyard.protocol.errors import InvalidInput
from shipyard.protocol.v2 import tensor_from_json
from shipyard.runtimes.base import ModelSource

IN_PROCESS, REST, GRPC = "in-process", "rest", "grpc"
PATHS = (IN_PROCESS, REST, GRPC)
#: How long the test server may take to load the model and become ready.
STARTUP_TIMEOUT_S = 300.0

_LISTENING = re.compile(r"listening on (http://\S+)")
_GRPC_LISTENING = re.compile(r"gRPC listening on ([^\s\"]+)")  # stops at the quote of a JSON log line


class RequestFailed(Exception):
    """A path could not get an answer for an example (the server's error, or a transport error)."""


@dataclass
class Outcome:
    """One example on one path."""

    example: str
    path: str
    #: The first mismatch or the request's error; None when the example passed.
    problem: str | None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.problem is None


@dataclass
class Report:
    outcomes: list[Outcome]
    #: What the test server printed (for --verbose and for failures to start).
    server_log: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self.outcomes)


def run_examples(folder: Path, source: ModelSource, examples: Sequence[Example], paths: Sequence[str] = PATHS,
                 status: Callable[[str], None] = lambda text: None) -> Report:
    """Run every example on each of ``paths``; ``status`` hears what is happening (for progress).

    Raises PackageError when the model does not load or the server does not start.
    """
    server = None
    if REST in paths or GRPC in paths:  # starts while the in-process path runs
        status("Starting shipyard serve")
        server = PackageServer(folder, grpc=GRPC in paths)
    try:
        outcomes = []
        if IN_PROCESS in paths:
            status("Loading the model in process")
            outcomes += asyncio.run(_in_process(source, examples))
        if server is not None:
            status("Waiting for the server to load the model")
            url = server.wait_ready(status)
            if REST in paths:
                status("Running the examples over REST")
                outcomes += _over_rest(url, source.name, examples)
            if GRPC in paths:
                status("Running the examples over gRPC")
                outcomes += _over_grpc(server.grpc_address, source.name, examples)
        return Report(outcomes, server.lines if server else [])
    finally:
        if server is not None:
            server.stop()


def _outcome(example: Example, path: str, answer: dict[str, np.ndarray] | RequestFailed) -> Outcome:
    """Judge one answer (or the error a path got instead) against the example."""
    if isinstance(answer, RequestFailed):
        return Outcome(example.name, path, str(answer))
    return Outcome(example.name, path, first_mismatch(example, answer), answer)


def _signature(metadata: dict[str, Any] | RequestFailed, path: str) -> list[dict[str, Any]]:
    """The inputs of the model's metadata, as one path got it (shorthand examples need them)."""
    if isinstance(metadata, RequestFailed):
        raise PackageError(f"{path}: cannot read the model's metadata: {metadata}")
    return list(metadata.get("inputs") or [])


# -- V2 JSON, shared by the in-process and REST paths --------------------------------------


def json_request(example: Example, signature: Sequence[Mapping[str, Any]]) -> bytes:
    """The V2 JSON inference request body of an example."""
    body: dict[str, Any] = {"inputs": [
        {"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.data}
        for t in request_tensors(example, signature)
    ]}
    if example.outputs:
        body["outputs"] = [{"name": name} for name in example.outputs]
    if example.parameters:
        body["parameters"] = example.parameters
    return msgspec.json.encode(body)


def json_outputs(answer: Any) -> dict[str, np.ndarray]:
    """The outputs of a V2 JSON inference response, decoded by the server's own tensor codec."""
    try:
        return {o["name"]: tensor_from_json(o["name"], o["datatype"], o["shape"], o.get("data"))
                for o in answer["outputs"]}
    except (InvalidInput, KeyError, TypeError, ValueError) as exc:
        raise RequestFailed(f"the answer is not a V2 inference response: {exc}") from None


async def _in_process(source: ModelSource, examples: Sequence[Example]) -> list[Outcome]:
    from shipyard.server.dataplane import DataPlane
    from shipyard.server.repository import ModelState
    from shipyard.server.rest import Request, RestApp
    from shipyard.server.runner import ServeOptions, build_repository

    repository = build_repository([source], ServeOptions())
    try:
        entry = (await repository.load_all())[0]
        if entry.state is not ModelState.READY:
            raise PackageError(f"model '{source.name}' failed to load: {entry.reason}")
        app = RestApp(DataPlane(repository))

        async def call(method: str, path: str, body: bytes = b"") -> Any:
            response = await app(Request(method, path, {"content-type": "application/json"}, body))
            answer = msgspec.json.decode(response.body) if response.body else {}
            if response.status >= 400:
                raise RequestFailed(f"HTTP {response.status}: {answer.get('error', answer)}")
            return answer

        try:
            metadata = await call("GET", f"/v2/models/{source.name}")
        except RequestFailed as exc:
            metadata = exc
        signature = _signature(metadata, IN_PROCESS)
        outcomes = []
        for example in examples:
            try:
                answer: Any = json_outputs(await call("POST", f"/v2/models/{source.name}/infer",
                                                      json_request(example, signature)))
            except RequestFailed as exc:
                answer = exc
            outcomes.append(_outcome(example, IN_PROCESS, answer))
        return outcomes
    finally:
        repository.unload_all()


def _over_rest(url: str, model: str, examples: Sequence[Example]) -> list[Outcome]:
    from shipyard.client import InferenceClient, InferenceServerError

    with InferenceClient(url) as client:

        def call(method: str, path: str, body: bytes | None = None) -> Any:
            try:
                return client.request(method, path, body)
            except InferenceServerError as exc:
                raise RequestFailed(f"HTTP {exc.status}: {exc.message}" if exc.status else exc.message) from None

        try:
            metadata = call("GET", f"/v2/models/{model}")
        except RequestFailed as exc:
            metadata = exc
        signature = _signature(metadata, REST)
        outcomes = []
        for example in examples:
            try:
                answer: Any = json_outputs(call("POST", f"/v2/models/{model}/infer", json_request(example, signature)))
            except RequestFailed as exc:
                answer = exc
            outcomes.append(_outcome(example, REST, answer))
        return outcomes


# -- gRPC ------------------------------------------------------------------------------------


def _over_grpc(address: str | None, model: str, examples: Sequence[Example]) -> list[Outcome]:
    import grpc

    from shipyard.protocol.proto import inference_pb2 as pb
    from shipyard.protocol.proto.service import Stub

    if address is None:
        raise PackageError("the test server did not say where gRPC listens")
    with grpc.insecure_channel(address) as channel:
        stub = Stub(channel)

        def call(method: Callable[..., Any], request: Any) -> Any:
            try:
                return method(request, timeout=60)
            except grpc.RpcError as exc:
                raise RequestFailed(f"gRPC {exc.code().name}: {exc.details()}") from None

        try:
            answer = call(stub.ModelMetadata, pb.ModelMetadataRequest(name=model))
            metadata: Any = {"inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                                        for t in answer.inputs]}
        except RequestFailed as exc:
            metadata = exc
        signature = _signature(metadata, GRPC)
        outcomes = []
        for example in examples:
            try:
                answer: Any = grpc_outputs(call(stub.ModelInfer, grpc_request(model, example, signature)))
            except RequestFailed as exc:
                answer = exc
            outcomes.append(_outcome(example, GRPC, answer))
        return outcomes


def grpc_request(model: str, example: Example, signature: Sequence[Mapping[str, Any]]) -> Any:
    """The ``ModelInferRequest`` of an example: the same tensors as the JSON body, in typed contents."""
    from shipyard.protocol.grpc_codec import CONTENTS_FIELD, set_parameters
    from shipyard.protocol.proto import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    for tensor in request_tensors(example, signature):
        if tensor.datatype not in CONTENTS_FIELD:
            raise RequestFailed(f"input '{tensor.name}': gRPC typed contents cannot carry {tensor.datatype}")
        item = request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        data = [str(value).encode() for value in tensor.data] if tensor.datatype == "BYTES" else tensor.data
        try:
            getattr(item.contents, CONTENTS_FIELD[tensor.datatype]).extend(data)
        except (TypeError, ValueError) as exc:
            raise RequestFailed(f"input '{tensor.name}': {tensor.datatype} contents cannot hold the data: "
                                f"{exc}") from None
    for name in example.outputs or ():
        request.outputs.add(name=name)
    set_parameters(request.parameters, example.parameters)
    return request


def grpc_outputs(response: Any) -> dict[str, np.ndarray]:
    """The outputs of a ``ModelInferResponse`` (raw contents, as Shipyard and Triton send, or typed)."""
    from shipyard.protocol.binary import tensor_from_bytes
    from shipyard.protocol.grpc_codec import CONTENTS_FIELD

    outputs = {}
    try:
        for index, output in enumerate(response.outputs):
            shape = list(output.shape)
            if index < len(response.raw_output_contents):
                outputs[output.name] = tensor_from_bytes(output.name, output.datatype, shape,
                                                         response.raw_output_contents[index])
            else:
                values = list(getattr(output.contents, CONTENTS_FIELD[output.datatype]))
                dtype = object if output.datatype == "BYTES" else None
                outputs[output.name] = np.array(values, dtype=dtype).reshape(shape)
    except (InvalidInput, KeyError, ValueError) as exc:
        raise RequestFailed(f"the answer's output cannot be decoded: {exc}") from None
    return outputs


# -- the test server -------------------------------------------------------------------------


class PackageServer:
    """``shipyard serve DIR`` as a subprocess on free loopback ports, one worker."""

    def __init__(self, folder: Path, grpc: bool = True) -> None:
        command = [sys.executable, "-m", "shipyard", "serve", str(folder), "--host", "127.0.0.1",
                   "--http-port", "0", "--workers", "1", *(["--grpc-port", "0"] if grpc else ["--no-grpc"])]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self.url: str | None = None
        self.grpc_address: str | None = None
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            found = _GRPC_LISTENING.search(line)
            if found:
                self.grpc_address = found.group(1)
            found = _LISTENING.search(line)
            if found and self.url is None:
                self.url = found.group(1)

    def wait_ready(self, status: Callable[[str], None], timeout: float = STARTUP_TIMEOUT_S) -> str:
        """Wait until the server answers ready and return its URL; raise PackageError with its output
        if it does not get there."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._failed(f"exited with code {self.process.returncode}")
            if self.url is not None:
                try:
                    if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                        return self.url
                except httpx.TransportError:
                    pass
            if self.lines:
                status(f"Waiting for the server: {self.lines[-1].strip()[:100]}")
            time.sleep(0.1)
        self._failed(f"was not ready after {timeout:.0f}s")

    def _failed(self, what: str) -> NoReturn:
        if self.process.poll() is not None:
            self._reader.join(5)  # its last lines
        tail = "\n".join(self.lines[-20:]) or "(no output)"
        raise PackageError(f"the test server (shipyard serve) {what}; its output:\n{tail}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then wait for it to drain and exit (killed if it does not)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)  # its last lines
