"""Autoscaling of InferenceService revisions: Knative's KPA (concurrency, rps) and an HPA-style decision
(cpu, memory), configured by KServe's predictor fields and Knative's annotations (docs/deployments.md).
"""

from shipyard.control.autoscaler.config import (KNATIVE_ANNOTATIONS, SHIPYARD_ANNOTATIONS, AutoscaleConfig,
                                                AutoscaleError, autoscale_config, config_problems, parse_duration)
from shipyard.control.autoscaler.kpa import Autoscaler, Decision
from shipyard.control.autoscaler.metrics import ConcurrencyMeter, ProcessUsage

__all__ = [
    "KNATIVE_ANNOTATIONS", "SHIPYARD_ANNOTATIONS", "AutoscaleConfig", "AutoscaleError", "Autoscaler",
    "ConcurrencyMeter", "Decision", "ProcessUsage", "autoscale_config", "config_problems", "parse_duration",
]
