"""Issue 7's "Running" and "Proof" claims end to end, through a real ``shipyard up``: a torch job
whose worker is SIGKILLed is restarted and resumes from its checkpoint; XGBoost and JAX jobs with
two nodes; dataset/model initializers (local folder, http); a job in a cached virtual environment
built from its packages; elastic torch; describe and ``logs -f`` of one rank while it runs."""

from __future__ import annotations

import functools
import http.server
import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from planeproc import PlaneProcess, wait_for

pytestmark = pytest.mark.integration
TIMEOUT_S = 120.0


# -- the plane and small helpers ------------------------------------------------------------------
@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlaneProcess]:
    """One plane for the module, with a declared inventory of 2 cpus (one 2-node job at a time)."""
    saved = os.environ.get("SHIPYARD_CPUS")
    os.environ["SHIPYARD_CPUS"] = "2"
    try:
        started = PlaneProcess(tmp_path_factory.mktemp("proof") / "home").wait_up()
    finally:
        if saved is None:
            del os.environ["SHIPYARD_CPUS"]
        else:
            os.environ["SHIPYARD_CPUS"] = saved
    yield started
    started.stop()
    left = training_pids(started.home)
    for pid in left:  # last resort; the assertion below still fails the run
        os.kill(pid, signal.SIGKILL)
    assert not left, f"training processes outlived the plane: {left}"


def trainjob(name: str, runtime: str, script: Path, nodes: int = 1, annotations: dict[str, str] | None = None,
             env: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A TrainJob as a Kubeflow user writes it: ``python script`` on ``runtime``, one cpu per node."""
    metadata: dict[str, Any] = {"name": name}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": metadata,
        "spec": {"runtimeRef": {"name": runtime}, **spec, "trainer": {
            "command": ["python", str(script)], "numNodes": nodes, "numProcPerNode": 1,
            "resourcesPerNode": {"requests": {"cpu": "1"}},
            "env": [{"name": key, "value": value} for key, value in (env or {}).items()]}},
    }


def write_script(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def describe(plane: PlaneProcess, name: str) -> dict[str, Any]:
    response = httpx.get(f"{plane.api}/apis/trainjobs/default/{name}/describe", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def state(plane: PlaneProcess, name: str) -> str | None:
    return ((describe(plane, name).get("status") or {}).get("shipyard") or {}).get("state")


def wait_state(plane: PlaneProcess, name: str, wanted: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    def reached() -> bool:
        current = state(plane, name)
        if current in ("Complete", "Failed") and current != wanted:
            raise AssertionError(f"{name} ended {current}, not {wanted}:\n{job_logs(plane, name)}")
        return current == wanted

    wait_for(reached, timeout, f"{name} {wanted}\n{job_logs(plane, name)}")
    return describe(plane, name)


def job_logs(plane: PlaneProcess, name: str) -> str:
    folder = plane.home / "logs" / "default" / name
    return "\n".join(f"== {path.name}\n{path.read_text(errors='replace')}" for path in sorted(folder.glob("*.log")))


def shipyard(plane: PlaneProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SHIPYARD_HOME": str(plane.home)})


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def training_pids(home: Path, job: str = "") -> list[int]:
    """Live processes carrying the launcher's tag for a job (any job when ``job`` is empty) of this home."""
    prefix = f"{home.resolve()}#default/{job}"
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and environ_of(int(name)).get("SHIPYARD_TRAINJOB", "").startswith(prefix):
            try:
                if Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(name))
            except (OSError, IndexError):
                continue
    return found


# -- 1. a SIGKILLed worker: restarted by the controller, resumed from the latest checkpoint -------
RESUMABLE_DDP = """
    import os, time, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from shipyard import train
    dist.init_process_group("gloo")
    rank, attempt, steps = dist.get_rank(), os.environ["SHIPYARD_ATTEMPT"], 40
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    state = train.load_checkpoint()  # None on the first attempt
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        start = state["step"] + 1
    print(f"rank {rank} attempt {attempt} starts at step {start}", flush=True)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    for step in range(start, steps):
        x = torch.randn(8, 4)
        loss = ((ddp(x) - x.sum(1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        if rank == 0:
            train.save_checkpoint({"model": model.state_dict(), "step": step}, step, keep=2)
            with open(os.path.join(os.environ["SHIPYARD_JOB_DIR"], "steps.log"), "a") as log:
                log.write(f"{attempt} {step}\\n")
            train.report({"loss": loss.item()}, step=step, progress=100 * (step + 1) / steps)
        dist.barrier()
        time.sleep(0.15)
    dist.destroy_process_group()
"""


