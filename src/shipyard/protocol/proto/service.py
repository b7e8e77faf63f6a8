"""``inference.GRPCInferenceService`` under Triton's wire name, over this package's messages.

Written by hand instead of generated: generated stubs name the service after the proto package,
and ours is ``shipyard.inference`` (see inference.proto for why), while every V2 client calls
``/inference.GRPCInferenceService/<Method>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shipyard.protocol.proto import inference_pb2 as pb

if TYPE_CHECKING:  # grpcio is imported by those who serve or call through it, not by the model server
    import grpc

#: The service name on the wire (Triton's and KServe's).
SERVICE = "inference.GRPCInferenceService"

#: method -> (request message, response message, streaming both ways)
METHODS: dict[str, tuple[Any, Any, bool]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse, False),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse, False),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse, False),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse, False),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse, False),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse, False),
    "ModelStreamInfer": (pb.ModelInferRequest, pb.ModelStreamInferResponse, True),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse, False),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse, False),
    "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse, False),
    "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse, False),
}


def add_servicer(servicer: Any, server: grpc.Server | grpc.aio.Server) -> None:
    """Serve ``servicer``'s methods (named as the RPCs) under :data:`SERVICE`; missing ones are not served."""
    import grpc

    handlers = {}
    for name, (request, response, streaming) in METHODS.items():
        behaviour = getattr(servicer, name, None)
        if behaviour is None:
            continue
        make = grpc.stream_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
        handlers[name] = make(behaviour, request_deserializer=request.FromString,
                              response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


class Stub:
    """A client of the service: one callable attribute per RPC, as generated stubs have."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        for name, (request, response, streaming) in METHODS.items():
            make = channel.stream_stream if streaming else channel.unary_unary
            setattr(self, name, make(f"/{SERVICE}/{name}", request_serializer=request.SerializeToString,
                                     response_deserializer=response.FromString))
