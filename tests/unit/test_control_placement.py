"""The machine's ledger: replicas' resources.requests against a declared inventory, GPU sharing by memory,
TrainJobs and replicas in one account; and the activator's hold queue (no sockets, no wall-clock asserts)."""

from __future__ import annotations

import asyncio

import pytest

from shipyard.control.controllers.scaling import machine_bound
from shipyard.control.gateway.activator import Activator, Refused
from shipyard.control.gateway.routing import RouteTable, Router
from shipyard.control.model_source import ModelSourceError, replica_needs
from shipyard.control.scheduler import Holding, Inventory, Ledger, ReplicaNeeds, admit, Demand, detect_inventory

GI = 2.0**30


def inventory(cpus: float = 4, memory: float = 8 * GI, gpus: int = 0,
              gpu_memory: list[float] | None = None) -> Inventory:
    ids = [str(i) for i in range(gpus)]
    return Inventory({"cpu": cpus, "memory": memory, "gpu": float(gpus)}, ids, dict(zip(ids, gpu_memory or [])))


def test_replicas_take_cpu_and_memory_until_the_machine_is_full_and_get_it_back():
    ledger = Ledger(inventory(cpus=4, memory=8 * GI))
    needs = ReplicaNeeds(cpu=1.5, memory=2 * GI)
    assert isinstance(ledger.take("a", needs), Holding) and isinstance(ledger.take("b", needs), Holding)
    assert ledger.take("a", needs) is ledger.holdings["a"]  # taking again is idempotent
    why = ledger.take("c", needs)
    assert why == "Insufficient cpu (needs 1.5, 1 of 4 free)"
    assert ledger.take("c", ReplicaNeeds(memory=5 * GI)) == \
        "Insufficient memory (needs 5.00GiB, 4.00GiB of 8.00GiB free)"
    assert isinstance(ledger.take("d", ReplicaNeeds()), Holding)  # asking for nothing always fits
    ledger.release("a")
    assert isinstance(ledger.take("c", needs), Holding)


def test_whole_gpus_are_exclusive_and_shared_gpus_are_packed_by_memory():
    ledger = Ledger(inventory(gpus=2, gpu_memory=[16 * GI, 8 * GI]))
    whole = ledger.take("whole", ReplicaNeeds(gpu=1))
    assert isinstance(whole, Holding) and whole.cuda_visible_devices == "0"
    shared = ReplicaNeeds(gpu_memory=6 * GI)
    first, second = ledger.take("s1", shared), ledger.take("s2", shared)
    assert isinstance(first, Holding) and first.devices == ("1",)
    assert second == ("Insufficient GPU memory (needs 6.00GiB on 1 GPU(s); 0 GPU(s) have that much free, the "
                      "most free on one is 2.00GiB)")
    assert ledger.take("w2", ReplicaNeeds(gpu=1)) == "Insufficient nvidia.com/gpu (needs 1, 0 of 2 free)"
    ledger.release("whole")
    placed = ledger.take("s2", shared)
    assert isinstance(placed, Holding) and placed.devices == ("0",)
    third = ledger.take("s3", shared)  # best fit: the fuller GPU that still has room
    assert isinstance(third, Holding) and third.devices == ("0",)


def test_sharing_needs_declared_gpu_memory():
    ledger = Ledger(inventory(gpus=1))
    assert "SHIPYARD_GPU_MEMORY" in ledger.take("a", ReplicaNeeds(gpu_memory=GI))
    assert Ledger(inventory()).take("a", ReplicaNeeds(gpu=1)) == "Insufficient nvidia.com/gpu (needs 1, 0 of 0 free)"


