"""The exceptions of a batch run; each names the BatchSpec field it is about."""

from __future__ import annotations


class BatchError(ValueError):
    """A problem with the spec, its input or its model that stops the run: ``field`` names the BatchSpec attribute."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # crosses from worker processes intact
        return (type(self), (self.field, self.message))


class RowFailure(Exception):
    """Predicting some rows failed because of those rows (bad values, the model raised): isolate them."""


class EndpointUnavailable(Exception):
    """The endpoint could not be reached (after retries) or does not serve the model: the run fails."""


def missing_dependency(what: str) -> BatchError:
    return BatchError("input", f"reading and writing files needs {what}; install it with: pip install 'shipyard[data]'")
