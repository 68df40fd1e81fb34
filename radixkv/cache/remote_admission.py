"""Admission to the remote tier: write through only pages predicted to be read again.

Most inserted pages are never read again (56-75% of the tokens in the shared traces), and each
remote write costs the host CPU an encoding and the link its bytes. `RemoteAdmission` learns, per
class of node, the share of nodes written through that are read again (on any tier) and writes a
new node through when its class's share reaches `threshold` (or while the class has fewer than
`min_samples` outcomes: it explores first). One refused node in `explore_every` is written
anyway, so that a refused class keeps being measured. A node read again while on host is alive
whatever its class: it is written back when it leaves the host.

A written node's outcome: read again (its first read after insertion), or dead when it leaves
the tree unread or has waited longer than twice the class's 90th percentile of the gaps
(logical clock: the cache's matches and inserts) after which its readers came, 4,096 at least:
an outcome would otherwise stay unknown for as long as the remote tier keeps the node.

A node's class is fixed when it is inserted: whether its parent prefix had been read again (a
continuation of a reused context: a conversation's next turn, a shared system prompt's
follow-up) or is the root, and the log2 bucket of where it starts (early context is shared more
often than a long prompt's tail). `TierWrites` owns it (`cache.writes.admission`); the cache
reports a tracked node's first read (`on_read`) and its leaving the tree (`on_gone`).
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radixkv.cache.tree import TreeNode

_MAX_BUCKET = 12
_MIN_HORIZON = 4096  # clock ticks a written node's outcome waits at least
_MAX_GAPS = 1024  # read gaps kept per class (the latest)
UNTRACKED, PENDING, DONE = 0, 1, 2  # TreeNode.admit_fate: a written node's outcome


class _Class:
    __slots__ = ("read", "known", "gaps", "pending")

    def __init__(self) -> None:
        self.read = self.known = 0
        self.gaps: list[int] = []  # sorted
        self.pending: deque[tuple[int, TreeNode]] = deque()  # (written at, node), oldest first

    def horizon(self, floor: int) -> int:
        if len(self.gaps) < 8:
            return 4 * floor
        return max(floor, 2 * self.gaps[int(0.9 * (len(self.gaps) - 1))])


class RemoteAdmission:
    def __init__(
        self, page_size: int, threshold: float, min_samples: int = 32, explore_every: int = 8
    ) -> None:
        self.page_size = page_size
        self.threshold, self.min_samples = threshold, min_samples
        self.explore_every = explore_every
        self.min_horizon = _MIN_HORIZON
        self.classes: dict[tuple[int, int], _Class] = {}
        self.admitted = self.refused = self.explored = 0
        self._declined = 0

    def classify(self, node: TreeNode) -> tuple[int, int]:
        """(0 root child / 1 parent never read again / 2 parent read again, start bucket)."""
        parent = node.parent
        reused = 0 if parent is None or parent.parent is None else (2 if parent.hits else 1)
        start = (node.depth - len(node.key)) // self.page_size
        return reused, min(_MAX_BUCKET, start.bit_length())

    def note_insert(self, node: TreeNode) -> None:
        node.admit_class = self.classify(node)

    def _class(self, node: TreeNode) -> _Class:
        key = node.admit_class if node.admit_class is not None else self.classify(node)
        c = self.classes.get(key)
        if c is None:
            c = self.classes[key] = _Class()
        return c

    def admit_new(self, node: TreeNode, clock: int) -> bool:
        """Whether a node just inserted is written through (its outcome is then tracked)."""
        c = self._class(node)
        ok = self._likely(c, clock)
        if not ok:
            self._declined += 1
            if self._declined % self.explore_every == 0:
                ok = True
                self.explored += 1
        if ok:
            self.admitted += 1
            node.admit_fate, node.admit_since = PENDING, clock
            c.pending.append((clock, node))
        else:
            self.refused += 1
        return ok

    def admit_leaving(self, node: TreeNode, clock: int) -> bool:
        """Whether a node leaving the host (not written yet) is written back."""
        return node.hits > 0 or self._likely(self._class(node), clock)

    def _likely(self, c: _Class, clock: int) -> bool:
        horizon = c.horizon(self.min_horizon)
        while c.pending and clock - c.pending[0][0] > horizon:  # waited too long: dead
            since, node = c.pending.popleft()
            if node.admit_fate == PENDING and node.admit_since == since:
                node.admit_fate = DONE
                c.known += 1
        return c.known < self.min_samples or c.read >= self.threshold * c.known

    def on_read(self, node: TreeNode, clock: int) -> None:
        """A tracked node is read again (its first read since it was written)."""
        c = self._class(node)
        node.admit_fate = DONE
        c.read += 1
        c.known += 1
        gap = clock - node.admit_since
        bisect.insort(c.gaps, gap)
        if len(c.gaps) > _MAX_GAPS:
            del c.gaps[len(c.gaps) // 2]  # thin the middle: the tail sets the horizon

    def on_gone(self, node: TreeNode) -> None:
        """A tracked node leaves the tree unread."""
        node.admit_fate = DONE
        self._class(node).known += 1

    def as_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "admitted": self.admitted,
            "refused": self.refused,
            "explored": self.explored,
            "classes": {
                f"{'root' if r == 0 else 'reused' if r == 2 else 'fresh'}-parent/start<2^{b}": {
                    "read_again": c.read,
                    "known": c.known,
                    "pending": sum(n.admit_fate == PENDING for _, n in c.pending),
                    "horizon": c.horizon(self.min_horizon),
                }
                for (r, b), c in sorted(self.classes.items())
            },
        }
