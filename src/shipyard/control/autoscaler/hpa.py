"""The HPA-style replica count for cpu and memory (Kubernetes' horizontal pod autoscaler algorithm).

``desired = ceil(ready * utilisation / target)``, unless the ratio is within the 10% tolerance, in
which case the replica count stays. cpu and memory never scale to zero (at least one replica).
"""

from __future__ import annotations

import math

#: Kubernetes' --horizontal-pod-autoscaler-tolerance default.
TOLERANCE = 0.1


def ceil(value: float) -> int:
    """``math.ceil`` that ignores float noise (70.00000000000001 in 0.7 * 100 must not add a replica)."""
    return math.ceil(round(value, 9))


def hpa_replicas(ready: int, usage_per_replica: float, target_per_replica: float,
                 tolerance: float = TOLERANCE) -> tuple[int, float]:
    """(desired replicas, usage ratio) for ``ready`` replicas using ``usage_per_replica`` against the target."""
    if target_per_replica <= 0:
        raise ValueError("the target must be greater than 0")
    ratio = usage_per_replica / target_per_replica
    if ready <= 0:
        return max(1, ceil(ratio)), ratio
    if abs(ratio - 1.0) <= tolerance:
        return ready, ratio
    return max(1, ceil(ready * ratio)), ratio
