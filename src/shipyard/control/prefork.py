"""Pre-imported runtimes for fast replica starts: a fork server ("zygote") the local engine forks replicas from.

A fresh ``shipyard serve`` spends most of a cold start importing: Python and Shipyard's CLI (~0.4 s)
and scikit-learn with SciPy (~1 s on this machine), before the model (a few ms) loads. The zygote
is one long-lived process, started by the local engine, that has imported Shipyard's server and,
on first use, each fork-safe runtime (scikit-learn, XGBoost, LightGBM, and custom ``model.py``
models, which import their own code in the replica); a replica of those formats is an
``os.fork()`` of it that runs ``shipyard serve`` with nothing left to import. Other formats
(ONNX, PyTorch, Hugging Face, R), or a replica whose environment or command line does not fit
(see below), start as a fresh process as before.

A forked replica must look exactly like a spawned one to the engine, which recognises its
replicas after a control-plane restart by ``/proc/<pid>/environ`` (``SHIPYARD_REPLICA``) and
``/proc/<pid>/cmdline`` (``shipyard serve``), and to tools like ``pgrep -f``. Those files show
the memory where the kernel put the process's initial arguments and environment; the zygote is
started with padding in both (``PAD_ENV`` and a padding argument), and each child rewrites them
in place with its own command line and environment (as ``setproctitle`` does) after setting
``os.environ`` for real. The child also starts its own session, so it outlives the zygote and
the plane like any replica.

Protocol, JSON lines: the engine writes ``{"id", "argv", "env", "log", "cwd", "preload"}`` to the
zygote's stdin and reads ``{"id", "pid"}`` or ``{"id", "error"}`` from its stdout, plus
``{"exit": pid, "code": n}`` whenever a child ends (the zygote reaps them, so the engine learns
exit codes as it does from its own children). The zygote exits when its stdin closes (the plane
stopped or died); its children keep running.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import json
import logging
import os
import select
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("shipyard.control")

#: Environment variable the controller sets on a replica to say which runtime it serves.
FORMAT_ENV = "SHIPYARD_SERVE_FORMAT"
#: Set to 0 (on the plane) to spawn every replica as a fresh process.
ENABLE_ENV = "SHIPYARD_PREFORK"
#: Padding the zygote is started with, so its children have room for their own environment and arguments.
PAD_ENV = "SHIPYARD_PREFORK_PAD"
ENV_ROOM = 16384
ARGV_ROOM = 8192
#: Modules imported before forking a replica of each format (the zygote keeps them for the next one).
PRELOAD: dict[str, tuple[str, ...]] = {
    "sklearn": ("shipyard.runtimes.sklearn", "joblib", "sklearn.base", "sklearn.linear_model", "sklearn.tree",
                "sklearn.ensemble", "sklearn.pipeline", "sklearn.preprocessing"),
    "xgboost": ("shipyard.runtimes.xgboost", "xgboost"),
    "lightgbm": ("shipyard.runtimes.lightgbm", "lightgbm"),
    "python": ("shipyard.runtimes.custom",),
    "detector": ("shipyard.monitor.receiver", "shipyard.monitor.detector_folder", "pandas", "scipy.stats",
                 "sklearn.ensemble"),
}
#: What every replica needs: the CLI and the server.
BASE = ("shipyard.cli.main", "shipyard.cli.serve", "shipyard.server.runner", "shipyard.server.http",
        "shipyard.server.grpc_service")


def enabled(environ: dict[str, str] | None = None) -> bool:
    return (environ if environ is not None else os.environ).get(ENABLE_ENV, "1").strip() not in ("0", "false", "no")


# -- the engine's side -------------------------------------------------------------------------------
class Prefork:
    """The plane's handle on its zygote: ``spawn`` forks a replica (None: spawn it the usual way)."""

    def __init__(self, log_path: Path, python: str = sys.executable) -> None:
        self.log_path = log_path
        self.python = python
        self.process: asyncio.subprocess.Process | None = None
        self.exits: dict[int, int] = {}  # pid -> exit code (as Popen.returncode) of ended children
        self.owned: set[int] = set()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[bool] | None = None
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None and self._reader is not None \
            and not self._reader.done()

    def warm(self) -> None:
        """Start the zygote in the background (its base imports run while the plane does other things)."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())

    async def _start(self) -> bool:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.log_path, "ab") as stderr:
                self.process = await asyncio.create_subprocess_exec(
                    self.python, "-m", "shipyard.control.prefork", "." * ARGV_ROOM,
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                    env={**os.environ, PAD_ENV: "." * ENV_ROOM}, start_new_session=True, limit=1 << 20)
            assert self.process.stdout is not None
            first = json.loads(await asyncio.wait_for(self.process.stdout.readline(), 120) or b"null")
            if not isinstance(first, dict) or not first.get("ready"):
                raise RuntimeError(f"the zygote said {first!r}")
        except (OSError, ValueError, RuntimeError, asyncio.TimeoutError) as exc:
            log.warning("pre-imported runtimes are off (replicas start as fresh processes): %s", exc)
            await self.close()
            return False
        self._reader = asyncio.ensure_future(self._read())
        return True

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "exit" in message:
                self.exits[int(message["exit"])] = int(message["code"])
                if len(self.exits) > 4096:  # keep the recent ones
                    for pid in list(self.exits)[:1024]:
                        self.exits.pop(pid, None)
                        self.owned.discard(pid)
            elif (future := self._replies.pop(message.get("id"), None)) is not None and not future.done():
                future.set_result(message)
        for future in self._replies.values():
            if not future.done():
                future.set_result({"error": "the zygote exited"})
        self._replies.clear()

    async def spawn(self, fmt: str | None, argv: list[str], env: dict[str, str], log_file: Path,
                    timeout_s: float = 120.0) -> int | None:
        """Fork a replica running ``argv`` (the full command line) with ``env``, its output appended to
        ``log_file``; its pid, or None when this replica should be spawned the usual way."""
        if fmt not in PRELOAD:
            return None
        self.warm()
        assert self._starting is not None
        if not await self._starting or not self.running:
            return None
        assert self.process is not None and self.process.stdin is not None
        async with self._lock:  # one fork at a time: the preloads run in the zygote, in order
            self._next_id += 1
            future = self._replies[self._next_id] = asyncio.get_running_loop().create_future()
            request = {"id": self._next_id, "argv": argv, "env": env, "log": str(log_file), "cwd": os.getcwd(),
                       "preload": list(PRELOAD[fmt])}
            try:
                self.process.stdin.write(json.dumps(request).encode() + b"\n")
                await self.process.stdin.drain()
                reply = await asyncio.wait_for(future, timeout_s)
            except (OSError, asyncio.TimeoutError) as exc:
                self._replies.pop(self._next_id, None)
                log.warning("the zygote did not fork a replica (%s); spawning it instead", exc)
                return None
        if "pid" not in reply:
            log.info("spawning a replica instead of forking it: %s", reply.get("error"))
            return None
        pid = int(reply["pid"])
        self.owned.add(pid)
        return pid

    def owns(self, pid: int) -> bool:
        return pid in self.owned

    def exit_code(self, pid: int) -> int | None:
        return self.exits.get(pid)

    async def close(self) -> None:
        """Stop the zygote (its children keep running)."""
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


# -- the zygote's side -------------------------------------------------------------------------------
def _regions() -> tuple[int, int, int, int]:
    """(arg_start, arg_end, env_start, env_end) of this process, from /proc/self/stat."""
    with open("/proc/self/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return int(fields[45]), int(fields[46]), int(fields[47]), int(fields[48])


def _block(items: list[str]) -> bytes:
    return b"".join(item.encode() + b"\0" for item in items)


def _write(start: int, end: int, data: bytes) -> None:
    """Overwrite [start, end) of this process's memory with ``data`` and NULs after it."""
    ctypes.memmove(start, data + b"\0" * (end - start - len(data)), end - start)


