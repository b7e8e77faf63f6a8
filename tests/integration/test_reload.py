"""``shipyard serve DIR --reload``: a changed package is loaded and swapped in; a broken one leaves the old serving."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from shipyard.runtimes import create_model
from shipyard.runtimes.base import ModelSource
from shipyard.server.reloader import snapshot
from shipyard.server.repository import ModelRepository

MODEL = '''
import time

class Model:
    def load(self):
        pass

    def predict(self, inputs, parameters):
        time.sleep(float(parameters.get("sleep", 0)))
        return inputs["input-0"] * FACTOR
'''


def write_model(folder: Path, factor: str, extra: str = "", mtime_ns: int | None = None) -> None:
    path = folder / "model.py"
    path.write_text(MODEL.replace("FACTOR", factor) + extra)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def infer(url: str, parameters: dict[str, Any] | None = None) -> int:
    body = {"inputs": [{"name": "input-0", "shape": [1], "datatype": "INT64", "data": [5]}],
            "parameters": parameters or {}}
    response = httpx.post(f"{url}/v2/models/adder/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"][0]


def index(url: str) -> dict[str, Any]:
    (row,) = httpx.post(f"{url}/v2/repository/index", json={}, timeout=10).json()
    return row


def eventually(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.mark.integration
def test_reload_swaps_in_new_versions_and_keeps_the_old_one_when_broken(tmp_path, start_server):
    folder = tmp_path / "adder"
    folder.mkdir()
    (folder / "shipyard.yaml").write_text("version: '1'\n")
    # saved twice within one second, with the same size: Python's bytecode cache (checked by whole-second
    # mtime and size) would hand back the first version; --reload must not write one
    second = (int(time.time()) - 60) * 10**9
    write_model(folder, "2", mtime_ns=second)
    server = start_server(folder, "--reload", "--workers", "2", env={"PYTHONDONTWRITEBYTECODE": ""})
    url = server.url
    assert "ignoring --workers 2" in server.output and "Watching 1 model(s)" in server.output
    assert infer(url) == 10

    # a request in flight when the files change finishes on the old version
    slow: dict[str, int] = {}
    thread = threading.Thread(target=lambda: slow.update(answer=infer(url, {"sleep": 1.5})))
    thread.start()
    time.sleep(0.3)
    write_model(folder, "3", mtime_ns=second + 500_000_000)
    eventually(lambda: infer(url) == 15, "the edited model.py serves")
    thread.join()
    assert slow["answer"] == 10

    write_model(folder, "4", extra="\ndef broken(:\n")
    row = eventually(lambda: "reload failed" in index(url)["reason"] and index(url), "the index says the reload failed")
    assert row["state"] == "READY" and "serving the previous version: SyntaxError" in row["reason"]
    assert infer(url) == 15
    assert "failed to reload, still serving the previous version" in server.output

    (folder / "shipyard.yaml").write_text("version: '2'\n")
    write_model(folder, "5")
    eventually(lambda: infer(url) == 25, "the fixed model.py serves")
    assert index(url) == {"name": "adder", "version": "2", "state": "READY", "reason": ""}
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_snapshot_sees_package_files_not_caches(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "model.py").write_text("x = 1\n")
    (tmp_path / "data" / "weights.bin").write_bytes(b"w")
    before = snapshot(tmp_path)
    assert sorted(Path(p).name for p in before) == ["model.py", "weights.bin"]
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"c")
    (tmp_path / ".model.py.swp").write_bytes(b"s")
    assert snapshot(tmp_path) == before
    (tmp_path / "data" / "weights.bin").write_bytes(b"ww")
    assert snapshot(tmp_path) != before
    assert list(snapshot(tmp_path / "model.py")) == [str(tmp_path / "model.py")]


def test_a_failed_reload_keeps_the_old_model_in_process(tmp_path):
    folder = tmp_path / "adder"
    folder.mkdir()
    write_model(folder, "2")
    source = ModelSource("adder", "python", folder)

    async def scenario() -> None:
        repository = ModelRepository()
        repository.add(create_model(source))
        await repository.load_all()
        old = repository.get("adder")
        (folder / "model.py").write_text("raise RuntimeError('half written')\n")
        assert await repository.reload("adder", lambda: source) == "RuntimeError: half written"
        assert repository.get("adder") is old
        assert repository.index()[0]["reason"] == ("reload failed, serving the previous version: "
                                                   "RuntimeError: half written")

        def unreadable() -> ModelSource:
            raise ValueError("shipyard.yaml: format = 'nope'")

        assert await repository.reload("adder", unreadable) == "ValueError: shipyard.yaml: format = 'nope'"
        write_model(folder, "3")
        assert await repository.reload("adder", lambda: source) is None
        new = repository.get("adder")
        assert new is not old and repository.index()[0]["reason"] == ""
        repository.unload_all()

    asyncio.run(scenario())
