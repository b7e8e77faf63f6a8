"""Model runtimes: one module per model format, each a :class:`~shipyard.runtimes.base.Model`.

Runtimes know nothing about HTTP; they take and return numpy arrays keyed by tensor name.
"""

from shipyard.runtimes.base import Model, ModelSource, TensorSpec
from shipyard.runtimes.registry import FormatError, create_model, sniff_format

__all__ = ["FormatError", "Model", "ModelSource", "TensorSpec", "create_model", "sniff_format"]
