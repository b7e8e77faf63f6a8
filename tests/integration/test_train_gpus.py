"""GPU assignment with a declared inventory (SHIPYARD_GPUS): each admitted job's nodes get their own
GPU ids as CUDA_VISIBLE_DEVICES, a job that asks for none sees none, and ids are not shared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from planeproc import PlaneProcess, wait_for
from shipyard.control.scheduler import assign_devices, detect_inventory

pytestmark = pytest.mark.integration

SCRIPT = """
import os, time
go = os.environ.get("WAIT_FOR")
print("devices=" + repr(os.environ.get("CUDA_VISIBLE_DEVICES")), flush=True)
while go and not os.path.exists(go):
    time.sleep(0.05)
"""


def test_inventory_ids_and_assignment():
    assert detect_inventory({"SHIPYARD_GPUS": "3, 5", "SHIPYARD_CPUS": "2"}).gpu_ids == ["3", "5"]
    inventory = detect_inventory({"SHIPYARD_GPU_COUNT": "2", "SHIPYARD_CPUS": "2"})
    assert inventory.gpu_ids == ["0", "1"] and inventory.total["gpu"] == 2
    assert assign_devices(["0", "1", "2"], 2, 1) == [["0"], ["1"]]
    assert assign_devices(["0", "1", "2"], 1, 0) == [[]]
    assert assign_devices(["2"], 1, 2) is None


def gpu_job(name: str, script: Path, gpus: int, nodes: int = 1, go: Path | None = None) -> dict[str, Any]:
    requests: dict[str, str] = {"cpu": "1"}
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
    env = [{"name": "WAIT_FOR", "value": str(go)}] if go else []
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": name},
            "spec": {"runtimeRef": {"name": "python"}, "trainer": {
                "command": ["python", str(script)], "numNodes": nodes, "env": env,
                "resourcesPerNode": {"requests": requests}}}}


def devices_of(plane: PlaneProcess, name: str, node: int = 0) -> str | None:
    log = plane.home / "logs" / "default" / name / f"node-{node}.log"
    if not log.exists():
        return None
    for line in log.read_text().splitlines():
        if line.startswith("devices="):
            return line.removeprefix("devices=")
    return None


def test_jobs_get_distinct_gpus_and_cpu_jobs_see_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SHIPYARD_CPUS", "4")
    monkeypatch.setenv("SHIPYARD_GPUS", "0,1,2")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    go = tmp_path / "go"
    plane = PlaneProcess(tmp_path / "home").wait_up()
    try:
        plane.apply(gpu_job("pair", script, gpus=1, nodes=2, go=go))  # holds GPUs 0 and 1 until `go`
        wait_for(lambda: devices_of(plane, "pair", 1) is not None, 90, f"pair started\n{plane.output}")
        plane.apply(gpu_job("single", script, gpus=1, go=go), gpu_job("cpu", script, gpus=0, go=go))
        wait_for(lambda: devices_of(plane, "single") is not None and devices_of(plane, "cpu") is not None, 90,
                 f"single and cpu started\n{plane.output}")
        assert [devices_of(plane, "pair", 0), devices_of(plane, "pair", 1)] == ["'0'", "'1'"]
        assert devices_of(plane, "single") == "'2'"  # the one left: ids are never shared
        assert devices_of(plane, "cpu") == "''"  # asked for no GPU, sees none
    finally:
        go.touch()
        plane.stop()
