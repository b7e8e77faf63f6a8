"""Shipyard: take a model to production on one machine."""

__version__ = "0.1.0"
