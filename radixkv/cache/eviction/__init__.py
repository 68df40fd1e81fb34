"""Eviction: which unlocked leaves each tier gives up first.

index.py    per tier, the evictable leaves in policy order (O(log n) per change, no scans)
evictor.py  the indexes kept up to date as nodes change, and eviction / demotion itself
policy.py   the policy interface and the classic policies (LRU, LFU, SLRU)
adaptive.py the default: ARC's recency/frequency split guarded by a duel with LRU (duel.py)
workload.py LRU weighted by reuse, recompute cost and size
by_name.py  a policy by its name
"""