def test_a_sigkilled_torch_worker_is_restarted_and_resumes_from_its_checkpoint(plane, tmp_path):
    pytest.importorskip("torch")
    script = write_script(tmp_path, "resumable", RESUMABLE_DDP)
    plane.apply(trainjob("resume", "torch-distributed", script, nodes=2,
                         annotations={"trainer.shipyard.io/max-restarts": "1"}))
    steps_log = plane.home / "jobs" / "default" / "resume" / "steps.log"
    wait_for(lambda: steps_log.exists() and steps_log.read_text().count("\n") >= 5, TIMEOUT_S,
             f"5 steps done\n{job_logs(plane, 'resume')}")

    def rank1_worker() -> int | None:  # torchrun's worker of rank 1, not its agent or step wrapper
        for pid in training_pids(plane.home, "resume/"):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if environ_of(pid).get("RANK") == "1" and str(script) in command and "torch.distributed.run" not in command:
                return pid
        return None

    os.kill(wait_for(rank1_worker, 30, "rank 1's worker"), signal.SIGKILL)
    done = wait_state(plane, "resume", "Complete")
    own = done["status"]["shipyard"]
    assert (own["attempt"], own["restarts"]) == (1, 1)
    reasons = [event["reason"] for event in done["events"]]
    assert reasons.index("Restarting") < reasons.index("Completed")
    restarting = next(event["message"] for event in done["events"] if event["reason"] == "Restarting")
    assert re.search(r"node-[01] exited with code -?\d+ .*restart 1 of 1", restarting), restarting

    runs: dict[str, list[int]] = {"0": [], "1": []}
    for line in steps_log.read_text().split("\n"):
        if line:
            attempt, step = line.split()
            runs[attempt].append(int(step))
    first, second = runs["0"], runs["1"]
    assert sorted(set(first + second)) == list(range(40)), runs
    redone = [step for step in second if step in first]
    assert second[0] > 0 and len(redone) < len(first), runs  # resumed, not started over
    for rank in (0, 1):  # step node-i holds rank i on every attempt (static rendezvous, as Kubeflow's)
        log = shipyard(plane, "logs", "trainjob", "resume", "--step", f"node-{rank}").stdout
        assert f"rank {rank} attempt 0 starts at step 0" in log
        assert f"rank {rank} attempt 1 starts at step {second[0]}" in log


# -- 2. XGBoost and JAX with two nodes ---------------------------------------------------------------
XGBOOST = """
    import os, numpy as np, xgboost as xgb
    from xgboost import collective
    from shipyard import train
    args = {"dmlc_tracker_uri": os.environ["DMLC_TRACKER_URI"],
            "dmlc_tracker_port": int(os.environ["DMLC_TRACKER_PORT"]), "dmlc_task_id": os.environ["DMLC_TASK_ID"]}
    with collective.CommunicatorContext(**args):
        rank, world = collective.get_rank(), collective.get_world_size()
        x = np.random.default_rng(rank).normal(size=(200, 3)); y = x @ np.array([1.0, -2.0, 0.5])
        booster = xgb.train({"tree_method": "hist", "max_depth": 3}, xgb.DMatrix(x, label=y), num_boost_round=4)
        booster.save_model(os.path.join(os.environ["SHIPYARD_JOB_DIR"], f"model-{rank}.json"))
        train.report({"world": world}, progress=100)
        print(f"xgboost worker {rank} of {world} done", flush=True)
"""

JAX = """
    import os
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax, jax.numpy as jnp
    from jax.experimental import multihost_utils
    # jax reads JAX_COORDINATOR_ADDRESS itself; the process count and id are passed, as in Kubeflow's examples.
    jax.distributed.initialize(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
    total = multihost_utils.process_allgather(jnp.array([jax.process_index() + 1.0])).sum()
    print(f"jax process {jax.process_index()} of {jax.process_count()} sum {float(total)}", flush=True)
    jax.distributed.shutdown()
"""


