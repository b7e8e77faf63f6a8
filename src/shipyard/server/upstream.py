"""The predictor a transformer or an explainer calls: V1 or V2 over REST, or V2 over gRPC.

``shipyard serve --predictor-url URL`` gives every served model an :class:`Upstream` in
``ModelSource.options["upstream"]``, as KServe's ``--predictor_host`` gives its transformers. A
replica of an InferenceService's transformer gets the gateway's URL and the predictor's host name
(``<isvc>-predictor.<namespace>.example.com``), so its calls take the predictor's traffic split,
wake a predictor scaled to zero and are logged as the predictor's. ``x-request-id``,
``traceparent``, ``tracestate`` and ``authorization`` pass through; the current span's trace
context is added when tracing is on.

Clients are made on first use in each process (``--workers`` forks after the sources exist);
httpx and grpcio are imported then, so a server without a predictor never loads them.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, Mapping

import msgspec
import numpy as np

from shipyard import tracing
from shipyard.protocol.binary import tensor_to_bytes
from shipyard.protocol.errors import InferenceError, InvalidInput
from shipyard.protocol.grpc_codec import decode_tensors, set_parameters
from shipyard.protocol.infer import InferRequest
from shipyard.protocol.v2 import request_json, tensor_from_json
from shipyard.runtimes.base import HEADERS_PARAMETER, Model

if TYPE_CHECKING:
    import httpx

PROTOCOLS = ("v1", "v2", "grpc-v2")
#: Request headers a transformer passes on to its predictor (KServe passes the first three).
PASSED_HEADERS = ("x-request-id", "authorization", "traceparent", "tracestate")
V1_OUTPUT = "output-0"
#: The gRPC metadata a Shipyard gateway routes by (``control/gateway/grpc.py``'s ``HOST_METADATA``).
GRPC_HOST_METADATA = "x-shipyard-host"


class UpstreamError(InferenceError):
    """The predictor could not be reached, or answered with something that is not a response (HTTP 502)."""

    status = 502


def passed_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers of ``headers`` (lower-case names) that go on to the predictor."""
    if not headers:
        return {}
    return {name: headers[name] for name in PASSED_HEADERS if name in headers}


def with_passed_headers(model: Model, request: InferRequest, headers: Mapping[str, str] | None) -> InferRequest:
    """``request`` with the passed headers in its parameters when ``model`` calls a predictor."""
    if model.source.options.get("upstream") is None:
        return request
    passed = passed_headers(headers)
    tracing.inject_into(passed)  # here the request's server span is current: the predictor's span is its child
    if passed:
        request.parameters = {**request.parameters, HEADERS_PARAMETER: passed}
    return request


