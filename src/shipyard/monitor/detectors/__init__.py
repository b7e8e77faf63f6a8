"""Detectors of logged traffic: drift, outliers, bias, and the plug-in interface (``base.py``)."""

from shipyard.monitor.detectors.base import (
    BUILTINS,
    BadBatch,
    Detector,
    FeedbackUnsupported,
    Score,
    detector_class,
    load_detector,
)

__all__ = ["BUILTINS", "BadBatch", "Detector", "FeedbackUnsupported", "Score", "detector_class", "load_detector"]