def test_an_xgboost_job_with_two_nodes_completes(plane, tmp_path):
    pytest.importorskip("xgboost")
    plane.apply(trainjob("xgb", "xgboost-distributed", write_script(tmp_path, "xgb", XGBOOST), nodes=2))
    done = wait_state(plane, "xgb", "Complete")
    assert done["status"]["shipyard"]["exitCodes"] == {"node-0": 0, "node-1": 0}
    logs = job_logs(plane, "xgb")
    assert "xgboost worker 0 of 2 done" in logs and "xgboost worker 1 of 2 done" in logs
    workdir = plane.home / "jobs" / "default" / "xgb"
    # Both workers built the same trees from allreduced histograms: distributed, not two separate fits.
    assert (workdir / "model-0.json").read_bytes() == (workdir / "model-1.json").read_bytes()
    assert {"name": "world", "value": "2"} in done["status"]["trainerStatus"]["metrics"]


def test_a_jax_job_with_two_nodes_completes(plane, tmp_path):
    pytest.importorskip("jax")
    plane.apply(trainjob("jax", "jax-distributed", write_script(tmp_path, "jaxjob", JAX), nodes=2))
    wait_state(plane, "jax", "Complete")
    logs = job_logs(plane, "jax")
    assert "jax process 0 of 2 sum 3.0" in logs and "jax process 1 of 2 sum 3.0" in logs