class Upstream:
    """A client of one predictor model. ``url`` is ``http://host:port`` (gRPC: the same host and port,
    or ``grpc://host:port``); ``host`` is the Host (``:authority``) header to send, if any."""

    def __init__(self, url: str, model_name: str, protocol: str = "v2", host: str | None = None,
                 timeout_s: float = 600.0, retries: int = 0, grpc_url: str | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"--predictor-protocol: expected one of {', '.join(PROTOCOLS)}, got '{protocol}'")
        if not url.startswith(("http://", "https://", "grpc://")):
            raise ValueError(f"--predictor-url: expected http://HOST:PORT, got '{url}'")
        self.url = url.rstrip("/")
        self.grpc_target = (grpc_url or self.url).split("://", 1)[-1]
        self.model_name = model_name
        self.protocol = protocol
        self.host = host
        self.timeout_s = timeout_s
        self.retries = max(0, retries)
        self._clients: dict[tuple[int, str], Any] = {}

    def __repr__(self) -> str:
        return f"Upstream({self.url!r}, model={self.model_name!r}, protocol={self.protocol!r}, host={self.host!r})"

    # -- calls ------------------------------------------------------------------------------------
    async def infer(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None,
                    headers: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        """Send ``inputs`` to the predictor; its outputs as arrays."""
        sent = self._headers(headers)
        if self.protocol == "grpc-v2":
            return await self._retrying(lambda: self._grpc_infer(inputs, parameters, sent))
        path, body = self._rest_request(inputs, parameters)
        answer = await self._retrying(lambda: self._async_http().post(path, content=body, headers=sent))
        return self._rest_outputs(answer)

    def infer_sync(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        """:meth:`infer` for code running in a thread (an explainer's predict function)."""
        sent = self._headers(headers)
        if self.protocol == "grpc-v2":
            stub = self._client("grpc-sync")
            request = self._grpc_request(inputs, parameters)
            return self._sync_retrying(lambda: _grpc_outputs(stub.ModelInfer(
                request, metadata=list(sent.items()), timeout=self.timeout_s)))
        path, body = self._rest_request(inputs, parameters)
        answer = self._sync_retrying(lambda: self._client("http-sync").post(path, content=body, headers=sent))
        return self._rest_outputs(answer)

    async def explain(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None,
                      headers: Mapping[str, str] | None = None) -> Any:
        """Ask the predictor to explain ``inputs`` (V1 ``:explain``, else V2 ``/explain`` over REST: gRPC has
        no explain call); its JSON answer."""
        path, body = self._rest_request(inputs, parameters)
        path = path.replace(":predict", ":explain") if self.protocol == "v1" else path.replace("/infer", "/explain")
        sent = self._headers(headers, rest=True)
        answer = await self._retrying(lambda: self._async_http().post(path, content=body, headers=sent))
        _raise_for_status(answer)
        try:
            return msgspec.json.decode(answer.content)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"the predictor's explanation is not JSON: {exc}") from None

    async def close(self) -> None:
        """Close this process's clients."""
        for (pid, kind), client in list(self._clients.items()):
            if pid != os.getpid():
                continue
            del self._clients[(pid, kind)]
            if kind == "http":
                await client.aclose()
            elif kind == "http-sync":
                client.close()
            elif kind in ("grpc", "grpc-sync"):
                result = client.channel.close()
                if asyncio.iscoroutine(result):
                    await result

    # -- REST -------------------------------------------------------------------------------------
    def _rest_request(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None) -> tuple[str, bytes]:
        """(path, body) of an inference request over REST (gRPC's explanations go this way too)."""
        if self.protocol == "v1":
            return f"/v1/models/{self.model_name}:predict", msgspec.json.encode({"instances": _instances(inputs)})
        body = request_json(inputs, parameters=parameters)
        return f"/v2/models/{self.model_name}/infer", msgspec.json.encode(body)

    def _rest_outputs(self, answer: httpx.Response) -> dict[str, np.ndarray]:
        _raise_for_status(answer)
        try:
            payload = msgspec.json.decode(answer.content)
            if self.protocol == "v1":
                return {V1_OUTPUT: np.asarray(payload["predictions"])}
            return {out["name"]: tensor_from_json(out["name"], out["datatype"], out["shape"], out["data"])
                    for out in payload["outputs"]}
        except (msgspec.DecodeError, KeyError, TypeError, InvalidInput) as exc:
            raise UpstreamError(f"the predictor's answer is not a {self.protocol} response: {exc}") from None

    # -- gRPC -------------------------------------------------------------------------------------
    def _grpc_request(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None) -> Any:
        from shipyard.protocol.proto import inference_pb2 as pb

        request = pb.ModelInferRequest(model_name=self.model_name)
        for name, value in inputs.items():
            array = np.asarray(value)
            if array.dtype.kind in "US":
                array = array.astype(object)
            datatype, raw = tensor_to_bytes(name, array)
            request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
            request.raw_input_contents.append(raw)
        set_parameters(request.parameters, dict(parameters or {}))
        return request

    async def _grpc_infer(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None,
                          headers: dict[str, str]) -> dict[str, np.ndarray]:
        import grpc

        stub = self._client("grpc")
        try:
            response = await stub.ModelInfer(self._grpc_request(inputs, parameters), metadata=list(headers.items()),
                                             timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from None
        return _grpc_outputs(response)

    # -- clients and retries ----------------------------------------------------------------------
    def _headers(self, headers: Mapping[str, str] | None, rest: bool = False) -> dict[str, str]:
        sent = passed_headers(headers)
        if "traceparent" not in sent:  # a call of the model's own (an explainer's thread): the current span, if any
            tracing.inject_into(sent)
        if self.host:  # gRPC: the Shipyard gateway routes by this metadata (its servicer never sees :authority)
            sent["host" if rest or self.protocol != "grpc-v2" else GRPC_HOST_METADATA] = self.host
        return sent

    def _async_http(self) -> httpx.AsyncClient:
        return self._client("http")

    def _client(self, kind: str) -> Any:
        key = (os.getpid(), kind)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = self._new_client(kind)
        return client

    def _new_client(self, kind: str) -> Any:
        import httpx

        timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))
        if kind == "http":
            return httpx.AsyncClient(base_url=self.url, timeout=timeout)
        if kind == "http-sync":
            return httpx.Client(base_url=self.url, timeout=timeout)
        import grpc

        from shipyard.protocol.proto.service import Stub

        options = [("grpc.default_authority", self.host)] if self.host else []
        options += [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        channel = (grpc.aio.insecure_channel if kind == "grpc" else grpc.insecure_channel)(self.grpc_target, options)
        stub = Stub(channel)
        stub.channel = channel  # type: ignore[attr-defined]
        return stub

    async def _retrying(self, call: Any) -> Any:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                return await call()
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise self._unreachable(exc) from None
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _sync_retrying(self, call: Any) -> Any:
        import time

        import httpx

        for attempt in range(self.retries + 1):
            try:
                return call()
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise self._unreachable(exc) from None
                time.sleep(min(1.0, 0.05 * 2**attempt))
            except Exception as exc:
                if type(exc).__module__.startswith("grpc"):
                    raise _grpc_error(exc) from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _unreachable(self, exc: Exception) -> UpstreamError:
        return UpstreamError(f"cannot reach the predictor '{self.model_name}' at {self.url} "
                             f"({type(exc).__name__}: {exc or 'no answer'})")


def _instances(inputs: Mapping[str, np.ndarray]) -> list[Any]:
    """V1 instances: the rows of a single input, or one record per row of several named inputs."""
    arrays = {name: np.asarray(value) for name, value in inputs.items()}
    if len(arrays) == 1:
        return _plain(next(iter(arrays.values())).tolist())
    rows = {len(a) for a in arrays.values()}
    if len(rows) != 1:
        raise InvalidInput(f"V1 instances need inputs with the same number of rows; got "
                           + ", ".join(f"{n}: {len(a)}" for n, a in arrays.items()))
    return [{name: _plain(array[i].tolist()) for name, array in arrays.items()} for i in range(rows.pop())]


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _raise_for_status(answer: httpx.Response) -> None:
    if answer.status_code < 400:
        return
    try:
        payload = msgspec.json.decode(answer.content)
        message = payload.get("error") if isinstance(payload, dict) else None
    except msgspec.DecodeError:
        message = None
    text = f"predictor: {message or answer.text.strip() or answer.reason_phrase}"
    raise UpstreamError(text) if answer.status_code == 502 else InferenceError.with_status(answer.status_code, text)


def _grpc_outputs(response: Any) -> dict[str, np.ndarray]:
    try:
        return decode_tensors(response.outputs, response.raw_output_contents, "raw_output_contents")
    except InvalidInput as exc:
        raise UpstreamError(f"the predictor's gRPC answer cannot be read: {exc.message}") from None


_GRPC_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "UNAVAILABLE": 503, "RESOURCE_EXHAUSTED": 503,
                "DEADLINE_EXCEEDED": 504, "UNIMPLEMENTED": 501}


def _grpc_error(exc: Any) -> InferenceError:
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == "UNAVAILABLE" and "connect" in (details or "").lower():
        return UpstreamError(f"cannot reach the predictor over gRPC: {details}")
    status = _GRPC_STATUS.get(code, 500)
    return InferenceError.with_status(status, f"predictor ({code}): {details}")


__all__ = ["HEADERS_PARAMETER", "PASSED_HEADERS", "Upstream", "UpstreamError", "passed_headers", "with_passed_headers"]