def test_trainjobs_and_replicas_share_one_account():
    ledger = Ledger(inventory(cpus=4, gpus=2, gpu_memory=[16 * GI, 16 * GI]))
    ledger.jobs = lambda: [({"cpu": 2.0, "memory": 0.0, "gpu": 1.0}, ["0"])]
    assert ledger.take("r1", ReplicaNeeds(cpu=3)) == "Insufficient cpu (needs 3, 2 of 4 free)"
    shared = ledger.take("r2", ReplicaNeeds(cpu=1, gpu_memory=GI))
    assert isinstance(shared, Holding) and shared.devices == ("1",)  # GPU 0 is the job's
    jobs = ledger.job_inventory()
    assert jobs.gpu_ids == ["0"]  # a GPU a replica shares is not offered to jobs
    assert jobs.free([{"cpu": 2.0, "memory": 0.0, "gpu": 1.0}]) == {"cpu": 1.0, "memory": 8 * GI, "gpu": 0.0}
    queued = [Demand(("ns", "job"), 0, 0.0, {"cpu": 2.0, "memory": 0.0, "gpu": 0.0})]
    assert admit(queued, jobs, [{"cpu": 2.0, "memory": 0.0, "gpu": 1.0}]) == []  # 1 cpu left after the replica


def test_inventory_declares_gpu_memory_per_gpu_or_for_all():
    found = detect_inventory({"SHIPYARD_GPUS": "0,1", "SHIPYARD_GPU_MEMORY": "16Gi", "SHIPYARD_CPUS": "2"})
    assert found.gpu_memory == {"0": 16 * GI, "1": 16 * GI}
    listed = detect_inventory({"SHIPYARD_GPUS": "0,1", "SHIPYARD_GPU_MEMORY": "17179869184, 8Gi"})
    assert listed.gpu_memory == {"0": 16 * GI, "1": 8 * GI}
    with pytest.raises(ValueError, match="gives 3 sizes but the machine has 2 GPU"):
        detect_inventory({"SHIPYARD_GPUS": "0,1", "SHIPYARD_GPU_MEMORY": "1Gi,1Gi,1Gi"})
    with pytest.raises(ValueError, match="SHIPYARD_GPU_MEMORY='lots'"):
        detect_inventory({"SHIPYARD_GPUS": "0", "SHIPYARD_GPU_MEMORY": "lots"})


