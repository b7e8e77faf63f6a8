"""Admission and eviction policies.

Both evict the least recently used block. They differ in admission, when the cache is full:

- ``lru`` always admits, so a loop over data bigger than the cache evicts every block just before it
  is read again (hit ratio ≈ 0 from the second pass on: Alluxio #10322).
- ``scan-resistant`` (TinyLFU-style) admits a new block only if it was asked for more often than the
  block it would displace. Frequencies of blocks not cached live in the index's ghost table, and all
  frequencies are halved every ``aging_factor`` × capacity accesses so old popularity fades.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    """An admission rule on top of LRU eviction."""

    name: str
    aging_factor: int = 10

    def admit(self, candidate_frequency: int, victim_frequency: int | None) -> bool:
        """Whether a new block displaces the victim (None: nothing to displace)."""
        if self.name == "lru" or victim_frequency is None:
            return True
        return candidate_frequency > victim_frequency

    def aging_sample(self, capacity_blocks: int) -> int:
        """Accesses between halvings of every frequency."""
        return max(1000, self.aging_factor * capacity_blocks)


POLICIES = ("scan-resistant", "lru")


def make_policy(name: str) -> Policy:
    """The policy named in the cache config ("lru" or "scan-resistant")."""
    if name not in POLICIES:
        raise ValueError(f"eviction: expected one of {', '.join(POLICIES)}, got {name!r}")
    return Policy(name=name)
