"""Python SDK for a Shipyard (or any V2/V1) model server.

    >>> client = InferenceClient("http://127.0.0.1:8080")
    >>> client.infer("iris", {"input-0": np.array([[5.1, 3.5, 1.4, 0.2]])})
    {'predict': array([0])}
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import numpy as np

from shipyard.protocol.datatypes import DATATYPE_TO_DTYPE, datatype_of
from shipyard.protocol.v2 import request_json


class InferenceServerError(Exception):
    """The server answered with an error status; ``message`` is its ``{"error"}`` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ServerUnreachable(InferenceServerError):
    """Nothing answered at the URL."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, f"cannot reach {url} ({reason}); is a server running? start one with: shipyard serve MODEL")


def _array_from_output(output: dict[str, Any]) -> np.ndarray:
    datatype, shape, data = output["datatype"], output["shape"], output["data"]
    if datatype == "BYTES":
        flat = np.empty(len(data), dtype=object)
        flat[:] = [item.encode() if isinstance(item, str) else item for item in data]
        return flat.reshape(shape)
    return np.asarray(data, dtype=DATATYPE_TO_DTYPE[datatype]).reshape(shape)


class InferenceClient:
    """Talks V2 REST (and V1) to one server over a pooled HTTP connection."""

    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        """Send one request; return the decoded JSON answer or raise InferenceServerError."""
        try:
            response = self._http.request(
                method, path, content=body, headers={"content-type": "application/json"} if body else None
            )
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, type(exc).__name__) from None
        try:
            payload = msgspec.json.decode(response.content) if response.content else {}
        except msgspec.DecodeError:
            payload = {"error": response.text}
        if response.status_code >= 400:
            message = payload.get("error", response.text) if isinstance(payload, dict) else response.text
            raise InferenceServerError(response.status_code, message)
        return payload

    def live(self) -> bool:
        try:
            self.request("GET", "/v2/health/live")
        except InferenceServerError:
            return False
        return True

    def ready(self, model: str | None = None, version: str | None = None) -> bool:
        """Whether the server (or one model) is ready."""
        path = "/v2/health/ready" if model is None else f"{self._model_path(model, version)}/ready"
        try:
            self.request("GET", path)
        except InferenceServerError:
            return False
        return True

    def metadata(self, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Server metadata, or one model's metadata (inputs and outputs)."""
        return self.request("GET", "/v2" if model is None else self._model_path(model, version))

    def infer(
        self,
        model: str,
        inputs: dict[str, Any],
        outputs: list[str] | None = None,
        parameters: dict[str, Any] | None = None,
        version: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, np.ndarray]:
        """V2 inference: named arrays in, named arrays out."""
        body = request_json(inputs, outputs, parameters, request_id)
        answer = self.request("POST", f"{self._model_path(model, version)}/infer", msgspec.json.encode(body))
        return {output["name"]: _array_from_output(output) for output in answer["outputs"]}

    def predict_v1(self, model: str, instances: list[Any]) -> list[Any]:
        """KServe V1 ``:predict``: instances in, predictions out."""
        answer = self.request("POST", f"/v1/models/{model}:predict", msgspec.json.encode({"instances": instances}))
        return answer["predictions"]

    @staticmethod
    def _model_path(model: str, version: str | None) -> str:
        return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


__all__ = ["InferenceClient", "InferenceServerError", "ServerUnreachable", "datatype_of"]
