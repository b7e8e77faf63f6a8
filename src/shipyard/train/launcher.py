"""Run a :class:`ResolvedJob`'s processes on this machine, watch them, stop them, adopt them.

Each training process runs under ``python -m shipyard.train.step`` (which records its exit code
in a file) in a session of its own, so the job outlives a control plane killed with SIGKILL and
the next one can :meth:`JobRun.adopt` it. Every process of a run carries
``SHIPYARD_TRAINJOB=<home>#<namespace>/<name>/<uid>/<attempt>`` in its environment: adoption and
the final SIGKILL use it to tell the run's processes (torchrun's workers too, which live in
sessions of their own) from unrelated ones that got a recorded pid later.

Per framework, for ``N`` nodes of ``M`` processes:

- torch / deepspeed: one ``torchrun`` per node (``python -m torch.distributed.run``) with static
  rendezvous on 127.0.0.1 at a free port and ``--node-rank i``, as Kubeflow's, so step ``node-i``
  holds the same ranks on every attempt; node 0 hosts the store. ``PET_*`` are set as Kubeflow's
  torch plugin does. Elastic jobs pass ``--nnodes MIN:MAX`` with c10d rendezvous (ranks in join order).
- jax: ``N x M`` processes with ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``.
- xgboost: a tracker process plus ``N x M`` workers with ``DMLC_*``.
- python: ``N x M`` plain processes.

Non-torch processes also get ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``NODE_RANK``. A step's
log is ``<logs_dir>/node-<i>.log`` (all processes of node i); the tracker's is ``tracker.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard import processes
from shipyard.home import shipyard_home
from shipyard.train.ports import LOOPBACK, free_ports
from shipyard.train.spec import ResolvedJob, step_names

JOB_ENV = "SHIPYARD_TRAINJOB"
STEP_MODULE = "shipyard.train.step"
TRACKER_STEP = "tracker"
RECORD_VERSION = 1
#: How long the other processes get to stop after one of them failed, before SIGKILL.
FAILURE_GRACE_S = 5.0
PYTHON_NAMES = ("python", "python3")


@dataclass
class JobOutcome:
    """How a run ended: ``exit_codes`` per step (None: lost, e.g. killed while no one watched)."""

    succeeded: bool
    exit_codes: dict[str, int | None]
    reason: str  # "Succeeded" | "Error" | "Terminated" | "Lost"
    message: str = ""


@dataclass
class _Process:
    step: str
    pid: int
    exit_file: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def exit_code(self) -> int | None:
        """The exit code once it ended (from the exit file the step wrapper wrote), else None."""
        if self.popen is not None and self.popen.poll() is None:
            return None
        try:
            return int(self.exit_file.read_text().strip())
        except (OSError, ValueError):
            pass
        if self.popen is not None:  # the wrapper itself died (SIGKILL): its code is all there is
            return self.popen.returncode
        return None

    def gone(self, tag: str) -> bool:
        """Ended: reaped or a zombie, or (not our child) no longer our process."""
        if self.popen is not None:
            return self.popen.poll() is not None
        return processes.env_tag(self.pid, JOB_ENV) != tag


class JobRun:
    """The processes of one attempt of a training job."""

    def __init__(self, job: ResolvedJob, logs_dir: Path | None = None, home: Path | None = None) -> None:
        self.job = job
        self.home = Path(home or shipyard_home()).resolve()
        self.logs_dir = Path(logs_dir) if logs_dir else self.home / "logs" / job.namespace / job.name
        self.tag = f"{self.home}#{job.namespace}/{job.name}/{job.uid}/{job.attempt}"
        self.state_dir = job.workdir / ".shipyard" / f"attempt-{job.attempt}"
        self.processes: list[_Process] = []
        self.ports: list[int] = []
        self.started_at: float | None = None
        self._outcome: JobOutcome | None = None
        self._stopping_since: float | None = None
        self._terminated = False
        self._first_failure: str | None = None

    # -- starting --------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the workspace and log folder, then start every process of the job (returns at once)."""
        job = self.job
        if self.processes:
            raise RuntimeError("this run has already started")
        for folder in (job.workdir, job.checkpoint_dir, job.report_file.parent, self.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.state_dir.glob("*.exit"):
            stale.unlink()
        self.started_at = time.time()
        launch = {"torch": self._torch, "deepspeed": self._torch, "jax": self._jax,
                  "xgboost": self._xgboost, "python": self._python}[job.framework]
        try:
            launch()
        except BaseException:
            self.terminate(grace_s=0)
            raise

    def _base_env(self, node: int = 0) -> dict[str, str]:
        job = self.job
        devices = {} if job.devices is None else {"CUDA_VISIBLE_DEVICES": ",".join(job.devices[node])}
        return {
            # dataset://NAME/... in the training code resolves in the job's namespace unless its env says otherwise
            **os.environ, "SHIPYARD_NAMESPACE": job.namespace, **job.env, **devices,
            "PYTHONUNBUFFERED": "1",
            "SHIPYARD_JOB_DIR": str(job.workdir),
            "SHIPYARD_CHECKPOINT_DIR": str(job.checkpoint_dir),
            "SHIPYARD_REPORT_FILE": str(job.report_file),
            "SHIPYARD_ATTEMPT": str(job.attempt),
            JOB_ENV: self.tag,
        }

    def _user_command(self) -> list[str]:
        """The job's command with ``python`` meaning the job's interpreter."""
        command = list(self.job.command)
        if command[0] in PYTHON_NAMES:
            command[0] = self.job.python
        return command

    def _spawn(self, step: str, index: int, command: list[str], env: dict[str, str]) -> None:
        exit_file = self.state_dir / f"{step}.{index}.exit"
        log_path = self.logs_dir / f"{step}.log"
        with open(log_path, "ab") as log:
            if index == 0:
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {self.job.attempt}: "
                          f"{' '.join(command)}\n".encode())
                log.flush()
            popen = subprocess.Popen(
                [self.job.python, "-m", STEP_MODULE, str(exit_file), "--", *command],
                cwd=self.job.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        self.processes.append(_Process(step, popen.pid, exit_file, popen))

    def _torch(self) -> None:
        job = self.job
        (port,) = self.ports = free_ports(1)
        nnodes = f"{job.elastic[0]}:{job.elastic[1]}" if job.elastic else str(job.num_nodes)
        script = torchrun_target(job.command)
        for node, step in enumerate(step_names(job)):
            env = {**self._base_env(node), "PET_NNODES": nnodes, "PET_NPROC_PER_NODE": str(job.nproc_per_node),
                   "PET_NODE_RANK": str(node), "PET_MASTER_ADDR": LOOPBACK, "PET_MASTER_PORT": str(port)}
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
            command = [job.python, "-m", "torch.distributed.run", "--nnodes", nnodes,
                       "--nproc-per-node", str(job.nproc_per_node), "--local-addr", LOOPBACK, "--max-restarts", "0"]
            if job.elastic:  # c10d: nodes join in any order, so their ranks follow the join order
                command += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"{LOOPBACK}:{port}", "--rdzv-id", job.uid,
                            "--rdzv-conf", f"is_host={'true' if node == 0 else 'false'}"]
            else:  # static, as Kubeflow's: step node-i holds ranks i*M .. i*M+M-1 on every attempt
                command += ["--rdzv-backend", "static", "--master-addr", LOOPBACK, "--master-port", str(port),
                            "--node-rank", str(node)]
            self._spawn(step, 0, command + script, env)

    def _ranked(self) -> list[tuple[str, int, int, int]]:
        """(step, node, local rank, global rank) of every process."""
        job = self.job
        return [(step, node, local, node * job.nproc_per_node + local)
                for node, step in enumerate(step_names(job)) for local in range(job.nproc_per_node)]

    def _rank_env(self, node: int, local: int, rank: int) -> dict[str, str]:
        return {**self._base_env(node), "RANK": str(rank), "WORLD_SIZE": str(self.job.world_size),
                "LOCAL_RANK": str(local), "LOCAL_WORLD_SIZE": str(self.job.nproc_per_node), "NODE_RANK": str(node)}

    def _jax(self) -> None:
        (port,) = self.ports = free_ports(1)
        for step, node, local, rank in self._ranked():
            env = {**self._rank_env(node, local, rank), "JAX_COORDINATOR_ADDRESS": f"{LOOPBACK}:{port}",
                   "JAX_NUM_PROCESSES": str(self.job.world_size), "JAX_PROCESS_ID": str(rank)}
            self._spawn(step, local, self._user_command(), env)

    def _xgboost(self) -> None:
        (port,) = self.ports = free_ports(1)
        tracker = [self.job.python, "-m", "shipyard.train.tracker", "--workers", str(self.job.world_size),
                   "--port", str(port)]
        self._spawn(TRACKER_STEP, 0, tracker, self._base_env())
        for step, node, local, rank in self._ranked():
            env = {**self._rank_env(node, local, rank), "DMLC_TRACKER_URI": LOOPBACK,
                   "DMLC_TRACKER_PORT": str(port), "DMLC_TASK_ID": str(rank),
                   "DMLC_NUM_WORKER": str(self.job.world_size)}
            self._spawn(step, local, self._user_command(), env)

    def _python(self) -> None:
        for step, node, local, rank in self._ranked():
            self._spawn(step, local, self._user_command(), self._rank_env(node, local, rank))

    # -- watching --------------------------------------------------------------------------------
    def pids(self) -> list[int]:
        """Every live process of this run: step wrappers, torchrun agents and their workers."""
        return [pid for pid in processes.pids() if processes.env_tag(pid, JOB_ENV) == self.tag]

    def step_exit_codes(self) -> dict[str, int | None]:
        """Per step, the first non-zero exit code of its processes, else 0; None while one runs or if lost."""
        codes: dict[str, int | None] = {}
        for step in [*step_names(self.job), *([TRACKER_STEP] if self._has_tracker() else [])]:
            members = [process.exit_code() for process in self.processes if process.step == step]
            if any(code is None for code in members):
                codes[step] = None
            else:
                codes[step] = next((code for code in members if code != 0), 0)
        return codes

    def _has_tracker(self) -> bool:
        return any(process.step == TRACKER_STEP for process in self.processes)

    def poll(self) -> JobOutcome | None:
        """None while the job runs, else how it ended.

        When a training process fails, the others cannot go on (collectives would hang): they are
        sent SIGTERM, and SIGKILL after FAILURE_GRACE_S; the outcome is reported once all ended."""
        if self._outcome is not None:
            return self._outcome
        trainers = [process for process in self.processes if process.step != TRACKER_STEP]
        ended = [process for process in trainers if process.gone(self.tag)]
        failed = [process for process in ended if process.exit_code() != 0]
        if failed and self._first_failure is None:
            self._first_failure = failed[0].step  # the others are stopped by us: this one is the cause
        if failed and len(ended) < len(trainers):
            self._stop_rest()
            return None
        if len(ended) < len(trainers):
            return None
        self._stop_rest()  # the tracker (or stray workers) once every trainer ended
        if self.pids():
            return None
        codes = {step: code for step, code in self.step_exit_codes().items() if step != TRACKER_STEP}
        self._outcome = self._judge(codes)
        return self._outcome

    def _judge(self, codes: dict[str, int | None]) -> JobOutcome:
        if self._terminated:
            return JobOutcome(False, codes, "Terminated", "stopped by request")
        if all(code == 0 for code in codes.values()):
            return JobOutcome(True, codes, "Succeeded", "all processes exited with code 0")
        lost = [step for step, code in codes.items() if code is None]
        failed = [(step, code) for step, code in codes.items() if code not in (0, None)]
        failed.sort(key=lambda item: item[0] != self._first_failure)
        if failed:
            step, code = failed[0]
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            return JobOutcome(False, codes, "Error", f"{step} {how} (see its log, {self.logs_dir / (step + '.log')})")
        return JobOutcome(False, codes, "Lost", f"{', '.join(lost)} ended while no one watched; exit code unknown")

    def _stop_rest(self) -> None:
        now = time.monotonic()
        if self._stopping_since is None:
            self._stopping_since = now
            self._signal_all(signal.SIGTERM)
        elif now - self._stopping_since > FAILURE_GRACE_S:
            self._kill_tagged()
        self._reap()

    # -- stopping --------------------------------------------------------------------------------
    def terminate(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process (training code can checkpoint), SIGKILL what is left after ``grace_s``.

        Blocks until all of the run's processes are gone (at most about ``grace_s`` + 5 s)."""
        self._terminated = True
        if grace_s > 0:
            self._signal_all(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self.pids():
                self._reap()
                time.sleep(0.05)
        deadline = time.monotonic() + 5.0
        while True:
            self._kill_tagged()
            self._reap()
            if not self.pids() or time.monotonic() > deadline:
                break
            time.sleep(0.05)

    def _signal_all(self, signum: int) -> None:
        """Send ``signum`` to each step wrapper, which passes it on (torchrun passes it to its workers)."""
        for process in self.processes:
            if not process.gone(self.tag):
                _send(process.pid, signum)

    def _kill_tagged(self) -> None:
        for pid in self.pids():
            _send(pid, signal.SIGKILL)

    def _reap(self) -> None:
        for process in self.processes:
            if process.popen is not None:
                process.popen.poll()

    # -- plane restarts --------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """What a later control plane needs to adopt this run (JSON-serialisable)."""
        return {
            "version": RECORD_VERSION, "tag": self.tag, "attempt": self.job.attempt, "uid": self.job.uid,
            "logs_dir": str(self.logs_dir), "home": str(self.home), "ports": self.ports,
            "started_at": self.started_at,
            "processes": [{"step": p.step, "pid": p.pid, "exit_file": str(p.exit_file)} for p in self.processes],
        }

    @classmethod
    def adopt(cls, job: ResolvedJob, record: dict[str, Any]) -> JobRun | None:
        """The run in ``record`` (from :meth:`record`) for ``job``, or None when nothing of it is left.

        A recorded pid counts as the run's only while /proc shows it running the step wrapper with
        this run's tag; a process that ended leaves its exit code in its exit file. When some are
        alive and one vanished without an exit code, the run is adopted and :meth:`poll` reports it
        failed with reason ``Lost`` (after stopping the others)."""
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            return None
        run = cls(job, Path(record["logs_dir"]), Path(record["home"]))
        if run.tag != record.get("tag"):
            return None
        run.ports = list(record.get("ports") or [])
        run.started_at = record.get("started_at")
        alive = finished = 0
        for entry in record.get("processes") or []:
            process = _Process(entry["step"], int(entry["pid"]), Path(entry["exit_file"]))
            if processes.env_tag(process.pid, JOB_ENV) == run.tag and STEP_MODULE in processes.cmdline(process.pid):
                alive += 1
            elif process.exit_code() is not None:
                finished += 1
            run.processes.append(process)
        if not run.processes or alive + finished == 0:
            return None
        return run


def torchrun_target(command: list[str]) -> list[str]:
    """What follows torchrun's options: ``script args``, ``-m module args`` or ``--no-python cmd args``.

    ``python train.py`` and ``torchrun train.py`` both become ``train.py``; options given to
    torchrun itself are refused, since the launcher sets them."""
    head, rest = command[0], command[1:]
    if os.path.basename(head) in (*PYTHON_NAMES, "torchrun") or head.endswith("/python"):
        if rest and rest[0] == "-m":
            return rest
        if rest and rest[0].startswith("-"):
            raise ValueError(f"spec.trainer.command: options before the script ({rest[0]}) are not supported; "
                             "the launcher sets torchrun's options (give [torchrun, train.py, args...])")
        if not rest:
            raise ValueError("spec.trainer.command: expected a script after "
                             f"{head!r}, e.g. [torchrun, train.py]")
        return rest
    return ["--no-python", *command]


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
