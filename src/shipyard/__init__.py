"""Shipyard: take a model to production on one machine."""

__version__ = "0.1.0"

# ``shipyard.package(obj, DIR, sample_input=...)`` is callable (the subpackage forwards calls);
# importing it loads nothing heavy.
from shipyard import package  # noqa: E402,F401


def __getattr__(name: str) -> object:
    """``shipyard.Client``: the control plane's SDK, imported on first use."""
    if name == "Client":
        from shipyard.control.client import ControlClient

        return ControlClient
    raise AttributeError(f"module 'shipyard' has no attribute '{name}'")