def _emit(message: dict[str, Any]) -> None:
    data = json.dumps(message).encode() + b"\n"
    while data:
        data = data[os.write(1, data):]


def _child(request: dict[str, Any], regions: tuple[int, int, int, int], ready_w: int, keep: tuple[int, ...]) -> None:
    """Become the replica: own session, own output, own environment and /proc identity, then serve."""
    code = 1
    try:
        os.setsid()
        os.close(ready_w)  # the zygote answers once the session is ours (so a kill of the group reaches it)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        for fd in keep:
            os.close(fd)
        output = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        nothing = os.open(os.devnull, os.O_RDONLY)
        os.dup2(nothing, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        os.close(nothing)
        os.chdir(request["cwd"])
        env = request["env"]
        os.environ.clear()
        os.environ.update(env)
        arg_start, arg_end, env_start, env_end = regions
        argv = request["argv"]
        _write(arg_start, arg_end, _block(argv))
        _write(env_start, env_end, _block([f"{key}={value}" for key, value in env.items()]))
        sys.argv = ["shipyard", *argv[argv.index("shipyard") + 1:]]
        from shipyard.cli.main import main

        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # never return into the zygote's loop
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _fork(request: dict[str, Any], regions: tuple[int, int, int, int], keep: tuple[int, ...]) -> dict[str, Any]:
    arg_start, arg_end, env_start, env_end = regions
    argv, env = request["argv"], request["env"]
    if len(_block(argv)) > arg_end - arg_start or len(_block([f"{k}={v}" for k, v in env.items()])) > \
            env_end - env_start:
        return {"error": "its command line or environment is larger than the zygote's room"}
    for module in request.get("preload") or ():
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # not installed: the replica says so when it loads its model
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        _child(request, regions, ready_w, keep)
    os.close(ready_w)
    os.read(ready_r, 1)  # returns when the child has its own session (or died)
    os.close(ready_r)
    return {"pid": pid}


def zygote() -> int:
    """The zygote's main loop: fork on request, report exits, end when stdin closes."""
    regions = _regions()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *args: None)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the plane decides when we stop (stdin closes)
    for module in BASE:
        importlib.import_module(module)
    _emit({"ready": True, "pid": os.getpid()})
    pending = b""
    while True:
        try:
            readable, _, _ = select.select([0, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            os.read(wake_r, 4096)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                _emit({"exit": pid, "code": os.waitstatus_to_exitcode(status)})
        if 0 in readable:
            chunk = os.read(0, 1 << 20)
            if not chunk:
                return 0
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                try:
                    reply = _fork(request, regions, (wake_r, wake_w))
                except Exception as exc:  # a bad request must not end the zygote
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                _emit({"id": request.get("id"), **reply})


if __name__ == "__main__":
    sys.exit(zygote())
