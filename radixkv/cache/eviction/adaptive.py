"""The default eviction policy: ARC's recency/frequency split on the tree's nodes, guarded by a
duel with plain LRU.

Three queues, LRU inside each:

    queue 0 (recent, likely dead)  nodes no request has reused yet that the workload rule
                                   (`radixkv.cache.eviction.workload`) calls likely dead: abandoned
                                   tails (a later request split them and went elsewhere) and
                                   small leaves
    queue 1 (recent)               the other nodes no request has reused yet
    queue 2 (frequent)             nodes reused at least once, or re-inserted while remembered
                                   as evicted

Evictions take from the recent queues (the older of their two heads, a likely-dead one counted
older by the tier's eviction age: the `workload` rule) while they hold more than their target
share `p` of the tier, else from the frequent one. Only leaves are evictable, so the queues'
sizes are evictable tokens: the target is compared as a share of those (a prompt cached in the
engine's prefill chunks is a chain whose evictable part is its last chunk, so evictable tokens
are far fewer than the tier's). The target adapts from ghosts: signatures of recently evicted
nodes, up to two tiers' worth of tokens per queue.
A node re-inserted (recomputed) while its signature is a ghost of the recent queues says they
were too small: p grows; a ghost of the frequent queue says the opposite: p shrinks. Each step
is the node's size, scaled by the ratio of the two ghost lists as in ARC.

On the Mooncake traces most blocks are never read again and reuse gaps are longer than an LRU
tier keeps a block at small capacities, so protecting what was reused and letting one-time
blocks go first is where the hit rate comes from; at capacities where LRU already keeps most
reuse the split loses, so the tier follows LRU whenever an LRU shadow cache out-hits an ARC one
(`radixkv.cache.eviction.duel`): then the oldest head of the three queues goes, a likely-dead one
counted older by the tier's eviction age (the `workload` rule, which beat LRU where the duel
picks it). docs/benchmarks.md has the measurements.

A node's signature is (where it starts in the sequence, its first tokens): stable across
evictions and re-insertions of the same prefix, and recomputed after a split moves its start.
"""

from __future__ import annotations

from collections import OrderedDict

from radixkv.cache.eviction.duel import PolicyDuel
from radixkv.cache.eviction.policy import EvictionPolicy
from radixkv.cache.eviction.workload import WorkloadAwarePolicy
from radixkv.cache.tree import TreeNode

SIGNATURE_TOKENS = 16
PROMOTED_MIN = 4096  # signatures remembered as promoted, at least
# LRU mode applies the workload rule only while LRU's shadow hits at least this much more than
# ARC's (always on, synthetic 5%: 15.38% against 15.57%; from 1% on: 15.57%, conversation 20%:
# 35.61%)
WORKLOAD_LEAD = 1.01


def signature(node: TreeNode) -> tuple:
    """(start position, first tokens) of a node, cached on it (until a split moves its start)."""
    start = node.depth - len(node.key)
    tag = node.policy_tag
    if tag is None or tag[0] != start:
        tag = node.policy_tag = (start, hash(node.key[:SIGNATURE_TOKENS]))
    return tag


def _oldest(queues: tuple[int, ...], sizes: list[int], heads: list, demoted: float = 0.0) -> int:
    """The non-empty queue among `queues` with the oldest head, queue 0's (likely-dead leaves)
    counted `demoted` older; on a tie the first."""
    return min((q for q in queues if sizes[q]), key=lambda q: heads[q] - demoted * (q == 0))


