"""The block cache: its SQLite index, the block store (tiers, atomic writes, single-flight) and policies."""

from shipyard.data.cache.blocks import BlockRef, BlockStore, Tier, block_key
from shipyard.data.cache.index import BlockRow, FileRow, Index
from shipyard.data.cache.policy import Policy, make_policy

__all__ = ["BlockRef", "BlockRow", "BlockStore", "FileRow", "Index", "Policy", "Tier", "block_key", "make_policy"]
