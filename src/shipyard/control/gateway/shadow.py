"""Shadow traffic: copies of live requests sent to another revision, whose answers are compared
with the live ones and recorded, never returned.

The live path only puts a job on a bounded queue (or counts a drop when it is full); a few
worker tasks send the copies, wait for the live answer and compare. So a slow or broken shadow
revision can neither delay nor change what clients get.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import msgspec
import numpy as np

from shipyard.control.gateway.observe import percentile
from shipyard.protocol.binary import tensor_from_bytes

log = logging.getLogger("shipyard.gateway")

#: Jobs waiting for a worker; more are dropped (and counted).
QUEUE_SIZE = 256
#: Copies in flight at once, across all services.
WORKERS = 4
#: Mismatches kept per service for the report.
KEEP_MISMATCHES = 10
#: Latencies kept per service for the report's percentiles.
KEEP_LATENCIES = 1000
#: Numbers match when ``|a - b| <= ATOL + RTOL * |b|`` (numpy's isclose).
RTOL, ATOL = 1e-5, 1e-8
#: Bytes of each body kept in a recorded mismatch.
BODY_EXCERPT = 512

Key = tuple[str, str]


@dataclass
class Answer:
    """What one revision answered: an HTTP status (or a gRPC status code's number) and body.

    ``failure`` says why there is no answer at all (the replica could not be reached, timed out);
    ``server_error``: the revision is to blame (no answer, HTTP 5xx, gRPC INTERNAL...).
    """

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    latency_ms: float = 0.0
    failure: str | None = None
    server_error: bool = False


@dataclass
class ShadowJob:
    """One mirrored request: how to send the copy, and where the live answer will appear."""

    key: Key
    revision: str
    protocol: str  # "rest" or "grpc"
    path: str
    send: Callable[[], Awaitable[Answer]]
    live: "asyncio.Future[Answer]"


@dataclass
class _Record:
    revision: str
    mirrored: int = 0
    matched: int = 0
    mismatched: int = 0
    shadow_errors: int = 0
    dropped: int = 0
    skipped: int = 0
    live_ms: deque = field(default_factory=lambda: deque(maxlen=KEEP_LATENCIES))
    shadow_ms: deque = field(default_factory=lambda: deque(maxlen=KEEP_LATENCIES))
    mismatches: deque = field(default_factory=lambda: deque(maxlen=KEEP_MISMATCHES))


class Mirror:
    """The queue of shadow jobs, its workers, and what they found per InferenceService."""

    def __init__(self, workers: int = WORKERS, queue_size: int = QUEUE_SIZE) -> None:
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(queue_size)
        self.workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._records: dict[Key, _Record] = {}
        self._busy = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _record(self, key: Key, revision: str) -> _Record:
        record = self._records.get(key)
        if record is None or record.revision != revision:  # a new shadow revision starts a new record
            record = self._records[key] = _Record(revision)
        return record

    def submit(self, job: ShadowJob) -> bool:
        """Queue a copy; False (and a counted drop) when the queue is full."""
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self._record(job.key, job.revision).dropped += 1
            return False
        return True

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            self._busy += 1
            try:
                await self._run(job)
            except Exception:  # a comparison bug must not stop the worker
                log.exception("shadow job for %s failed", job.path)
            finally:
                self._busy -= 1

    async def _run(self, job: ShadowJob) -> None:
        shadow = await job.send()
        await asyncio.wait((job.live,))  # the live path resolves it, error or not
        live = job.live.result() if not job.live.cancelled() else Answer(0, failure="live request cancelled")
        record = self._record(job.key, job.revision)
        if live.failure is not None:  # nothing to compare against
            record.skipped += 1
            return
        record.mirrored += 1
        record.live_ms.append(live.latency_ms)
        if shadow.server_error and not live.server_error:
            record.shadow_errors += 1
            record.mismatches.append(_mismatch(job, live, shadow, shadow.failure or f"shadow answered {shadow.status}"))
            return
        record.shadow_ms.append(shadow.latency_ms)
        compare = compare_grpc if job.protocol == "grpc" else compare_rest
        difference = compare(live, shadow)
        if difference is None:
            record.matched += 1
        else:
            record.mismatched += 1
            record.mismatches.append(_mismatch(job, live, shadow, difference))

    def pending(self) -> int:
        """Jobs queued or being worked on."""
        return self.queue.qsize() + self._busy

    def report(self, namespace: str, isvc: str) -> dict[str, Any] | None:
        """Counts, latencies and the last mismatches of a service's shadow; None if it never had one.

        ``mirrored`` copies were answered or failed while the live request was answered;
        each is ``matched``, ``mismatched`` or a ``shadow_errors`` (the shadow failed or answered
        5xx where live did not). ``dropped``: the queue was full. ``skipped``: the live request
        itself got no answer, so there was nothing to compare.
        """
        record = self._records.get((namespace, isvc))
        if record is None:
            return None
        return {
            "namespace": namespace,
            "isvc": isvc,
            "revision": record.revision,
            "mirrored": record.mirrored,
            "matched": record.matched,
            "mismatched": record.mismatched,
            "shadow_errors": record.shadow_errors,
            "dropped": record.dropped,
            "skipped": record.skipped,
            "pending": self.pending(),
            "live_ms": _latencies(record.live_ms),
            "shadow_ms": _latencies(record.shadow_ms),
            "last_mismatches": list(record.mismatches),
        }


def _latencies(values: deque) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"p50": round(percentile(ordered, 0.5), 3), "p99": round(percentile(ordered, 0.99), 3),
            "mean": round(sum(ordered) / len(ordered), 3)}


def _excerpt(body: bytes) -> str:
    text = body[:BODY_EXCERPT].decode("utf-8", errors="replace")
    return text + ("..." if len(body) > BODY_EXCERPT else "")


def _mismatch(job: ShadowJob, live: Answer, shadow: Answer, difference: str) -> dict[str, Any]:
    return {
        "time": time.time(),
        "path": job.path,
        "difference": difference,
        "live_status": live.status,
        "shadow_status": shadow.status,
        "live_body": "" if job.protocol == "grpc" else _excerpt(_plain_body(live)),
        "shadow_body": "" if job.protocol == "grpc" else _excerpt(_plain_body(shadow)),
    }


# -- comparing answers ---------------------------------------------------------------------------
def _plain_body(answer: Answer) -> bytes:
    """The body without its Content-Encoding (gzip/deflate)."""
    encoding = answer.headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "deflate"):
        try:
            return zlib.decompress(answer.body, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        except zlib.error:
            return answer.body
    return answer.body


def compare_rest(live: Answer, shadow: Answer) -> str | None:
    """None when the answers agree, else what differs first. Error answers agree on their status;
    V2 answers on their outputs (names, datatypes, shapes, values within tolerance), V1 on
    ``predictions``; anything else must be equal JSON (numbers within tolerance) or equal bytes."""
    if live.status != shadow.status:
        return f"status {live.status} (live) vs {shadow.status} (shadow)"
    if live.status >= 400:
        return None
    try:
        live_doc, shadow_doc = _rest_document(live), _rest_document(shadow)
    except (ValueError, msgspec.DecodeError) as exc:
        return None if _plain_body(live) == _plain_body(shadow) else f"bodies differ and do not decode: {exc}"
    if live_doc is None or shadow_doc is None:
        return None if _plain_body(live) == _plain_body(shadow) else "bodies differ"
    for part in ("outputs", "predictions"):
        if part in live_doc or part in shadow_doc:
            return _difference(live_doc.get(part), shadow_doc.get(part), part)
    return _difference(live_doc, shadow_doc, "body")


def _rest_document(answer: Answer) -> dict[str, Any] | None:
    """A JSON answer as a dict, V2 outputs normalised to {name: (datatype, shape, flat values)}
    whether they came as JSON or binary; None for a body that is not a JSON object."""
    body = _plain_body(answer)
    header_length = answer.headers.get("inference-header-content-length")
    header = body[: int(header_length)] if header_length else body
    if not header_length and "json" not in answer.headers.get("content-type", "application/json"):
        return None
    document = msgspec.json.decode(header)
    if not isinstance(document, dict):
        return {"body": document}
    if isinstance(document.get("outputs"), list):
        offset = int(header_length) if header_length else 0
        outputs = {}
        for output in document["outputs"]:
            name, datatype, shape = output.get("name"), output.get("datatype"), output.get("shape")
            size = (output.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                values = tensor_from_bytes(name, datatype, shape, body[offset: offset + size]).ravel().tolist()
                offset += size
            else:
                values = np.asarray(output.get("data"), dtype=object).ravel().tolist()
            outputs[name] = {"datatype": datatype, "shape": shape, "data": values}
        document["outputs"] = outputs
    return document


def compare_grpc(live: Answer, shadow: Answer) -> str | None:
    """gRPC answers agree on their status code and, when OK, on their outputs."""
    if live.status != shadow.status:
        return f"gRPC status {live.status} (live) vs {shadow.status} (shadow)"
    if live.status != 0 or live.body == shadow.body:
        return None
    return _difference(_grpc_outputs(live.body), _grpc_outputs(shadow.body), "outputs")


def _grpc_outputs(body: bytes) -> dict[str, Any]:
    from shipyard.protocol.grpc_codec import CONTENTS_FIELD  # imports the protobuf stubs: only when needed
    from shipyard.protocol.proto import inference_pb2 as pb

    response = pb.ModelInferResponse.FromString(body)
    outputs = {}
    for index, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        if response.raw_output_contents:
            array = tensor_from_bytes(tensor.name, tensor.datatype, shape, response.raw_output_contents[index])
            values = array.ravel().tolist()
        else:
            values = list(getattr(tensor.contents, CONTENTS_FIELD.get(tensor.datatype, "bytes_contents")))
        outputs[tensor.name] = {"datatype": tensor.datatype, "shape": shape, "data": values}
    return outputs


def _difference(live: Any, shadow: Any, where: str) -> str | None:
    """The first place two JSON-like values differ (numbers compared with tolerance), or None."""
    if isinstance(live, dict) and isinstance(shadow, dict):
        if set(live) != set(shadow):
            return f"{where}: keys {sorted(live)} (live) vs {sorted(shadow)} (shadow)"
        for key in live:
            found = _difference(live[key], shadow[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(live, list) and isinstance(shadow, list):
        if len(live) != len(shadow):
            return f"{where}: {len(live)} items (live) vs {len(shadow)} (shadow)"
        for index, (a, b) in enumerate(zip(live, shadow)):
            found = _difference(a, b, f"{where}[{index}]")
            if found:
                return found
        return None
    if _is_number(live) and _is_number(shadow):
        if math.isnan(live) and math.isnan(shadow):
            return None
        if abs(live - shadow) <= ATOL + RTOL * abs(shadow):
            return None
        return f"{where}: {live!r} (live) vs {shadow!r} (shadow)"
    if live != shadow:
        return f"{where}: {_short(live)} (live) vs {_short(shadow)} (shadow)"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
