"""Protocol handlers for V2 and V1, independent of the transport that carries them."""

from __future__ import annotations

from typing import Any

from shipyard import __version__
from shipyard.protocol import v1, v2
from shipyard.protocol.errors import ModelFailed, NotReady
from shipyard.server.repository import ModelRepository, ModelState

SERVER_NAME = "shipyard"
V1_INPUT = "input-0"


class DataPlane:
    """What every transport (REST now, gRPC later) calls to answer a request."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository
        self.extensions: list[str] = []

    # -- health and metadata -------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": self.extensions}

    def live(self) -> dict[str, Any]:
        return {"live": True}

    def ready(self) -> dict[str, Any]:
        if not self.repository.all_ready():
            waiting = [e.model.name for e in self.repository.entries() if e.state is not ModelState.READY]
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

    # -- inference ------------------------------------------------------------------------
    async def infer_v2(self, name: str, version: str | None, body: bytes) -> bytes:
        model = self.repository.get(name, version)
        request = v2.decode_request(body)
        inputs = v2.decode_inputs(request)
        requested = [output.name for output in request.outputs] if request.outputs else None
        outputs = await model.infer(inputs, requested, request.parameters or {})
        return v2.encode_response(model.name, model.version, request.id, outputs)

    async def predict_v1(self, name: str, body: bytes) -> bytes:
        model = self.repository.get(name)
        instances = v1.instances_to_array(v1.decode_instances(body))
        input_name = model.inputs[0].name if model.inputs else V1_INPUT
        outputs = await model.infer({input_name: instances}, None, {})
        if not outputs:
            raise ModelFailed(f"model '{name}' returned no output")
        return v1.encode_predictions(next(iter(outputs.values())))
