"""The control plane's API on a real socket with a real Store, in a background thread (no controller).

It registers itself in ``$SHIPYARD_HOME`` as ``shipyard up`` does (holds ``plane.lock``, writes
``plane.json``), so ``ControlClient()`` and the CLI find it exactly as they find a real plane.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
from pathlib import Path
from typing import IO, Any, Callable

from shipyard.control.api import ControlApi
from shipyard.control.plane import LOCK_FILE, PLANE_FILE, STATE_FILE
from shipyard.control.store import Store
from shipyard.server.http import HttpServer


class ApiThread:
    def __init__(self, home: Path, rollout: Callable[..., Any] | None = None) -> None:
        self.home = home
        self.store = Store(home / STATE_FILE)
        self.changes = 0
        self.api = ControlApi(self.store, rollout, home / "logs", on_change=self._changed)
        self.server = HttpServer(self.api, "127.0.0.1", 0, 16 * 1024 * 1024)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""
        self._lock: IO[bytes] | None = None

    def _changed(self) -> None:
        self.changes += 1

    def __enter__(self) -> "ApiThread":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.server.port}"
        self._lock = open(self.home / LOCK_FILE, "a+b")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (self.home / PLANE_FILE).write_text(json.dumps({"pid": os.getpid(), "api_url": self.url}))
        return self

    def __exit__(self, *exc: object) -> None:
        (self.home / PLANE_FILE).unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()
        asyncio.run_coroutine_threadsafe(self.server.shutdown(1.0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.store.close()
