"""Free TCP ports on the loopback interface for a job's rendezvous, coordinator or tracker.

Ports are picked by the kernel (bind to port 0), never fixed, so concurrent jobs never collide
on 29500. All sockets of one call stay open until every port is chosen, so one call never
returns the same port twice; the port is free again when returned, and a process of the job
binds it a moment later.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that are free on ``host`` right now."""
    if count < 0:
        raise ValueError(f"count: expected a number >= 0, got {count}")
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = LOOPBACK) -> int:
    """One port that is free on ``host`` right now."""
    return free_ports(1, host)[0]
