"""Errors that cross the wire. Each carries the HTTP status it maps to."""

from __future__ import annotations


class InferenceError(Exception):
    """Base class: a failure a client should see as ``{"error": message}``."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @staticmethod
    def with_status(status: int, message: str) -> "InferenceError":
        """The error class for an HTTP status (a sibling's answer passed on)."""
        for cls in (InvalidInput, NotFound, MethodNotAllowed, PayloadTooLarge, NotReady):
            if cls.status == status:
                return cls(message)
        return ModelFailed(message)


class InvalidInput(InferenceError):
    """The request is malformed or does not fit the model (HTTP 400)."""

    status = 400


class NotFound(InferenceError):
    """Unknown model, version or route (HTTP 404)."""

    status = 404


class MethodNotAllowed(InferenceError):
    """The route exists but not for this HTTP method (HTTP 405)."""

    status = 405


class PayloadTooLarge(InferenceError):
    """The request body is over the server's limit (HTTP 413)."""

    status = 413


class NotReady(InferenceError):
    """The model or server is not ready to serve (HTTP 503)."""

    status = 503


class Overloaded(NotReady):
    """The model's queue is full (HTTP 503 with Retry-After)."""

    retry_after_seconds = 1


class ModelFailed(InferenceError):
    """The model's own code raised (HTTP 500)."""

    status = 500

    @classmethod
    def from_exception(cls, model: str, exc: BaseException) -> "ModelFailed":
        return cls(f"model '{model}' raised {type(exc).__name__}: {exc}")
