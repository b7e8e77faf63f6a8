"""The gateway: REST and gRPC endpoints that route requests to InferenceService revisions.

``Gateway(routes, host, http_port, grpc_port)`` with ``await start()`` / ``await stop(grace_s)``;
the controller reads ``in_flight(revision)``, ``references(revision)``, ``stats(revision, window_s)``
and ``shadow_report(namespace, isvc)``.
"""

from shipyard.control.gateway.observe import RevisionStats
from shipyard.control.gateway.routing import RouteTable, RouteTableError
from shipyard.control.gateway.server import Gateway

__all__ = ["Gateway", "RevisionStats", "RouteTable", "RouteTableError"]
