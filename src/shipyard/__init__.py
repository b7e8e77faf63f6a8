"""Shipyard: take a model to production on one machine."""

__version__ = "0.1.0"

# ``shipyard.package(obj, DIR, sample_input=...)`` is callable (the subpackage forwards calls);
# importing it loads nothing heavy.
from shipyard import package  # noqa: E402,F401
