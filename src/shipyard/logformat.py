"""How Shipyard's processes log: plain text (the default) or one JSON object per line.

``--log-format json`` (``shipyard serve``, ``shipyard up``) or ``SHIPYARD_LOG_FORMAT=json`` (which
the control plane's replicas inherit) turn JSON on. Each line then has ``time`` (ISO 8601, UTC),
``level``, ``logger``, ``message``, ``pid``, and when they apply ``request_id`` (the
``x-request-id`` of the request being served, generated when the client sent none),
``trace_id`` / ``span_id`` (while tracing), ``exc_info`` (the traceback as text) and any
``extra=`` fields of the record. The announcements a server prints (listening, ready, stopped)
become JSON lines too.

Hot paths test the module attribute ``logformat.ACTIVE`` (JSON logs on) before doing anything.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any, Mapping, TextIO

from shipyard import tracing

ENV = "SHIPYARD_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_ID_HEADER = "x-request-id"

#: True while logs are JSON lines. Read as ``logformat.ACTIVE``.
ACTIVE: bool = False

#: The id of the request being served in this context (set per request while JSON logs are on).
REQUEST_ID: ContextVar[str | None] = ContextVar("shipyard_request_id", default=None)

#: LogRecord attributes that are not ``extra=`` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def resolve(option: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The log format: the option when given, else ``$SHIPYARD_LOG_FORMAT``, else text. Raises
    ValueError naming the option or the variable when the value is neither text nor json."""
    if option is not None:
        value, where = option, "--log-format"
    else:
        value, where = (os.environ if environ is None else environ).get(ENV, ""), ENV
        if not value.strip():
            return "text"
    value = value.strip().lower()
    if value not in FORMATS:
        raise ValueError(f"{where} must be text or json, got '{value}'")
    return value


def iso_time(seconds: float) -> str:
    """``2025-01-31T12:00:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        ids = tracing.current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup(level: int, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger (replacing its handlers) for ``fmt`` at ``level``; with json,
    Python warnings are logged too (so they are JSON lines)."""
    global ACTIVE
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    ACTIVE = fmt == "json"
    logging.captureWarnings(ACTIVE)


def json_line(message: str, level: str = "INFO", logger: str = "shipyard") -> str:
    """``message`` as one JSON log line (newline included), stamped now."""
    entry: dict[str, Any] = {"time": iso_time(time.time()), "level": level, "logger": logger,
                             "message": message, "pid": os.getpid()}
    return json.dumps(entry, ensure_ascii=False) + "\n"


def emit(message: str, level: str = "INFO", logger: str = "shipyard", stream: TextIO | None = None) -> None:
    """Print an announcement as one JSON line whatever the log level (a server's "listening on",
    "Ready", "Stopped"); callers print plain text themselves when JSON is off."""
    target = stream if stream is not None else sys.stdout
    target.write(json_line(message, level, logger))
    target.flush()


def new_request_id() -> str:
    return str(uuid.uuid4())


def bind_request(headers: dict[str, str]) -> str:
    """Bind the request's ``x-request-id`` to this context (its log lines carry it); when the
    request has none, a new id is generated and added to ``headers`` (so it is forwarded and
    echoed). Returns the id."""
    request_id = headers.get(REQUEST_ID_HEADER)
    if not request_id:
        request_id = headers[REQUEST_ID_HEADER] = new_request_id()
    REQUEST_ID.set(request_id)
    return request_id