def test_replica_needs_from_requests_limits_and_the_gpu_memory_annotation():
    predictor = {"model": {"modelFormat": {"name": "sklearn"}, "resources": {
        "requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "nvidia.com/gpu": "1"}}}}
    assert replica_needs(predictor) == ReplicaNeeds(cpu=0.5, memory=GI, gpu=1)
    shared = replica_needs(predictor, {"serving.shipyard.io/gpu-memory": "8Gi"})
    assert shared.gpu_memory == 8 * GI
    with pytest.raises(ModelSourceError, match=r"spec.predictor.model.resources.requests.nvidia.com/gpu: expected a "
                                               r"whole number of GPUs, got 0.5"):
        replica_needs({"model": {"resources": {"requests": {"nvidia.com/gpu": "0.5"}},
                                 "modelFormat": {"name": "sklearn"}}})
    with pytest.raises(ModelSourceError, match=r"metadata.annotations\[serving.shipyard.io/gpu-memory\]"):
        replica_needs(predictor, {"serving.shipyard.io/gpu-memory": "much"})


def test_the_machine_bounds_a_revision_without_max_replicas():
    machine = inventory(cpus=8, memory=16 * GI, gpus=2, gpu_memory=[16 * GI, 8 * GI])
    assert machine_bound(machine, ReplicaNeeds()) == 8  # one per core when it asks for nothing
    assert machine_bound(machine, ReplicaNeeds(cpu=3)) == 2
    assert machine_bound(machine, ReplicaNeeds(cpu=1, gpu_memory=8 * GI)) == 3
    assert machine_bound(machine, ReplicaNeeds(gpu=1)) == 2
    assert machine_bound(machine, ReplicaNeeds(cpu=100)) == 1  # never 0: the replica waits, with a reason


# -- the activator ---------------------------------------------------------------------------------
def table(replicas: list[dict], queue: int = 2, timeout_s: float = 30.0, **backend) -> dict:
    return {"isvc": "iris", "namespace": "default", "version": 1, "activator": {"queue": queue, "timeout_s": timeout_s},
            "backends": [{"revision": "iris-1", "percent": 100, "replicas": replicas, "activate": True, **backend}]}


REPLICA = {"http": "http://127.0.0.1:1", "grpc": "127.0.0.1:2"}


def test_activator_holds_until_a_replica_is_routed_and_bounds_its_queue():
    async def scenario() -> None:
        demanded: list[str] = []
        router, activator = Router(), Activator(demanded.append)
        router.update({("default", "iris"): table([])})
        parsed = router.lookup("default", "iris")
        backend = parsed.choose()  # no replica, but activatable: returned for the activator
        assert not len(backend.pool)
        held = [asyncio.ensure_future(activator.hold(parsed, backend)) for _ in range(2)]
        await asyncio.sleep(0)
        assert activator.held("default/iris-1") == 2 and demanded == ["default/iris-1"] * 2
        with pytest.raises(Refused, match="already holds 2 request"):
            await activator.hold(parsed, backend)
        router.update({("default", "iris"): table([REPLICA])})
        activator.refreshed(router)
        released = await asyncio.gather(*held)
        assert [len(b.pool) for b in released] == [1, 1] and activator.held() == 0
        assert activator.cold_starts("default/iris-1")["count"] == 1
        assert activator.refused == {("default/iris-1", "queue_full"): 1}

    asyncio.run(scenario())


def test_activator_times_out_refuses_a_failing_revision_and_reroutes_a_removed_one():
    async def scenario() -> None:
        router, activator = Router(), Activator()
        router.update({("default", "iris"): table([], timeout_s=0.01)})
        parsed = router.lookup("default", "iris")
        with pytest.raises(Refused, match="activator-timeout"):
            await activator.hold(parsed, parsed.choose())
        router.update({("default", "iris"): table([], timeout_s=30)})
        parsed = router.lookup("default", "iris")
        waiting = asyncio.ensure_future(activator.hold(parsed, parsed.choose()))
        await asyncio.sleep(0)
        router.update({("default", "iris"): table([], failing="replica 0 exited with code 1")})
        activator.refreshed(router)
        with pytest.raises(Refused, match="cannot start a replica: replica 0 exited with code 1"):
            await waiting
        parsed = router.lookup("default", "iris")
        with pytest.raises(Refused, match="cannot start a replica"):
            await activator.hold(parsed, parsed.choose())
        router.update({("default", "iris"): table([])})
        parsed = router.lookup("default", "iris")
        waiting = asyncio.ensure_future(activator.hold(parsed, parsed.choose()))
        await asyncio.sleep(0)
        router.update({("default", "iris"): {**table([]), "backends": []}})
        activator.refreshed(router)
        assert await waiting is None  # its revision left the table: the request is routed again

    asyncio.run(scenario())


def test_a_table_without_activate_keeps_skipping_replica_less_backends():
    parsed = RouteTable.parse(("default", "iris"), {"backends": [
        {"revision": "a", "percent": 50, "replicas": []},
        {"revision": "b", "percent": 50, "replicas": [REPLICA]}]})
    assert {parsed.choose().revision for _ in range(10)} == {"b"}
    split = RouteTable.parse(("default", "iris"), {"backends": [
        {"revision": "a", "percent": 50, "replicas": [], "activate": True},
        {"revision": "b", "percent": 50, "replicas": [REPLICA]}]})
    assert sorted(split.choose().revision for _ in range(10)) == ["a"] * 5 + ["b"] * 5


def test_the_split_keeps_its_place_when_only_replicas_change():
    def raw(replicas: list[dict]) -> dict:
        return {"version": len(replicas), "backends": [
            {"revision": "a", "percent": 50, "replicas": replicas, "activate": True},
            {"revision": "b", "percent": 50, "replicas": [REPLICA], "activate": True}]}

    router = Router()
    picks = []
    for version in range(6):  # a new table (a replica more) after every pick
        router.update({("default", "iris"): raw([REPLICA] * version)})
        picks.append(router.lookup("default", "iris").choose().revision)
    assert sorted(picks) == ["a"] * 3 + ["b"] * 3
