"""CloudEvents in binary mode, as KServe's logger agent sends them (``pkg/logger``).

An inference request and its response become two events sharing one ``ce-id``:

- ``ce-specversion: 1.0``
- ``ce-type: org.kubeflow.serving.inference.request`` or ``org.kubeflow.serving.inference.response``
- ``ce-id``: the request's ``ce-id`` header if it has one (as KServe's agent), else its
  ``x-request-id``, else a new UUID
- ``ce-source``: ``shipyard://{namespace}/{isvc}/{component}`` (KServe's agent puts the component's
  URL there; Shipyard names the component itself, since every component sits behind one gateway)
- ``ce-time``: RFC 3339, UTC, microseconds
- extensions ``ce-inferenceservicename``, ``ce-namespace``, ``ce-component`` (``predictor``),
  ``ce-endpoint`` (the revision that answered)
- Shipyard's addition on response events: ``ce-statuscode``, the HTTP status (REST) or the gRPC
  status code's number (gRPC; 0 is OK), since Shipyard can log failed responses too
- ``Content-Type``: the payload's own; the body is the raw payload bytes (a gzip- or
  deflate-encoded body is decompressed by the sender thread first, so receivers get the payload
  itself; another encoding is sent as is with its ``Content-Encoding``).

An ``Event`` is what the spool stores (``encode``/``decode``) and a sink sends.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

SPEC_VERSION = "1.0"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
DEFAULT_COMPONENT = "predictor"
GRPC_CONTENT_TYPE = "application/grpc+proto"


@dataclass(frozen=True)
class Event:
    """One CloudEvent: its ``ce-*`` headers plus ``content-type``, and the raw body."""

    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers.get("ce-id", "")

    @property
    def type(self) -> str:
        return self.headers.get("ce-type", "")

    def encode(self) -> bytes:
        """Bytes for the spool: u32 length of the headers' JSON, the JSON, then the body."""
        head = json.dumps(self.headers, separators=(",", ":")).encode()
        return struct.pack(">I", len(head)) + head + self.body

    @classmethod
    def decode(cls, data: bytes) -> "Event":
        (size,) = struct.unpack_from(">I", data, 0)
        return cls(json.loads(data[4:4 + size]), bytes(data[4 + size:]))

    def structured(self) -> dict[str, Any]:
        """The event in CloudEvents' structured JSON format (the JSONL sink's lines): attributes
        without their ``ce-`` prefix, ``datacontenttype``, and ``data`` (a JSON payload, parsed) or
        ``data_base64`` (anything else)."""
        out: dict[str, Any] = {name[3:]: value for name, value in self.headers.items() if name.startswith("ce-")}
        content_type = self.headers.get("content-type", "")
        out["datacontenttype"] = content_type
        if "json" in content_type:
            try:
                out["data"] = json.loads(self.body)
                return out
            except ValueError:
                pass
        out["data_base64"] = base64.b64encode(self.body).decode()
        return out


def event_id(headers: Mapping[str, str] | None = None) -> str:
    """The id a request's events share: its ``ce-id``, else its ``x-request-id``, else a new UUID."""
    headers = headers or {}
    return headers.get("ce-id") or headers.get("x-request-id") or str(uuid.uuid4())


def rfc3339(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def source(namespace: str, isvc: str, component: str = DEFAULT_COMPONENT) -> str:
    return f"shipyard://{namespace}/{isvc}/{component}"


def make_event(kind: str, id: str, body: bytes, content_type: str, *, namespace: str, isvc: str,
               endpoint: str, component: str = DEFAULT_COMPONENT, status: int | None = None,
               time: datetime | None = None, content_encoding: str | None = None) -> Event:
    """A request (``kind="request"``) or response (``kind="response"``) event."""
    headers = {
        "ce-specversion": SPEC_VERSION,
        "ce-type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "ce-id": id,
        "ce-source": source(namespace, isvc, component),
        "ce-time": rfc3339(time),
        "ce-inferenceservicename": isvc,
        "ce-namespace": namespace,
        "ce-component": component,
        "ce-endpoint": endpoint,
        "content-type": content_type or "application/octet-stream",
    }
    if status is not None:
        headers["ce-statuscode"] = str(status)
    if content_encoding and content_encoding.strip().lower() != "identity":
        headers["content-encoding"] = content_encoding
    return Event(headers, body)


def decoded(event: Event) -> Event:
    """The event with a gzip/deflate body decompressed (the sender does it, off the hot path); a
    body that does not decompress, or another encoding, keeps its ``content-encoding`` header."""
    encoding = event.headers.get("content-encoding", "").strip().lower()
    if not encoding:
        return event
    try:
        if encoding in ("gzip", "x-gzip"):
            body = gzip.decompress(event.body)
        elif encoding == "deflate":
            try:
                body = zlib.decompress(event.body)
            except zlib.error:
                body = zlib.decompress(event.body, -zlib.MAX_WBITS)
        else:
            return event
    except (OSError, EOFError, zlib.error):
        return event
    return Event({k: v for k, v in event.headers.items() if k != "content-encoding"}, body)
