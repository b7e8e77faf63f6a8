"""The worker process of an isolated model: ``<env python> -m shipyard.runtimes.isolated_worker``.

It runs in the model's own virtual environment, where only Shipyard's runtime code is importable
(``shipyard.runtimes`` and ``shipyard.protocol.datatypes`` / ``errors``: numpy and the standard
library), never the server's libraries. It reads requests from stdin and answers on stdout in the
framing of :mod:`shipyard.runtimes.tensor_pipe`, one at a time:

- ``{"op": "load", "source": {name, format, path, version, options}}`` loads the model with its
  ordinary runtime and answers with its signature and platform;
- ``{"op": "predict", "outputs": [...], "parameters": {...}}`` plus the input tensors answers with
  the output tensors.

A failure answers ``{"ok": false, "status": <HTTP status>, "error": message}`` so 400s stay 400s
across the hop. At end of input it unloads the model and exits. Anything the model prints goes
to stderr (the server logs it): the replies use a private copy of the real stdout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import IO, Any

from shipyard.protocol.errors import InferenceError, ModelFailed
from shipyard.runtimes import tensor_pipe
from shipyard.runtimes.base import Model, ModelSource, TensorSpec, Tensors

log = logging.getLogger("shipyard.runtimes.isolated_worker")


def _private_pipes() -> tuple[IO[bytes], IO[bytes]]:
    """Keep the real stdin/stdout for the protocol; point fds 0 and 1 at /dev/null and stderr so a
    library that reads input or prints cannot corrupt it."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return requests, replies


def _specs(specs: list[TensorSpec]) -> list[dict[str, Any]]:
    return [spec.to_dict() for spec in specs]


def _failure(exc: BaseException, model: str) -> dict[str, Any]:
    if not isinstance(exc, InferenceError):
        exc = ModelFailed.from_exception(model, exc)
    return {"ok": False, "status": exc.status, "error": exc.message}


class Worker:
    """Holds the one model this process serves and answers requests for it."""

    def __init__(self) -> None:
        self.model: Model | None = None
        self.loop = asyncio.new_event_loop()

    def load(self, header: dict[str, Any]) -> dict[str, Any]:
        from shipyard.runtimes.registry import create_model

        raw = header["source"]
        source = ModelSource(raw["name"], raw["format"], Path(raw["path"]), raw["version"], dict(raw["options"]))
        try:
            model = create_model(source)
            model.load()
        except Exception as exc:
            traceback.print_exc()  # the whole story goes to the server's log; the reply says the last line
            return {"ok": False, "status": 500, "error": f"{type(exc).__name__}: {exc}"}
        self.model = model
        return {
            "ok": True,
            "inputs": _specs(model.inputs),
            "outputs": _specs(model.outputs),
            "default_outputs": list(model.default_outputs),
            "platform": model.platform,
            "python": sys.version.split()[0],
        }

    def predict(self, header: dict[str, Any], tensors: Tensors) -> tuple[dict[str, Any], Tensors]:
        model = self.model
        if model is None:
            return {"ok": False, "status": 503, "error": "no model is loaded in this worker"}, {}
        parameters = header.get("parameters") or {}
        try:
            checked = model.check(tensors)
            outputs = model.select_outputs(header.get("outputs") or None, parameters)
            result = self.loop.run_until_complete(model.run(checked, outputs, parameters))
        except Exception as exc:
            return _failure(exc, model.name), {}
        return {"ok": True}, result

    def answer(self, header: dict[str, Any], tensors: Tensors) -> list[tensor_pipe.Buffer]:
        """The encoded reply to one request (an unknown op or unsendable outputs answer an error)."""
        op = header.get("op")
        if op == "load":
            return tensor_pipe.encode(self.load(header))
        if op == "predict":
            reply, outputs = self.predict(header, tensors)
            try:
                return tensor_pipe.encode(reply, outputs)
            except ValueError as exc:
                name = self.model.name if self.model else "?"
                return tensor_pipe.encode({"ok": False, "status": 500, "error": f"model '{name}' returned {exc}"})
        return tensor_pipe.encode({"ok": False, "status": 400, "error": f"unknown request op {op!r}"})

    def close(self) -> None:
        if self.model is not None:
            self.model.unload()
        self.loop.close()


def serve(requests: IO[bytes], replies: IO[bytes]) -> int:
    """Answer requests until the input ends; 0 then, 2 when the input is not our framing."""
    worker = Worker()
    try:
        while True:
            try:
                header, tensors = tensor_pipe.read(requests)
            except tensor_pipe.PipeClosed:
                return 0
            except tensor_pipe.FramingError as exc:
                print(f"isolated worker: unreadable request ({exc}); exiting", file=sys.stderr, flush=True)
                return 2
            tensor_pipe.send(replies, worker.answer(header, tensors))
    finally:
        worker.close()


def main() -> None:
    requests, replies = _private_pipes()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = serve(requests, replies)
    except BrokenPipeError:  # the server went away mid-reply
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