class AdaptivePolicy(EvictionPolicy):
    name = "adaptive"
    queues = 3

    def __init__(
        self,
        dueling: bool = True,
        ghost_factor: float = 2.0,
        **duel_options: object,
    ) -> None:
        """`dueling`: follow plain LRU whenever its shadow cache beats ARC's (`PolicyDuel`,
        given `duel_options`); `ghost_factor`: ghosts kept per queue, in tiers' worth of tokens."""
        self.dueling, self.duel_options = dueling, duel_options
        self.ghost_factor = ghost_factor
        self.duel: PolicyDuel | None = None  # made by configure(), once the tier's size is known
        self.workload = WorkloadAwarePolicy()  # the dead-tail rule and the eviction age
        self.p = 0.0  # target tokens of the recent queues, of the tier's `capacity`
        self.capacity = 0  # the tier's tokens (`configure`)
        self.ghosts: tuple[OrderedDict, OrderedDict] = (OrderedDict(), OrderedDict())
        self.ghost_tokens = [0, 0]
        # signatures re-inserted while ghosts, oldest first; capped, because a node may leave the
        # tier without an eviction (dropped, or promoted up a tier) and never be told here
        self.promoted: OrderedDict[tuple, None] = OrderedDict()

    def queue(self, node: TreeNode) -> int:
        if self._frequent(node):
            return 2
        return 0 if self.workload.likely_dead(node) else 1

    def _frequent(self, node: TreeNode) -> bool:
        """Reused, or re-inserted while remembered as evicted (that ghost hit adapts `p`)."""
        if node.hits > 0:
            return True
        sig = signature(node)
        if sig in self.promoted:
            return True
        for g in (0, 1):
            size = self.ghosts[g].pop(sig, None)
            if size is None:
                continue
            self.ghost_tokens[g] -= size
            other, mine = self.ghost_tokens[1 - g], max(self.ghost_tokens[g], 1)
            step = max(1.0, other / mine) * len(node.key)
            self.p = min(self.capacity, self.p + step) if g == 0 else max(0.0, self.p - step)
            self.promoted[sig] = None
            if len(self.promoted) > max(PROMOTED_MIN, self.capacity // SIGNATURE_TOKENS):
                self.promoted.popitem(last=False)
            return True
        return False

    def priority(self, node: TreeNode) -> object:
        self.workload.seen(node)
        return node.last_access

    def configure(self, capacity_tokens: int) -> None:
        """A tier of no tokens (an absent host or remote tier) runs no shadows."""
        self.capacity = capacity_tokens
        if self.dueling and capacity_tokens > 0:
            self.duel = PolicyDuel(capacity_tokens, **self.duel_options)

    @property
    def observes(self) -> bool:
        return self.duel is not None

    def observe(self, chunk_ids: list[int]) -> None:
        if self.duel is not None:
            self.duel.observe(chunk_ids)

    def pick(self, sizes: list[int], heads: list[object | None]) -> int:
        if self.duel is not None and not self.duel.adaptive:
            # LRU over the three queues; a likely-dead head counted older (the workload rule)
            # while LRU's shadow leads by WORKLOAD_LEAD: where the two run nearly even the duel
            # flips, and the rule's evictions then upset the ARC side's ghosts
            lru, arc = self.duel.score
            demoted = self.workload.demotion() if lru > WORKLOAD_LEAD * arc else 0.0
            return _oldest((0, 1, 2), sizes, heads, demoted)
        # the target as a share of the evictable tokens (module doc); taking p in tokens against
        # evictable tokens cost 2 points on the synthetic trace's chunk chains (docs/benchmarks.md)
        recent, evictable = sizes[0] + sizes[1], sum(sizes)
        if recent and (recent * self.capacity > self.p * evictable or not sizes[2]):
            # LRU across the two recent queues, likely-dead heads counted older
            return _oldest((0, 1), sizes, heads, self.workload.demotion())
        return 2

    def on_evict(self, node: TreeNode) -> None:
        self.workload.on_evict(node)
        sig = signature(node)
        g = 1 if node.hits > 0 or sig in self.promoted else 0
        self.promoted.pop(sig, None)
        ghosts = self.ghosts[g]
        if sig in ghosts:
            self.ghost_tokens[g] -= ghosts.pop(sig)
        ghosts[sig] = len(node.key)
        self.ghost_tokens[g] += len(node.key)
        while self.ghost_tokens[g] > max(self.ghost_factor * self.capacity, 1) and ghosts:
            self.ghost_tokens[g] -= ghosts.popitem(last=False)[1]
