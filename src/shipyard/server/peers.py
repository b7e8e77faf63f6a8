"""Sibling worker processes of one server, reached over unix sockets.

Each worker also serves its REST app on ``<rundir>/worker-<i>.sock``. State that must look global
(statistics, the repository index, load and unload) is gathered from or sent to every sibling; a
request carrying the ``x-shipyard-local`` header is answered from the worker's own state only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

LOCAL_HEADER = "x-shipyard-local"
#: The status ``each`` reports for a sibling that did not answer.
UNREACHABLE = 0
log = logging.getLogger("shipyard.server")


class Peers:
    """The other workers of this server (empty for a single-process server)."""

    def __init__(self, sockets: list[str] | None = None) -> None:
        self.sockets = sockets or []

    def __bool__(self) -> bool:
        return bool(self.sockets)

    async def each(self, method: str, target: str, body: Any = None, raw: bool = False) -> list[tuple[int, Any]]:
        """Send one request to every sibling; their (status, JSON or text) answers in order."""

        import httpx  # only multi-worker servers talk to siblings; spare the others the import

        async def one(path: str) -> tuple[int, Any]:
            transport = httpx.AsyncHTTPTransport(uds=path)
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://worker", timeout=600) as client:
                    response = await client.request(method, target, json=body, headers={LOCAL_HEADER: "1"})
            except httpx.TransportError as exc:  # a worker being replaced: answer without it
                log.warning("worker at %s did not answer %s %s: %s", path, method, target, exc)
                return UNREACHABLE, {"error": f"worker unreachable: {exc}"}
            return response.status_code, response.text if raw else response.json()

        return list(await asyncio.gather(*(one(path) for path in self.sockets)))
