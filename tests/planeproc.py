"""Start ``shipyard up`` as a real process on free ports, for integration tests of the control plane."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx

UP = [sys.executable, "-m", "shipyard", "up"]


def isvc(name: str, storage_uri: str | Path, fmt: str = "sklearn", model: dict[str, Any] | None = None,
         annotations: dict[str, str] | None = None, **predictor: Any) -> dict[str, Any]:
    """An InferenceService document as a KServe user writes it (``model`` adds fields to predictor.model)."""
    metadata: dict[str, Any] = {"name": name}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": {
            "model": {"modelFormat": {"name": fmt}, "storageUri": str(storage_uri), **(model or {})}, **predictor}},
    }


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class PlaneProcess:
    """A running ``shipyard up`` with its state in ``home``."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.log_path = home.parent / f"{home.name}-plane-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [*UP, "--api-port", "0", "--http-port", "0", "--grpc-port", "0", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "SHIPYARD_HOME": str(home)},
        )
        self.info: dict[str, Any] = {}

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_up(self, timeout: float = 60) -> "PlaneProcess":
        def listening() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"shipyard up exited with {self.process.returncode}:\n{self.output}")
            try:
                info = json.loads((self.home / "plane.json").read_text())
            except (OSError, ValueError):
                return None
            return info if info.get("pid") == self.process.pid else None

        self.info = wait_for(listening, timeout, "plane.json")
        return self

    @property
    def api(self) -> str:
        return self.info["api_url"]

    @property
    def gateway(self) -> str:
        return self.info["gateway_url"]

    def apply(self, *documents: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{self.api}/apis/apply", json={"documents": list(documents)}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def describe(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        response = httpx.get(f"{self.api}/apis/inferenceservices/{namespace}/{name}/describe", timeout=10)
        return response.json() if response.status_code == 200 else None

    def condition(self, name: str, kind: str = "Ready") -> dict[str, Any] | None:
        described = self.describe(name) or {}
        conditions = (described.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), None)

    def wait_ready(self, name: str, timeout: float = 60) -> dict[str, Any]:
        """The service's describe output once its Ready condition is True."""
        wait_for(lambda: (self.condition(name) or {}).get("status") == "True", timeout, f"{name} Ready\n{self.output}")
        described = self.describe(name)
        assert described is not None
        return described

    def rollout(self, name: str, action: str, revision: str | None = None) -> httpx.Response:
        return httpx.post(f"{self.api}/apis/inferenceservices/default/{name}/rollout",
                          json={"action": action, "revision": revision}, timeout=10)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout)
        self._log.close()
        return code


def replica_pids(marker: str) -> list[int]:
    """Pids of ``shipyard serve`` processes whose command line contains ``marker`` (a model path)."""
    found = subprocess.run(["pgrep", "-f", f"shipyard serve {marker}"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def kill_replicas(marker: str) -> None:
    """Last-resort cleanup: SIGKILL what a failed test left behind."""
    for pid in replica_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
