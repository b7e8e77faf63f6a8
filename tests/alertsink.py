"""A small HTTP server recording the CloudEvents POSTed to it (a detector's alerts), for integration tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class AlertSink:
    """Records each POST as (lower-cased headers, JSON body); ``url`` is where to send them."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.received = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with sink.received:
                    sink.events.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
                    sink.received.notify_all()
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 10) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """The events once at least ``count`` arrived (or ``timeout`` passed)."""
        with self.received:
            self.received.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)
