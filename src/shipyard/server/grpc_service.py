"""The V2 gRPC service (``inference.GRPCInferenceService``) over the shared data plane, served by
this package's own gRPC server (``grpc_server.py``; grpcio is not imported)."""

from __future__ import annotations

from typing import Any, AsyncIterator

from shipyard.protocol.errors import InferenceError, NotFound, NotReady
from shipyard.protocol.grpc_codec import decode_grpc_request, encode_grpc_response, parameters_dict
from shipyard.protocol.infer import InferRequest
from shipyard.protocol.proto import inference_pb2 as pb
from shipyard.protocol.proto.service import METHODS, SERVICE
from shipyard.runtimes.base import Model
from shipyard.server.dataplane import DataPlane
from shipyard.server.grpc_server import Call, GrpcError, GrpcServer, GrpcStatus, Method
from shipyard.server.upstream import with_passed_headers

#: HTTP status of an InferenceError -> gRPC status code (KServe's mapping).
STATUS_CODES = {
    400: GrpcStatus.INVALID_ARGUMENT,
    404: GrpcStatus.NOT_FOUND,
    405: GrpcStatus.UNIMPLEMENTED,
    413: GrpcStatus.RESOURCE_EXHAUSTED,
    500: GrpcStatus.INTERNAL,
    503: GrpcStatus.UNAVAILABLE,
}


def inference_error(exc: Exception) -> GrpcError | None:
    """An InferenceError as the status gRPC clients get (the same message REST gives)."""
    if isinstance(exc, InferenceError):
        return GrpcError(STATUS_CODES.get(exc.status, GrpcStatus.INTERNAL), exc.message)
    return None


class InferenceServicer:
    """Each RPC calls the same DataPlane as REST; errors keep REST's messages."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ServerLive(self, request: Any, call: Call) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, call: Call) -> Any:
        try:
            self.dataplane.ready()
        except NotReady:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, call: Call) -> Any:
        try:
            self.dataplane.model_ready(request.name, request.version or None)
        except (NotReady, NotFound):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, call: Call) -> Any:
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def ModelMetadata(self, request: Any, call: Call) -> Any:
        return pb.ModelMetadataResponse(**self.dataplane.model_metadata(request.name, request.version or None))

    async def _infer(self, request: Any, metadata: dict[str, str] | None) -> Any:
        def decode(model: Model) -> InferRequest:
            decoded = decode_grpc_request(request)
            return decoded if not metadata else with_passed_headers(model, decoded, metadata)

        return await self.dataplane.infer(request.model_name, request.model_version or None, decode,
                                          encode_grpc_response, protocol="grpc")

    async def ModelInfer(self, request: Any, call: Call) -> Any:
        return await self._infer(request, call.metadata)

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], call: Call) -> AsyncIterator[Any]:
        """One response per request, in order; an error answers that request and the stream goes on."""
        async for request in requests:
            try:
                yield pb.ModelStreamInferResponse(infer_response=await self._infer(request, None))
            except InferenceError as exc:
                yield pb.ModelStreamInferResponse(error_message=exc.message)
            except Exception as exc:  # noqa: BLE001 - the stream outlives one bad request
                yield pb.ModelStreamInferResponse(error_message=f"internal server error: {type(exc).__name__}: {exc}")

    async def ModelStatistics(self, request: Any, call: Call) -> Any:
        stats = await self.dataplane.statistics(request.name or None, request.version or None)
        return pb.ModelStatisticsResponse(**stats)

    async def RepositoryIndex(self, request: Any, call: Call) -> Any:
        rows = await self.dataplane.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def RepositoryModelLoad(self, request: Any, call: Call) -> Any:
        await self.dataplane.repository_load(request.model_name, parameters_dict(request.parameters))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, call: Call) -> Any:
        await self.dataplane.repository_unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def service_methods(servicer: InferenceServicer) -> dict[str, Method]:
    """The servicer's RPCs by path (``/inference.GRPCInferenceService/<Method>``)."""
    return {f"/{SERVICE}/{name}": Method(request, getattr(servicer, name), streaming)
            for name, (request, _response, streaming) in METHODS.items()}


async def start_grpc_server(dataplane: DataPlane, host: str, port: int, max_message: int,
                            reuse_port: bool = False) -> tuple[GrpcServer, int]:
    """Start the gRPC server on the running loop; return it and its bound port. Worker processes
    share one port with ``reuse_port``."""
    server = GrpcServer(service_methods(InferenceServicer(dataplane)), host, port, max_message,
                        errors=inference_error)
    return server, await server.start(reuse_port)