# -- 3. initializers: a local dataset folder and a model over http ----------------------------------
INITIALIZED = """
    import os, sys
    dataset = open(os.path.join("dataset", "train.csv")).read().strip()
    model = open(os.path.join("model", "weights.bin"), "rb").read()
    print(f"dataset {dataset!r} model {model!r} in {os.getcwd() == os.environ['SHIPYARD_JOB_DIR']}", flush=True)
"""


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A folder served by http.server on a free port: (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def test_initializers_fetch_the_dataset_and_model_before_the_trainer_starts(plane, tmp_path, http_folder):
    base, served = http_folder
    (served / "weights.bin").write_bytes(b"\x01\x02weights")
    dataset = tmp_path / "dataset-src"
    dataset.mkdir()
    (dataset / "train.csv").write_text("x,y\n1,2\n")
    plane.apply(trainjob("init", "python", write_script(tmp_path, "init", INITIALIZED), initializer={
        "dataset": {"storageUri": str(dataset)}, "model": {"storageUri": f"{base}/weights.bin"}}))
    done = wait_state(plane, "init", "Complete")
    steps = {entry["name"]: entry["succeeded"] for entry in done["status"]["jobsStatus"]}
    assert steps == {"dataset-initializer": 1, "model-initializer": 1, "node-0": 1}
    trainer = shipyard(plane, "logs", "trainjob", "init", "--step", "node-0").stdout
    assert "dataset 'x,y\\n1,2' model b'\\x01\\x02weights' in True" in trainer
    for step, uri in (("dataset-initializer", str(dataset)), ("model-initializer", f"{base}/weights.bin")):
        text = shipyard(plane, "logs", "trainjob", "init", "--step", step)
        assert text.returncode == 0, text.stderr
        assert f"from {uri}" in text.stdout and "done: 1 file(s)" in text.stdout


# -- 4. packages: a cached virtual environment, reused by a second job -------------------------------
PACKAGED = """
    import sys, inflection
    from shipyard import train
    major, minor, patch = (int(part) for part in inflection.__version__.split("."))
    train.report({"inflection_major": major, "inflection_minor": minor, "inflection_patch": patch}, progress=100)
    print(f"{inflection.camelize('ship_yard')} from {inflection.__file__} prefix {sys.prefix}", flush=True)
"""


def test_packages_run_the_job_in_a_cached_environment_reused_by_the_next_job(plane, tmp_path):
    if subprocess.run([sys.executable, "-c", "import inflection"], capture_output=True).returncode == 0:
        pytest.skip("inflection is installed in the server's environment: nothing to prove")
    script = write_script(tmp_path, "packaged", PACKAGED)
    packages = {"trainer.shipyard.io/packages": json.dumps(["inflection==0.5.1"])}
    plane.apply(trainjob("pkg-a", "python", script, annotations=packages))
    first = wait_state(plane, "pkg-a", "Complete", timeout=300)  # the first build downloads from PyPI
    metrics = {m["name"]: m["value"] for m in first["status"]["trainerStatus"]["metrics"]}
    assert metrics == {"inflection_major": "0", "inflection_minor": "5", "inflection_patch": "1"}
    environments = [path for path in (plane.home / "envs").iterdir() if path.is_dir() and not path.name.startswith(".")]
    assert len(environments) == 1
    environment = environments[0]
    python = first["status"]["shipyard"]["resolved"]["python"]
    assert python == str(environment / "bin" / "python")
    assert f"ShipYard from {environment}" in job_logs(plane, "pkg-a")
    built = (environment / "shipyard-env.json").stat().st_mtime_ns

    plane.apply(trainjob("pkg-b", "python", script, annotations=packages))
    second = wait_state(plane, "pkg-b", "Complete")
    assert second["status"]["shipyard"]["resolved"]["python"] == python
    assert f"ShipYard from {environment}" in job_logs(plane, "pkg-b")
    assert (environment / "shipyard-env.json").stat().st_mtime_ns == built  # reused, not built again
    assert [path.name for path in (plane.home / "envs").iterdir() if path.is_dir()] == [environment.name]


# -- 5. elastic torch ----------------------------------------------------------------------------------
ELASTIC = """
    import os, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    total = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(total)
    print(f"rank {dist.get_rank()} of {dist.get_world_size()} sum {total.item()} nnodes {os.environ['PET_NNODES']}",
          flush=True)
    dist.destroy_process_group()
"""


def test_an_elastic_torch_job_runs_with_a_node_range_and_completes(plane, tmp_path):
    pytest.importorskip("torch")
    plane.apply(trainjob("elastic", "torch-distributed", write_script(tmp_path, "elastic", ELASTIC), nodes=2,
                         annotations={"trainer.shipyard.io/elastic": "1:2"}))
    done = wait_state(plane, "elastic", "Complete")
    assert done["status"]["shipyard"]["resolved"]["elastic"] == [1, 2]
    node0 = shipyard(plane, "logs", "trainjob", "elastic", "--step", "node-0").stdout
    launch = next(line for line in node0.splitlines() if line.startswith("---"))
    assert "torch.distributed.run --nnodes 1:2 " in launch and "--node-rank" not in launch
    logs = job_logs(plane, "elastic")
    assert "of 2 sum 3.0 nnodes 1:2" in logs and logs.count("sum 3.0") == 2


# -- 6. describe while it runs, and logs -f of one rank --------------------------------------------
STREAMED = """
    import os, time
    from shipyard import train
    rank = train.rank()
    for step in range(3):
        print(f"rank {rank} step {step}", flush=True)
        train.report({"loss": 1.0 / (step + 1), "accuracy": 0.25 * (step + 1)}, step=step, progress=20 * (step + 1))
        time.sleep(0.1)
    print(f"rank {rank} waiting", flush=True)
    while not os.path.exists(os.environ["GO"]):
        time.sleep(0.05)
    train.report({"loss": 0.125}, step=3, progress=100)
    print(f"rank {rank} finished", flush=True)
"""


def test_describe_shows_progress_and_metrics_and_logs_follow_streams_rank_1(plane, tmp_path):
    go = tmp_path / "go"
    plane.apply(trainjob("streamed", "python", write_script(tmp_path, "streamed", STREAMED), nodes=2,
                         env={"GO": str(go)}))
    follower = subprocess.Popen([sys.executable, "-m", "shipyard", "logs", "trainjob", "streamed", "--step", "node-1",
                                 "-f"], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "SHIPYARD_HOME": str(plane.home)})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True).start()  # type: ignore

    def read_until(marker: str) -> list[str]:
        seen = []
        deadline = time.monotonic() + TIMEOUT_S
        while not any(marker in line for line in seen):
            try:
                seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {marker!r} from logs -f; got {seen}\n{job_logs(plane, 'streamed')}")
        return seen

    try:
        early = read_until("rank 1 waiting")
        assert state(plane, "streamed") == "Running"  # streamed while the job runs
        assert [line.strip() for line in early if line.startswith("rank")] == [
            "rank 1 step 0", "rank 1 step 1", "rank 1 step 2", "rank 1 waiting"]  # rank 1's lines only
        wait_for(lambda: "60%" in shipyard(plane, "describe", "trainjob", "streamed").stdout, 30, "progress 60%")
        text = shipyard(plane, "describe", "trainjob", "streamed").stdout
        assert "State:        Running" in text and "Progress:     60%" in text
        metrics = text.split("Metrics:", 1)[1].split("Steps:", 1)[0].split()
        assert metrics == ["NAME", "VALUE", "accuracy", "0.75", "loss", "0.3333333333333333"]
        go.touch()
        assert any(line.startswith("rank 1 finished") for line in read_until("rank 1 finished"))
        wait_state(plane, "streamed", "Complete")
        final = shipyard(plane, "describe", "trainjob", "streamed").stdout
        assert "Progress:     100%" in final
        assert final.split("Metrics:", 1)[1].split("Steps:", 1)[0].split()[2:] == ["accuracy", "0.75", "loss", "0.125"]
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(30)
